"""A model's shape from its size: the one rule a sweep uses to turn N into depth, width and heads.

N counts all parameters (Chinchilla's convention, the default of a sweep) or those outside the
embedding matrix (Kaplan et al. 2020's). At a 4,096-token vocabulary the embedding is 4,096 x
width, most of a small model, and its product with the head is most of a small model's compute:
counted in, a sweep's equal-compute runs take about equal time on a CPU.

The rule, stated once:
- the aspect ratio is fixed, width = ASPECT x depth (cpu-tiny's 192 / 4 = 48): the depth is the
  one whose width at this size comes nearest that (with a SwiGLU inner width of 8/3 the width);
- the width for that depth is the one nearest N, in steps of 16 below 256 and of 64 above;
- the SwiGLU inner width then fine-tunes the count (steps of 16, between 2 and 4 times the width;
  cpu-tiny's 512 at 192 is the rule's own);
- heads are 64 wide where the width allows, else 32 or 16 (8-wide heads, which steps of 8
  allowed, ran at under half the tokens/s of 64-wide ones on a CPU); no grouped-query attention.
Kaplan et al. found the loss flat over a wide band of aspect ratios, so the rule need not be
clever, only the same for every run.
"""

from __future__ import annotations

import math

import torch

from llmos.config import ModelConfig
from llmos.model import Transformer

ASPECT = 48  # width per layer
HEAD_WIDTHS = (64, 32, 16)
COUNTINGS = ("total", "nonembedding")


def heads_for(dim: int) -> int:
    return dim // next((h for h in HEAD_WIDTHS if dim % h == 0), dim)  # else one head


def model_for(dim: int, n_layers: int, ffn_dim: int, base: ModelConfig) -> ModelConfig:
    """`base` (vocabulary, context, rotary settings) with this width, depth and SwiGLU width."""
    heads = heads_for(dim)
    return ModelConfig(**{**base.__dict__, "dim": dim, "n_layers": n_layers, "n_heads": heads,
                          "n_kv_heads": heads, "ffn_dim": ffn_dim, "head_size": 0})


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) parameters of a model of this config, counted without allocating
    its weights."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return model.num_params(), model.num_params(embedding=False)


def nonembed_params(dim: int, n_layers: int, ffn_dim: int) -> int:
    """What `count_params` says without embeddings for `model_for(dim, n_layers, ffn_dim, ...)`,
    without building anything (the search below tries many shapes; tests hold them equal)."""
    return n_layers * (4 * dim * dim + 3 * dim * ffn_dim + 2 * dim) + dim


def _embedding(dim: int, base: ModelConfig, counting: str) -> int:
    if counting == "nonembedding":
        return 0
    return base.vocab_size * dim * (1 if base.tie_embeddings else 2)


def _round(x: float, step: int) -> int:
    return max(step, step * round(x / step))


def _ffn(dim: int) -> int:
    return _round(8 * dim / 3, 16)


def _width_at(n: float, depth: int, base: ModelConfig, counting: str) -> float:
    """The (real-valued) width at which `depth` layers hold n parameters."""
    lo, hi = 1.0, 1e6
    for _ in range(60):  # the count grows with the width: bisect
        mid = (lo * hi) ** 0.5
        count = nonembed_params(mid, depth, 8 * mid / 3) + _embedding(mid, base, counting)
        lo, hi = (mid, hi) if count < n else (lo, mid)
    return lo


def shape_for(n_params: float, base: ModelConfig, counting: str = "total") -> ModelConfig:
    """The model config the rule gives for `n_params` parameters counted as `counting` says."""
    if counting not in COUNTINGS:
        raise ValueError(f"counting {counting!r}: use one of {', '.join(COUNTINGS)}")
    if not (math.isfinite(n_params) and n_params > 0):
        raise ValueError(f"a model size must be a positive number, not {n_params!r}")
    depth = min(range(1, 129), key=lambda L: abs(math.log(
        _width_at(n_params, L, base, counting) / (ASPECT * L))))
    guess = _width_at(n_params, depth, base, counting)
    if guess < 16:
        raise ValueError(f"{n_params:,.0f} parameters is too few for any shape here (the "
                         "embedding of a 16-wide model holds more)")
    step = 16 if guess < 256 else 64
    centre = _round(guess, step)

    def count(dim, ffn):
        return nonembed_params(dim, depth, ffn) + _embedding(dim, base, counting)

    dim = min(range(max(step, centre - 2 * step), centre + 3 * step, step),
              key=lambda w: abs(math.log(count(w, _ffn(w)) / n_params)))
    # What the layers still lack (or hold too much of) goes into the SwiGLU width.
    per_layer = (n_params - dim - _embedding(dim, base, counting)) / depth - 4 * dim * dim \
        - 2 * dim
    ffn = min(max(_round(per_layer / (3 * dim), 16), _round(2 * dim, 16)), _round(4 * dim, 16))
    return model_for(dim, depth, ffn, base)
