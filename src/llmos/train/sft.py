"""Stage 2: supervised finetuning. A checkpoint and conversations in, an assistant out.

    llmos sft --model runs/cpu-tiny/base                       full finetuning
    llmos sft --model DIR --set sft.lora_rank=16                LoRA (adapters saved too)

Conversations are rendered in the chat format (`llmos.chat_format`), packed several to a row, and
trained only on assistant tokens. Packed conversations never see each other: attention is
block-diagonal and rotary positions restart at each conversation.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.data.conversations import split_sources
from llmos.data.records import Conversation
from llmos.data.shards import TokenLoader
from llmos.evals import assistant_tasks
from llmos.runtime import setup, teardown
from llmos.train import lora, text_mix
from llmos.train.loop import Stage, train

# ---- data: conversations -> packed rows -------------------------------------------------------


@dataclass
class Packed:
    """Rows of packed conversations: inputs, targets (-100 = not trained), rotary positions,
    and the segment (conversation) each column belongs to (-1 = padding)."""

    x: torch.Tensor
    y: torch.Tensor
    pos: torch.Tensor
    seg: torch.Tensor
    conversations: int
    too_long: int

    @property
    def trained_tokens(self) -> int:
        return int((self.y != -100).sum())


def pack(tok, conversations: list[Conversation], seq_len: int, seed: int) -> Packed:
    """Render, then fill rows of seq_len greedily in a shuffled order. A conversation longer
    than a row is left out and counted, never cut."""
    pad = tokenizers_.pad_id(tok)
    examples, too_long = [], 0
    for c in conversations:
        r = chat_format.render(tok, c.messages)
        if len(r.ids) - 1 > seq_len:
            too_long += 1
            continue
        examples.append(([*r.ids[:-1]], [t if m else -100 for t, m in zip(r.ids[1:], r.mask[1:])]))
    random.Random(seed).shuffle(examples)
    rows: list[list[tuple[list[int], list[int]]]] = []
    used = seq_len  # forces a new row for the first example
    for ex in examples:
        if used + len(ex[0]) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += len(ex[0])
    n = len(rows)
    x = torch.full((n, seq_len), pad, dtype=torch.long)
    y = torch.full((n, seq_len), -100, dtype=torch.long)
    pos = torch.zeros((n, seq_len), dtype=torch.long)
    seg = torch.full((n, seq_len), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        col = 0
        for j, (ids, targets) in enumerate(row):
            L = len(ids)
            x[i, col:col + L] = torch.tensor(ids)
            y[i, col:col + L] = torch.tensor(targets)
            pos[i, col:col + L] = torch.arange(L)
            seg[i, col:col + L] = j
            col += L
    return Packed(x, y, pos, seg, len(examples), too_long)


def attention_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, T] segments -> [B, 1, T, T]: causal within a conversation; padding sees itself."""
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    eye = torch.eye(T, dtype=torch.bool, device=seg.device)
    return ((same & causal) | eye)[:, None]


def packed_loss(model, batch, reduction: str = "mean") -> torch.Tensor:
    x, y, pos, seg = batch
    return model(x, y, positions=pos, mask=attention_mask(seg), loss_reduction=reduction)


class RowLoader:
    """Packed rows in a fresh shuffled order each epoch; its position is saved for resume.
    With several processes each global batch is cut into one slice per rank."""

    def __init__(self, packed: Packed, batch_size: int, seed: int, device: str,
                 rank: int = 0, world_size: int = 1):
        if len(packed.x) == 0:
            raise ValueError("no conversation fits sft.train.seq_len; raise it or use shorter data")
        self.p, self.B, self.seed, self.device = packed, batch_size, seed, device
        self.rank, self.world = rank, world_size
        self.epoch, self.index = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.p.x), generator=g)

    def next_batch(self):
        rows = []
        while len(rows) < self.B * self.world:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            rows.append(int(self._order[self.index]))
            self.index += 1
        idx = torch.tensor(rows[self.rank * self.B:(self.rank + 1) * self.B])
        p = self.p
        return tuple(t[idx].to(self.device) for t in (p.x, p.y, p.pos, p.seg))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffle()


def heldout_loss(model, packed: Packed, batch_size: int, max_tokens: int, device: str) -> dict:
    """Mean loss per trained token over the first held-out rows (up to max_tokens columns)."""
    total, count = 0.0, 0
    rows = max(1, min(len(packed.x), max_tokens // packed.x.shape[1]))
    for s in range(0, rows, batch_size):
        batch = tuple(t[s:min(s + batch_size, rows)].to(device)
                      for t in (packed.x, packed.y, packed.pos, packed.seg))
        n = int((batch[1] != -100).sum())
        if n:
            total += float(packed_loss(model, batch, "sum"))
            count += n
    return {"val_loss": total / max(count, 1)}


def with_text(loader: RowLoader, s, parent: Path, seq_len: int, rt, who: str):
    """(loader, loss, text_dir): `loader`'s conversation rows with `s.text_rows` rows of the
    parent's pretraining text added to each micro-batch (train/text_mix.py) when `s` (an
    SFTConfig) asks for them. text_dir is the shards' folder when they suit the parent (SFT
    then also reports their validation bits per byte), else None. A parent without shards
    beside it (an imported model) is finetuned on conversations alone, with a note; shards
    named in s.text_data that do not suit it are an error."""
    if s.text_rows < 0:
        raise ValueError(f"sft.text_rows must be 0 or more, not {s.text_rows}")
    text_dir = text_mix.text_data_dir(s.text_data, parent)
    problem = text_mix.text_data_problem(text_dir, parent)
    if s.text_rows and problem and s.text_data:
        raise ValueError(f"sft.text_data: {problem}; name the data folder of the parent's "
                         "pretraining, or set sft.text_rows=0")
    if s.text_rows and problem:
        print(f"{who}: {problem}; training on conversations alone (sft.text_data names a data "
              "folder to mix in)")
    if not s.text_rows or problem:
        return loader, packed_loss, None if problem else text_dir
    mixed = text_mix.MixedLoader(loader, TokenLoader(text_dir, "train", s.text_rows, seq_len,
                                                     rt.rank, rt.world_size))
    print(f"{who}: {s.text_rows} rows of pretraining text from {text_dir} in every micro-batch "
          f"(weight {s.text_coef})")
    return mixed, functools.partial(text_mix.mixed_loss, text_coef=s.text_coef,
                                    mask_fn=attention_mask), text_dir


# ---- the stage --------------------------------------------------------------------------------


def run(cfg: RunConfig, parent: str | Path, out_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False) -> Path:
    s, t = cfg.sft, cfg.sft.train
    parent = Path(parent)
    out = Path(out_dir) if out_dir else cfg.run_dir / ("sft-lora" if s.lora_rank else "sft")
    checkpoint.check_out(out, resume, overwrite)
    rt = setup()
    try:
        tok = tokenizers_.load(parent)
        # A LoRA run resumes from its parent plus the adapters it saved (its merged weights
        # would be adapted twice).
        model = checkpoint.load_model(out if resume and not s.lora_rank else parent)
        if t.seq_len > model.cfg.max_seq_len:
            raise ValueError(f"sft.train.seq_len {t.seq_len} exceeds the model's context "
                             f"{model.cfg.max_seq_len}")
        train_convs, held_convs, skipped = split_sources(s.sources, s.val_fraction)
        if skipped:
            print(f"sft: skipped {skipped}")
        packed = pack(tok, train_convs, t.seq_len, t.seed)
        held = pack(tok, held_convs, t.seq_len, t.seed)
        print(f"sft: {packed.conversations:,} train conversations in {len(packed.x):,} rows "
              f"({packed.trained_tokens:,} trained tokens), {held.conversations:,} held out"
              + (f"; {packed.too_long + held.too_long} longer than {t.seq_len} tokens left out"
                 if packed.too_long + held.too_long else ""))

        if s.lora_rank:
            torch.manual_seed(t.seed)  # the adapters' random start: the same run, the same A
            n = lora.add_adapters(model, s.lora_rank, s.lora_alpha, s.lora_targets)
            if resume:
                resume_adapters(model, out, {"rank": s.lora_rank, "alpha": s.lora_alpha,
                                             "targets": s.lora_targets})
            print(f"sft: LoRA rank {s.lora_rank} on {', '.join(s.lora_targets)}: "
                  f"{n:,} trainable parameters of {model.num_params():,}")
        model = model.to(rt.device)
        loader, loss, text_dir = with_text(
            RowLoader(packed, t.batch_size, t.seed, rt.device, rt.rank, rt.world_size),
            s, parent, t.seq_len, rt, "sft")
        measures_text = text_dir is not None
        tok_dir = cfg.run_dir / ".sft-tokenizer"
        if tok.chat_template is not None:  # an imported model keeps its tokenizer and template
            tok_dir = parent
            cfg.run_dir.mkdir(parents=True, exist_ok=True)  # metrics.jsonl goes there
        elif rt.is_main:
            tokenizers_.save(tok, tok_dir, model.cfg.max_seq_len)  # this version's template

        def evaluate(m) -> dict:
            """Held-out conversations' loss, and the base model's validation text measured as
            pretraining measures it (where its shards are at hand): what finetuning kept."""
            out = heldout_loss(m, held, t.batch_size, t.eval_tokens, rt.device) \
                if held.conversations else {}
            if measures_text:
                out |= text_mix.text_val_metrics(m, text_dir, tok, t.batch_size,
                                                 cfg.train.seq_len, cfg.train.eval_tokens,
                                                 rt.device)
            return out

        stage = Stage(
            name="sft-lora" if s.lora_rank else "sft",
            next_batch=loader.next_batch,
            loss=loss,
            tokens=lambda b: b[0].numel(),
            data_state=loader.state_dict,
            load_data_state=loader.load_state_dict,
            evaluate=evaluate if held.conversations or measures_text else None,
            flops_per_token=model.flops_per_token(t.seq_len),
        )
        info_base = {"stage": "sft", "parent": str(parent), "config": cfg.to_dict(),
                     "parent_info": checkpoint.parent_identity(parent),
                     "chat_template": "model" if tok.chat_template is not None else "chatml",
                     "data": {"sources": s.sources, "train_conversations": packed.conversations,
                              "heldout_conversations": held.conversations,
                              "too_long": packed.too_long + held.too_long, "skipped": skipped}}
        if s.lora_rank:
            info_base["lora"] = {"rank": s.lora_rank, "alpha": s.lora_alpha,
                                 "targets": s.lora_targets, "adapter": "adapter/"}

        def save(m, info, state):
            if s.lora_rank:  # the adapters themselves, exactly, for --resume
                state = {**state, "lora": lora.adapter_state(m)}
            checkpoint.save(out, m, tok_dir, {**info_base, **info}, state)
            if s.lora_rank:
                lora.save_adapter(m, out / "adapter", s.lora_rank, s.lora_alpha,
                                  s.lora_targets, str(parent))

        result = train(model, t, stage, rt, ckpt_dir=out, save_checkpoint=save,
                       run_dir=cfg.run_dir, resume=resume)
        if not result.stopped_early and rt.is_main:
            print(f"sft: done at step {result.step}: held-out loss "
                  f"{result.metrics.get('val_loss', float('nan')):.4f} -> {out}")
            if s.eval_items and held_convs:
                evaluate_tasks(model, tok, held_convs, s.eval_items, out)
        return out
    finally:
        teardown()


def resume_adapters(model, ckpt_dir: Path, wanted: dict) -> None:
    """Put the adapters a stopped LoRA run kept in its trainer state back on `model` (already
    adapted with the `wanted` rank, alpha and targets), refusing a run made with others."""
    saved = checkpoint.read_info(ckpt_dir).get("lora")
    if saved is None:
        raise ValueError(f"--resume: {ckpt_dir} is not a LoRA run")
    differs = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if differs:
        raise ValueError(f"--resume: {ckpt_dir} was trained with other LoRA settings: "
                         + ", ".join(f"{k} {a} (now {b})" for k, (a, b) in differs.items()))
    weights = checkpoint.load_trainer_state(ckpt_dir).get("lora")
    if weights is None or set(weights) != set(lora.adapter_state(model)):
        raise ValueError(f"--resume: {ckpt_dir} holds no adapters for this model")
    model.load_state_dict(weights, strict=False)


def evaluate_tasks(model, tok, heldout: list[Conversation], limit: int, out: Path) -> dict:
    """Held-out task accuracy, printed, added to llmos.json's metrics, and written with every
    prompt and answer to eval_assistant.json so each number can be audited."""
    print(f"sft: answering up to {limit} held-out questions (greedy, tools in the loop)...")
    model.eval()
    result = assistant_tasks.evaluate(model, tok, heldout, limit)
    summary = result["summary"]
    print("sft: held-out " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    checkpoint.write_json(out / "eval_assistant.json", result)
    info = checkpoint.read_info(out)
    info.setdefault("metrics", {}).update({f"heldout_{k}": v for k, v in summary.items()})
    checkpoint.write_json(out / "llmos.json", info)
    return summary
