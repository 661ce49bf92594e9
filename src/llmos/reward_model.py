"""The reward model: a transformer body with a scalar head, read at the last token of a rendered
conversation. Trained by the reward stage (train/reward.py); read by everything that judges
answers: the arena's and the versus comparison's judges, RL with a reward model, best-of-N.

    model, tok = load_reward_model("runs/cpu-tiny/reward")
    score(model, tok, [[{"role": "user", ...}, {"role": "assistant", ...}], ...])  # -> floats

The checkpoint is Hugging Face's `LlamaForSequenceClassification` layout (`score.weight`,
`num_labels` 1, `pad_token_id`), so `transformers` loads it and gives the same scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizers_
from llmos.model import Transformer

# ---- the model ---------------------------------------------------------------------------------


class RewardModel(nn.Module):
    """A transformer body and a scalar head (no bias, as Hugging Face's `score`)."""

    def __init__(self, body: Transformer):
        super().__init__()
        self.body = body
        self.body.lm_head = None  # not used; keeps its weights out of the optimizer
        self.score = nn.Linear(body.cfg.dim, 1, bias=False)
        nn.init.zeros_(self.score.weight)  # every answer starts at reward 0 (loss log 2)

    @property
    def cfg(self):
        return self.body.cfg

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token as `Transformer.flops_per_token` counts them, without the
        vocabulary-sized head (a reward model reads one scalar)."""
        matmul = sum(p.numel() for n, p in self.named_parameters()
                     if p.dim() == 2 and not n.startswith("body.embed"))
        return 6 * matmul + 12 * self.cfg.n_layers * self.cfg.dim * seq_len

    def forward(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """idx: [B, T] right-padded ids; last: [B] index of each row's last real token.
        Returns the rewards, [B], in fp32."""
        return self.outputs(idx, last).rewards

    def outputs(self, idx: torch.Tensor, last: torch.Tensor, lm_mask: torch.Tensor | None = None,
                positions: bool = False) -> RewardOutputs:
        """What training needs, from one body pass: the rewards as `forward` gives them; given
        lm_mask [R, T] for the first R rows (1 at the tokens to predict), the mean next-token
        loss there, the language-model head being the tied input embedding the body was
        finetuned with; with `positions`, the head read at every position, [B, T]."""
        h_all = hidden_states(self.body, idx)
        rows = torch.arange(idx.shape[0], device=idx.device)
        # The head runs in fp32 even under autocast: rewards reach +-8, where bf16's step is
        # 0.03-0.06, so bf16 rewards made near pairs exact ties (45 of 2,207 held out).
        with torch.autocast(idx.device.type, enabled=False):
            if positions:
                every = self.score(h_all.float()).squeeze(-1)
                rewards = every[rows, last]
            else:
                every, rewards = None, self.score(h_all[rows, last].float()).squeeze(-1)
        lm = None
        if lm_mask is not None:
            R = lm_mask.shape[0]  # only these rows pay for the vocabulary-sized product
            logits = F.linear(h_all[:R, :-1], self.body.embed.weight).float()
            nll = F.cross_entropy(logits.transpose(1, 2), idx[:R, 1:], reduction="none")
            mask = lm_mask[:, 1:].float()
            lm = (nll * mask).sum() / mask.sum().clamp(min=1)
        return RewardOutputs(rewards, lm, every)


class RewardOutputs(NamedTuple):
    rewards: torch.Tensor  # [B], at each row's last token
    lm: torch.Tensor | None  # mean next-token loss on the masked tokens
    every: torch.Tensor | None  # [B, T], the head at every position


def hidden_states(body: Transformer, idx: torch.Tensor) -> torch.Tensor:
    """The final normed hidden states [B, T, dim] of a causal forward (what the LM head reads).
    Right padding needs no mask: causal attention keeps pads from reaching real tokens."""
    T = idx.shape[1]
    if T > body.cfg.max_seq_len:
        raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {body.cfg.max_seq_len}")
    cos, sin = body.rope_cos[:T][None, None], body.rope_sin[:T][None, None]
    x = body.embed(idx)
    for layer in body.layers:
        x = layer(x, cos, sin)
    return body.norm(x)


def encode(tok, messages: list[dict], max_len: int) -> list[int]:
    """A conversation's tokens as the reward model reads them; a conversation longer than the
    context keeps its end (the answer being judged), losing the start."""
    ids = chat_format.render(tok, messages).ids
    return ids[-max_len:]


def collate(rows: list[list[int]], pad: int, device: str = "cpu"
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row -> (ids [B, T], index of each row's last token [B])."""
    T = max(len(r) for r in rows)
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
    return x.to(device), last.to(device)


# Two rewards closer than this are a tie: the same answer scored in batches of different
# padding differs by ~1e-6 of float rounding, which must not decide a comparison.
TIE_MARGIN = 1e-4


@torch.no_grad()
def score(model: RewardModel, tok, conversations: list[list[dict]],
          batch_size: int = 16) -> list[float]:
    """The reward of each conversation (a list of messages ending in the answer judged)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = [encode(tok, m, model.cfg.max_seq_len) for m in conversations]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # less padding per batch
    out = [0.0] * len(rows)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        x, last = collate([rows[i] for i in chunk], tokenizers_.pad_id(tok), str(device))
        for i, r in zip(chunk, model(x, last).tolist()):
            out[i] = r
    model.train(was_training)
    return out


# ---- saving and loading ------------------------------------------------------------------------


def hf_tensors(model: RewardModel) -> dict[str, torch.Tensor]:
    """LlamaForSequenceClassification's tensors: the Llama body (model.*) and score.weight."""
    body = model.body
    body.lm_head = nn.Linear(1, 1, bias=False)  # to_hf_state_dict reads one when untied
    try:
        sd = checkpoint.to_hf_state_dict(body)
    finally:
        body.lm_head = None
    sd.pop("lm_head.weight", None)
    sd["score.weight"] = model.score.weight.detach().float().contiguous().cpu()
    return sd


def hf_config(model: RewardModel, tok) -> dict:
    d = checkpoint.hf_config(model.cfg, tokenizers_.eot_id(tok))
    d.update(architectures=["LlamaForSequenceClassification"], num_labels=1,
             id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
             pad_token_id=tokenizers_.pad_id(tok))
    return d


def save_reward_model(out: str | Path, model: RewardModel, tok_dir: str | Path, info: dict,
                      trainer_state: dict | None = None) -> Path:
    """An atomic checkpoint directory that `LlamaForSequenceClassification` loads as is."""
    tok = tokenizers_.load(Path(tok_dir) / "tokenizer.json")
    return checkpoint.save(out, model.body, tok_dir, {**info, "stage": "reward"}, trainer_state,
                           tensors=hf_tensors(model), config=hf_config(model, tok))


def load_reward_model(path: str | Path, device: str = "cpu") -> tuple[RewardModel, object]:
    """(reward model in eval mode, tokenizer) from a directory `llmos reward` wrote."""
    d = Path(path)
    checkpoint.recover(d)
    config_file = d / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{d} is not a checkpoint directory (no config.json)")
    config = json.loads(config_file.read_text())
    sd = load_file(str(d / "model.safetensors"))
    if "score.weight" not in sd:
        raise ValueError(f"{d} is not a reward model (no score.weight; architectures "
                         f"{config.get('architectures')}); train one with `llmos reward`")
    if sd["score.weight"].shape[0] != 1:
        raise ValueError(f"{d}: score.weight has {sd['score.weight'].shape[0]} outputs; a reward "
                         "model has one")
    cfg = checkpoint.model_config_from_hf(config)
    body = Transformer(cfg)
    sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])  # unused, but expected
    ours = checkpoint.from_hf_state_dict(sd, cfg)
    model = RewardModel(body)
    ours.pop("lm_head.weight")
    body.load_state_dict(ours, strict=False)
    missing = set(dict(body.named_parameters())) - set(ours)
    if missing:
        raise ValueError(f"{d}: missing tensors {sorted(missing)}")
    model.score.weight.data.copy_(sd["score.weight"])
    return model.to(device).eval(), tokenizers_.load(d)
