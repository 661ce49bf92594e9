"""Scaling laws as pure functions over a table of runs: each run is its parameter count N, its
training tokens D and its final loss L (nats/token), and C = 6ND is its compute unless given.

Approach 3 of Hoffmann et al. 2022 ("Chinchilla"), as the Epoch AI replication (Besiroglu et al.
2024) redid it: fit

    L(N, D) = E + A / N^alpha + B / D^beta

by minimising the Huber loss (delta 1e-3) between log L and log of the prediction, written as
LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e, by L-BFGS from a grid
of starting points, keeping the best. Minimising L for a fixed C = 6ND then gives the
compute-optimal split, N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta))/G,
G = (alpha A / (beta B))^(1/(alpha+beta)).

Approach 2: runs of equal compute (an IsoFLOP profile) trace a valley in log N; a parabola
through each profile puts its bottom at N_opt(C), and a line through log N_opt against log C
gives the exponent a of N_opt ~ C^a (and D_opt ~ C^(1-a)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

HUBER_DELTA = 1e-3
# Hoffmann et al. 2022 (Table A3's approach 3) and the Epoch AI replication's refit of the same
# data (Besiroglu et al. 2024, eq. 4).
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
EPOCH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
# Starting points (alpha, beta, e, a, b): a coarser grid than Chinchilla's 4,500 points (each
# start is searched loosely, then the best few are polished), which found the same optimum on the
# synthetic tests.
START_GRID = ((0.25, 0.5, 1.0), (0.25, 0.5, 1.0), (-1.0, 0.0, 1.0), (0, 5, 10, 20), (0, 5, 10, 20))
POLISH = 3  # starts searched again to a tight tolerance (Epoch: a loose stop biased the fit)


class FitError(ValueError):
    """Runs that cannot support the fit asked for (too few, or of one size only)."""


@dataclass(frozen=True)
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        """Predicted loss for N parameters trained on D tokens (arrays or numbers)."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def optimum(self, compute: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising the loss at `compute` FLOPs, taken as 6ND."""
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        n = g * (compute / 6) ** (self.beta / s)
        return n, compute / (6 * n)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, fitted: dict) -> Law:
        """The law in a fit's approach-3 block (or any dict with its five constants)."""
        return cls(fitted["E"], fitted["A"], fitted["B"], fitted["alpha"], fitted["beta"])


# ---- approach 3 ------------------------------------------------------------------------------


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """The Huber loss of residuals and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
              delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of log-space residuals at theta = (a, b, e, alpha, beta), and its
    gradient."""
    a, b, e, alpha, beta = theta
    x = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = x.max(0)
    w = np.exp(x - top)
    total = w.sum(0)
    pred = top + np.log(total)
    w /= total  # d pred / d x_k
    value, slope = huber(pred - log_l, delta)
    grad = np.array([(slope * w[0]).sum(), (slope * w[1]).sum(), (slope * w[2]).sum(),
                     -(slope * w[0] * log_n).sum(), -(slope * w[1] * log_d).sum()])
    return float(value.sum()), grad


def _minimise(start, args, tight: bool = False) -> tuple[float, np.ndarray]:
    from scipy.optimize import minimize

    options = {"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12} if tight else {}
    r = minimize(objective, np.asarray(start, dtype=float), args=args, jac=True,
                 method="L-BFGS-B", options=options)
    return float(r.fun), r.x


def fit_law(n, d, loss, starts=None, delta: float = HUBER_DELTA) -> Law:
    """Approach 3 on runs with N parameters, D tokens and final loss `loss` (nats/token): the
    best of L-BFGS from every starting point (default START_GRID), the best few polished."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    if len(loss) < 5:
        raise FitError(f"approach 3 fits 5 constants and needs at least 5 runs, not {len(loss)}")
    if len(set(n)) < 2 or len(set(d)) < 2:
        raise FitError("approach 3 needs runs of at least two sizes and two token counts")
    if (n <= 0).any() or (d <= 0).any() or (loss <= 0).any():
        raise FitError("params, tokens and loss must all be positive")
    args = (np.log(n), np.log(d), np.log(loss), delta)
    if starts is None:
        starts = [(a, b, e, al, be) for al, be, e, a, b in itertools.product(*START_GRID)]
    loose = sorted((_minimise(s, args) for s in starts), key=lambda r: r[0])
    best = min((_minimise(x, args, tight=True) for _, x in loose[:POLISH]), key=lambda r: r[0])
    a, b, e, alpha, beta = best[1]
    if max(a, b, e) > 700 or not np.isfinite(best[1]).all():  # exp() would overflow
        raise FitError("approach 3 diverged on these runs (a constant ran off to infinity): "
                       "they do not pin down the law; add runs of other sizes or budgets")
    return Law(math.exp(e), math.exp(a), math.exp(b), float(alpha), float(beta))


def theta_of(law: Law) -> tuple[float, ...]:
    return (math.log(law.A), math.log(law.B), math.log(law.E), law.alpha, law.beta)


def bootstrap_laws(n, d, loss, law: Law, rounds: int, seed: int = 0) -> list[Law]:
    """The fit on `rounds` resamples of the runs (with replacement), each started from the full
    data's fit; resamples that cannot be fitted are left out."""
    rng = np.random.default_rng(seed)
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    out = []
    for _ in range(rounds):
        pick = rng.integers(0, len(loss), len(loss))
        try:
            out.append(fit_law(n[pick], d[pick], loss[pick], starts=[theta_of(law)]))
        except FitError:
            continue
    return out


def interval(values, level: float = 0.95) -> list[float]:
    """The central `level` percentile interval."""
    lo, hi = np.percentile(np.asarray(values, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


# ---- approach 2 ------------------------------------------------------------------------------


def profile_compute(runs: list[dict]) -> np.ndarray:
    """The compute that puts runs in one IsoFLOP profile, however parameters are counted: the
    budget a sweep planned them for (whole steps and the shape rule's rounding move the spent
    compute a few percent off it), else their `flops`, else 6ND."""
    return np.array([r.get("budget", r.get("flops", 6 * r["params"] * r["tokens"]))
                     for r in runs], dtype=float)


def isoflop_groups(n, d, compute=None, rel_tol: float = 0.02) -> list[list[int]]:
    """Indices of runs grouped by equal compute (within rel_tol), in increasing compute."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    c = 6 * n * d if compute is None else np.asarray(compute, dtype=float)
    groups: list[list[int]] = []
    for i in np.argsort(c):
        if groups and abs(c[i] / c[groups[-1][0]] - 1) <= rel_tol:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return groups


def isoflop_minimum(n, loss) -> float:
    """N at the bottom of a parabola in log N through one IsoFLOP profile's runs."""
    x, y = np.log(np.asarray(n, dtype=float)), np.asarray(loss, dtype=float)
    c2, c1, _ = np.polyfit(x, y, 2)
    if c2 <= 0:
        raise FitError("an IsoFLOP profile has no valley (its parabola opens downwards): its "
                       "runs do not bracket the optimum")
    return float(np.exp(-c1 / (2 * c2)))


def fit_isoflops(n, d, loss, compute=None) -> dict:
    """Approach 2: N_opt per IsoFLOP profile (of 3 runs or more, whose parabola bottoms out
    among its sizes: the others are listed as `unbracketed`), then N_opt ~ G C^a and D_opt ~ C^b
    with b = 1 - a when C = 6ND."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    c = 6 * n * d if compute is None else np.asarray(compute, dtype=float)
    profiles, unbracketed = [], []
    for g in isoflop_groups(n, d, c):
        if len(g) < 3:
            continue
        compute = float(np.mean(c[g]))
        try:
            n_opt = isoflop_minimum(n[g], loss[g])
        except FitError:
            n_opt = None
        # A valley outside the sizes tried is a guess, not a measurement: leave it out.
        if n_opt is None or not n[g].min() <= n_opt <= n[g].max():
            unbracketed.append(compute)
            continue
        profiles.append({"compute": compute, "n_opt": n_opt, "runs": len(g)})
    if len(profiles) < 2:
        raise FitError("approach 2 needs at least two IsoFLOP profiles of three runs or more "
                       f"whose valley lies among their sizes (found {len(profiles)}"
                       + (f"; no valley inside the profiles at C = "
                          f"{', '.join(f'{x:.3g}' for x in unbracketed)}" if unbracketed else "")
                       + ")")
    for p in profiles:
        p["d_opt"] = p["compute"] / (6 * p["n_opt"])
    slope, intercept = np.polyfit(np.log([p["compute"] for p in profiles]),
                                  np.log([p["n_opt"] for p in profiles]), 1)
    return {"a": float(slope), "b": float(1 - slope), "G": float(np.exp(intercept)),
            "profiles": profiles, "unbracketed": unbracketed}


# ---- synthetic runs, to test the fits on known constants --------------------------------------


def synthetic_runs(law: Law, n_values, d_values, noise: float = 0.0, seed: int = 0
                   ) -> list[dict]:
    """Every (N, D) pair with the law's loss times a lognormal noise of `noise` (sd of log L)."""
    rng = np.random.default_rng(seed)
    out = []
    for n, d in itertools.product(n_values, d_values):
        loss = float(law.loss(n, d) * math.exp(noise * rng.standard_normal()))
        out.append({"params": float(n), "tokens": float(d), "loss": loss})
    return out


def synthetic_isoflops(law: Law, budgets, per_budget: int = 7, spread: float = 8.0,
                       noise: float = 0.0, seed: int = 0) -> list[dict]:
    """For each compute budget, `per_budget` runs from N_opt / spread to N_opt * spread (log
    spaced) with D = C / 6N."""
    rng = np.random.default_rng(seed)
    out = []
    for c in budgets:
        n_opt, _ = law.optimum(c)
        for n in np.geomspace(n_opt / spread, n_opt * spread, per_budget):
            d = c / (6 * n)
            loss = float(law.loss(n, d) * math.exp(noise * rng.standard_normal()))
            out.append({"params": float(n), "tokens": float(d), "loss": loss,
                        "flops": float(c)})
    return out
