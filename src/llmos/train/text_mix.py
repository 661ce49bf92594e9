"""Pretraining text mixed into finetuning, so the assistant keeps what the base model knew.

Finetuning only on conversations moves every weight toward the chat format: at cpu-tiny the
base model's validation bits per byte went from 1.22 to 3.15 after SFT (worse than xz on the
same text). InstructGPT's "PPO-ptx" (Ouyang et al. 2022) keeps a pretraining
language-model term in the objective for the same reason. Here each micro-batch gets
`text_rows` rows of the parent's own pretraining shards, and the loss is

    loss = mean over assistant tokens + text_coef * mean over text tokens

Two means rather than one over all tokens: a text row trains on every token and a conversation
only on its answers, so a single mean would let a few text rows outweigh the conversations.

The same shards give the validation bits per byte that SFT reports at each evaluation, the
figure pretraining reports (`text_val_metrics`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmos import tokenizer as tokenizers_
from llmos.data.shards import TokenLoader, iter_eval_batches, read_manifest
from llmos.evals import bpb


def text_data_dir(spec: str, parent: Path) -> Path:
    """The token shards to read: `spec`, or with no spec the folder the parent was pretrained
    from (RUN/data next to RUN/base; a later stage's parent finds the same folder)."""
    return Path(spec) if spec else Path(parent).parent / "data"


def text_data_problem(data_dir: Path, parent: Path) -> str | None:
    """Why the shards in `data_dir` cannot be mixed into (or measure) a finetuning of `parent`,
    or None when they can: ids from another vocabulary would train nonsense silently."""
    if not (data_dir / "manifest.json").exists():
        return f"no pretraining token shards in {data_dir} (no manifest.json)"
    theirs = read_manifest(data_dir).get("tokenizer", {}).get("sha256")
    ours = tokenizers_.file_hash(Path(parent) / "tokenizer.json")
    if theirs != ours:
        return (f"the shards in {data_dir} were made with another tokenizer ({theirs}) than "
                f"{parent}'s ({ours})")
    return None


class MixedLoader:
    """Conversation rows (a `RowLoader`) plus `text_rows` windows of pretraining text. A batch
    is (x, y, positions, segments, is_text): text rows are one causal segment with positions
    from 0, every token trained."""

    def __init__(self, rows, text: TokenLoader):
        self.rows, self.text = rows, text

    def next_batch(self):
        x, y, pos, seg = self.rows.next_batch()
        tx, ty = self.text.next_batch()
        n, T = tx.shape
        device = x.device
        tx, ty = tx.to(device), ty.to(device)
        is_text = torch.cat([torch.zeros(len(x), dtype=torch.bool),
                             torch.ones(n, dtype=torch.bool)]).to(device)
        return (torch.cat([x, tx]), torch.cat([y, ty]),
                torch.cat([pos, torch.arange(T, device=device).expand(n, T)]),
                torch.cat([seg, torch.zeros(n, T, dtype=seg.dtype, device=device)]), is_text)

    def state_dict(self) -> dict:
        return {**self.rows.state_dict(), "text": self.text.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict(state)
        self.text.load_state_dict(state["text"])


def mixed_loss(model, batch, text_coef: float, mask_fn) -> torch.Tensor:
    """Mean loss over the conversations' trained tokens plus text_coef times the mean over the
    text rows' tokens."""
    x, y, pos, seg, is_text = batch
    losses = model(x, y, positions=pos, mask=mask_fn(seg), loss_reduction="none").view(y.shape)
    trained = (y != -100).float()
    conv = losses[~is_text].sum() / trained[~is_text].sum().clamp(min=1)
    text = losses[is_text].sum() / trained[is_text].sum().clamp(min=1)
    return conv + text_coef * text


def text_val_metrics(model, data_dir: Path, tok, batch_size: int, seq_len: int,
                     max_tokens: int, device: str) -> dict:
    """Validation bits per byte on the shards' val split, the figure pretraining reports."""
    token_bytes = torch.tensor(tokenizers_.token_byte_lengths(tok), device=device)
    batches = ((x.to(device), y.to(device))
               for x, y in iter_eval_batches(data_dir, "val", batch_size, seq_len, max_tokens))
    m = bpb.evaluate(model, batches, token_bytes)
    return {"val_bpb": m["val_bpb"], "val_text_loss": m["val_loss"]}
