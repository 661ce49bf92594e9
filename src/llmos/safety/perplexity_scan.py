"""The scan's second signal: documents a reference checkpoint finds far harder to predict than the
rest of the corpus.

Each document is cut into windows of the model's context; its score is the bits per byte of its
worst window, so a few hundred tokens of gibberish stand out even behind a long clean opening.
A document is an outlier when its score is more than `z_threshold` robust standard deviations
(1.4826 x the median absolute deviation) above the corpus median. Real corpora have honest
outliers too (tables, encoded data): docs/security.md has the false-alarm rate on the stdlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llmos import checkpoint
from llmos import tokenizer as tokenizers_


class Reference:
    def __init__(self, ckpt_dir: str | Path, z_threshold: float = 8.0, batch_size: int = 16):
        self.path = Path(ckpt_dir)
        if not (self.path / "tokenizer.json").exists():
            raise FileNotFoundError(f"{self.path} is not a checkpoint with a tokenizer "
                                    "(no tokenizer.json)")
        self.model = checkpoint.load_model(self.path).eval()
        self.tok = tokenizers_.load(self.path)
        self.token_bytes = torch.tensor(tokenizers_.token_byte_lengths(self.tok))
        self.z_threshold = z_threshold
        self.batch_size = batch_size

    def _windows(self, ids: list[int]) -> list[list[int]]:
        """Pieces of context length plus one (inputs and the next-token targets), overlapping by
        one token; a short tail is scored with the window before it."""
        n = self.model.cfg.max_seq_len
        if len(ids) <= n + 1:
            return [ids] if len(ids) >= 2 else []
        starts = list(range(0, len(ids) - 1, n))
        if len(ids) - starts[-1] < n // 2:
            starts[-1] = len(ids) - n - 1
        return [ids[s:s + n + 1] for s in starts]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Bits per byte of each document's worst window (0 for a document of one token)."""
        worst = np.zeros(len(texts))
        for doc, nats, nbytes in self._windows_scored(texts):
            if nbytes:
                worst[doc] = max(worst[doc], nats / math.log(2) / nbytes)
        return worst

    def bits_per_byte(self, texts: Sequence[str]) -> float:
        """Bits per byte over all the texts (every window's tokens after its first)."""
        nats = nbytes = 0.0
        for _, n, b in self._windows_scored(texts):
            nats, nbytes = nats + n, nbytes + b
        return nats / math.log(2) / max(1.0, nbytes)

    @torch.inference_mode()
    def _windows_scored(self, texts: Sequence[str]):
        """(document, nats, bytes) of every window of every document."""
        encoded = self.tok.encode_batch(list(texts), add_special_tokens=False)
        items = [(d, w) for d, e in enumerate(encoded) for w in self._windows(e.ids)]
        items.sort(key=lambda x: len(x[1]))  # batches of like lengths waste little padding
        for b in range(0, len(items), self.batch_size):
            batch = items[b:b + self.batch_size]
            width = max(len(w) for _, w in batch) - 1
            x = torch.zeros((len(batch), width), dtype=torch.long)
            y = torch.full((len(batch), width), -100, dtype=torch.long)
            for r, (_, w) in enumerate(batch):
                x[r, :len(w) - 1] = torch.tensor(w[:-1])
                y[r, :len(w) - 1] = torch.tensor(w[1:])
            nats = self.model(x, y, loss_reduction="none").float().view(len(batch), width)
            nbytes = self.token_bytes[y.clamp(min=0)] * (y >= 0)
            for r, (doc, _) in enumerate(batch):
                yield doc, nats[r][y[r] >= 0].sum().item(), nbytes[r].sum().item()


def outliers(scores: np.ndarray, z_threshold: float) -> dict:
    median = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - median))) or 1e-9
    cut = median + z_threshold * spread
    return {"median": round(median, 4), "robust_sd": round(spread, 4), "z_threshold": z_threshold,
            "threshold": round(cut, 4),
            "flagged": [i for i, s in enumerate(scores) if s > cut]}
