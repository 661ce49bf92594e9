"""Bits per byte: the tokenizer-independent measure of how well a model compresses text.

Loss is summed in nats over every predicted token that stands for text; special tokens (the
document separator) stand for no bytes and are left out of both sums, so the figure compares
directly with a compressor's output size over the same text."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


@torch.no_grad()
def evaluate(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             token_bytes: torch.Tensor) -> dict:
    nats = tokens = text_nats = text_bytes = 0.0
    for x, y in batches:
        losses = model(x, y, loss_reduction="none").float()
        nbytes = token_bytes[y.reshape(-1)]
        nats += losses.sum().item()
        tokens += losses.numel()
        is_text = nbytes > 0
        text_nats += losses[is_text].sum().item()
        text_bytes += nbytes.sum().item()
    if not tokens:
        raise ValueError("no validation tokens to evaluate")
    return {"val_loss": nats / tokens, "val_bpb": text_nats / math.log(2) / max(1.0, text_bytes)}
