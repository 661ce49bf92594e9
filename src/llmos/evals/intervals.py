"""Intervals for the figures evaluations print: a share of n items moves a lot between runs
(±20 points on 22 items), so every accuracy goes out with its 95% interval."""

from __future__ import annotations

import math

Z95 = 1.959964


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (good at 0 and n, unlike mean ± 2 SE);
    (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact at the ends (no 1e-17)
    return lo, 1.0 if successes >= n else min(1.0, centre + half)


def cluster_bootstrap(groups: list[list[bool]], rounds: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of the share of True over all items, resampling whole
    groups: several samples of one prompt are not independent, so the prompts are what is
    drawn again. (0, 1) with no items."""
    import random

    groups = [g for g in groups if g]
    if not groups:
        return 0.0, 1.0
    rng = random.Random(seed)
    shares = []
    for _ in range(rounds):
        drawn = [groups[rng.randrange(len(groups))] for _ in groups]
        shares.append(sum(map(sum, drawn)) / sum(map(len, drawn)))
    shares.sort()
    tail = (1 - level) / 2
    return shares[int(tail * (rounds - 1))], shares[int((1 - tail) * (rounds - 1))]
