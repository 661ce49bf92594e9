"""Arena ratings: pure functions over a list of battles (evals/battles.py), after FastChat's
arena analysis. Formulas, anchoring and the rank rule are written out in docs/arena.md.

    online_elo     one pass in order: r_a += K (S_a - E_a), E_a = 1 / (1 + base^((r_b - r_a)/scale))
    bradley_terry  maximum likelihood of P(a beats b) = 1 / (1 + base^((r_b - r_a)/scale)),
                   ties counted as half a win each way; the mean rating (or one model) = init
    bootstrap      median and 95% interval of a rating function over battles resampled with
                   replacement (Bradley-Terry: a multinomial draw over a (pair, outcome) table)
    ranks          1 + the number of models whose lower bound is above this one's upper bound
    leaderboard    the rows `llmos arena leaderboard` prints
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections import defaultdict

import numpy as np

SCORE_A = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


# ---- online Elo ----------------------------------------------------------------------------------


def online_elo(battles: list[dict], k: float = 4, base: float = 10, scale: float = 400,
               init: float = 1000) -> dict[str, float]:
    """Elo updated battle by battle in the given order; a tie scores 1/2 for each side.
    Order matters (the last battles move the ratings most), hence Bradley-Terry below."""
    r = defaultdict(lambda: float(init))
    for b in battles:
        a, bb = b["model_a"], b["model_b"]
        expected_a = 1 / (1 + base ** ((r[bb] - r[a]) / scale))
        delta = k * (SCORE_A[b["winner"]] - expected_a)
        r[a] += delta
        r[bb] -= delta
    return dict(r)


# ---- Bradley-Terry -------------------------------------------------------------------------------


def outcome_table(battles: list[dict]):
    """(models, pairs, counts): models sorted by name; pairs a (P, 2) array of model indices
    i < j for each pair that met; counts (P, 3) = [i won, tie, j won] for that pair."""
    models = sorted({b["model_a"] for b in battles} | {b["model_b"] for b in battles})
    index = {m: n for n, m in enumerate(models)}
    cells = defaultdict(lambda: [0, 0, 0])
    for b in battles:
        i, j, s = index[b["model_a"]], index[b["model_b"]], SCORE_A[b["winner"]]
        if i > j:
            i, j, s = j, i, 1 - s
        cells[i, j][0 if s == 1 else 1 if s == 0.5 else 2] += 1
    keys = sorted(cells)
    pairs = np.array(keys, dtype=np.int64).reshape(-1, 2)
    counts = np.array([cells[key] for key in keys], dtype=np.float64).reshape(-1, 3)
    return models, pairs, counts


def fit_bt(pairs, counts, n_models: int, reg: float = 1e-6, start=None, tol: float = 1e-10,
           max_iter: int = 200) -> np.ndarray:
    """Bradley-Terry strengths in natural units (log-odds), mean zero, by Newton's method.

    counts is (P, 3) for one fit or (R, P, 3) for R fits at once (the bootstrap rounds);
    returns (n_models,) or (R, n_models). Maximizes
        sum_pairs w_ij log sigma(s_i - s_j) + w_ji log sigma(s_j - s_i) - reg/2 |s|^2
    with w_ij = wins of i + ties / 2. The log-likelihood is concave, so Newton converges in a
    handful of steps; reg keeps a model that never lost (infinite MLE) finite.
    """
    counts = np.asarray(counts, dtype=np.float64)
    single = counts.ndim == 2
    counts = counts[None] if single else counts
    wins = counts[..., 0] + counts[..., 1] / 2  # (R, P): wins of the pair's first model
    games = counts.sum(-1)
    D = np.zeros((len(pairs), n_models))  # design matrix: +1 for i, -1 for j
    D[np.arange(len(pairs)), pairs[:, 0]] = 1.0
    D[np.arange(len(pairs)), pairs[:, 1]] = -1.0
    s = np.zeros((len(counts), n_models)) if start is None else np.array(start, dtype=np.float64)
    s = np.broadcast_to(s, (len(counts), n_models)).copy()
    # (L + J/n) is nonsingular on a connected graph: J/n fixes the free mean; the 1e-9 damping
    # only keeps the solve finite for models absent from a round (it does not move the optimum).
    fixed = np.eye(n_models) * (reg + 1e-9) + np.ones((n_models, n_models)) / n_models
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(s @ D.T)))
        grad = (wins - games * p) @ D - reg * s
        curv = games * p * (1 - p)
        hess = np.matmul(D.T, curv[:, :, None] * D) + fixed  # minus the Hessian, plus J/n
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        # a far start (a model that never lost) must not overshoot: at most 4 log-odds a step
        biggest = np.abs(step).max(-1, keepdims=True)
        step *= np.minimum(1.0, 4.0 / np.maximum(biggest, 1e-300))
        s += step
        s -= s.mean(-1, keepdims=True)
        if biggest.max() < tol:
            break
    return s[0] if single else s


def to_ratings(s, models, base=10, scale=400, init=1000, anchor: str | None = None):
    """Natural-unit strengths -> ratings: init + scale * log_base(odds), shifted so that the
    mean rating is init, or the `anchor` model's rating is init."""
    s = np.asarray(s)
    zero = s[..., models.index(anchor)] if anchor else s.mean(-1)
    return init + scale / math.log(base) * (s - np.asarray(zero)[..., None])


def bradley_terry(battles: list[dict], base: float = 10, scale: float = 400, init: float = 1000,
                  anchor: str | None = None, reg: float = 1e-6) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry ratings (order-free, deterministic). reg=0 is the exact
    MLE (two models: r_a - r_b = scale * log_base(w_a / w_b)); the default 1e-6 keeps a model
    that never lost finite and moves others by well under 0.01 point with tens of battles."""
    models, pairs, counts = outcome_table(battles)
    if not models:
        return {}
    s = fit_bt(pairs, counts, len(models), reg=reg)
    r = to_ratings(s, models, base, scale, init, anchor)
    return dict(zip(models, r.tolist()))


# ---- bootstrap, ranks ----------------------------------------------------------------------------


def bootstrap(fn, battles: list[dict], rounds: int = 1000, seed: int = 0
              ) -> dict[str, tuple[float, float, float]]:
    """{model: (median, lo95, hi95)} of fn's ratings over `rounds` resamples of the battles
    (with replacement, same size), seeded.

    fn = bradley_terry (or a functools.partial of it) takes the fast path: a resample of the
    battles only changes the counts of the (pair, outcome) table, so each round is one
    multinomial draw over its cells, and all rounds are fitted together, warm-started from the
    full-data fit. Any other fn (online_elo, ...) is called once per resampled list.
    """
    rng = np.random.default_rng(seed)
    n = len(battles)
    if n == 0 or rounds <= 0:
        return {}
    target = fn.func if isinstance(fn, functools.partial) else fn
    if target is bradley_terry:
        kw = dict(fn.keywords) if isinstance(fn, functools.partial) else {}
        reg = kw.pop("reg", 1e-6)
        models, pairs, counts = outcome_table(battles)
        full = fit_bt(pairs, counts, len(models), reg=reg)
        draws = rng.multinomial(n, counts.ravel() / n, size=rounds).reshape(rounds, *counts.shape)
        s = fit_bt(pairs, draws, len(models), reg=reg, start=full)
        table = to_ratings(s, models, **kw)
    else:
        models = sorted({b["model_a"] for b in battles} | {b["model_b"] for b in battles})
        table = np.full((rounds, len(models)), np.nan)
        for r in range(rounds):
            got = fn([battles[i] for i in rng.integers(0, n, n)])
            table[r] = [got.get(m, np.nan) for m in models]
    med, lo, hi = np.nanquantile(table, [0.5, 0.025, 0.975], axis=0)
    return {m: (float(med[i]), float(lo[i]), float(hi[i])) for i, m in enumerate(models)}


def ranks(intervals: dict[str, tuple[float, float, float]]) -> dict[str, int]:
    """FastChat's rule: 1 + the number of models whose lower bound is above this model's upper
    bound, i.e. that are better beyond doubt. Overlapping models share a rank."""
    return {m: 1 + sum(lo > hi for o, (_, lo, _) in intervals.items() if o != m)
            for m, (_, _, hi) in intervals.items()}


# ---- the leaderboard -----------------------------------------------------------------------------


def record(battles: list[dict]) -> dict[str, dict[str, int]]:
    """{model: {battles, wins, ties, losses}}."""
    out = defaultdict(lambda: {"battles": 0, "wins": 0, "ties": 0, "losses": 0})
    for b in battles:
        s = SCORE_A[b["winner"]]
        for m, mine in ((b["model_a"], s), (b["model_b"], 1 - s)):
            out[m]["battles"] += 1
            out[m]["wins" if mine == 1 else "ties" if mine == 0.5 else "losses"] += 1
    return dict(out)


def leaderboard(battles: list[dict], rounds: int = 1000, seed: int = 0, k: float = 4,
                base: float = 10, scale: float = 400, init: float = 1000,
                anchor: str | None = None) -> list[dict]:
    """One row per model, best first: model, rank, rating (Bradley-Terry on all battles),
    ci_lo/ci_hi (bootstrap 95%; equal to rating when rounds=0), elo (online, in the given
    order), battles, wins, ties, losses."""
    if not battles:
        return []
    units = dict(base=base, scale=scale, init=init)
    bt = bradley_terry(battles, anchor=anchor, **units)
    elo = online_elo(battles, k=k, **units)
    if rounds > 0:
        ci = bootstrap(functools.partial(bradley_terry, anchor=anchor, **units), battles,
                       rounds=rounds, seed=seed)
    else:
        ci = {m: (r, r, r) for m, r in bt.items()}
    rank = ranks(ci)
    wtl = record(battles)
    rows = [{"model": m, "rank": rank[m], "rating": bt[m], "ci_lo": ci[m][1], "ci_hi": ci[m][2],
             "elo": elo[m], **wtl[m]} for m in bt]
    return sorted(rows, key=lambda row: (-row["rating"], row["model"]))


COLUMNS = ["rank", "model", "rating", "ci_lo", "ci_hi", "elo", "battles", "wins", "ties",
           "losses"]


def rounded(row: dict) -> dict:
    return {c: round(row[c], 1) if isinstance(row[c], float) else row[c] for c in COLUMNS}


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table; the interval is shown as +up/-down around the rating."""
    width = max([5] + [len(r["model"]) for r in rows])
    lines = [f"{'rank':>4}  {'model':<{width}}  {'rating':>7}  {'95% CI':>13}  {'elo':>7}  "
             f"{'battles':>7}  {'W/T/L':>17}"]
    for r in rows:
        ci = f"+{r['ci_hi'] - r['rating']:.1f}/-{r['rating'] - r['ci_lo']:.1f}"
        wtl = f"{r['wins']}/{r['ties']}/{r['losses']}"
        lines.append(f"{r['rank']:>4}  {r['model']:<{width}}  {r['rating']:>7.1f}  {ci:>13}  "
                     f"{r['elo']:>7.1f}  {r['battles']:>7}  {wtl:>17}")
    return "\n".join(lines)


def format_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rounded(r) for r in rows)
    return buf.getvalue()


def format_json(rows: list[dict]) -> str:
    return json.dumps([rounded(r) for r in rows], indent=1)


def plot_intervals(rows: list[dict], path, title: str = "Bradley-Terry ratings, 95% bootstrap "
                   "intervals") -> None:
    """A PNG: one horizontal interval per model, best at the top (matplotlib's Agg canvas,
    so no display and no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.35 * len(rows) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    rating = np.array([r["rating"] for r in rows])
    err = np.array([[r["rating"] - r["ci_lo"] for r in rows], [r["ci_hi"] - r["rating"]
                                                              for r in rows]])
    ax.errorbar(rating, y, xerr=err, fmt="o", capsize=3)
    ax.set_yticks(y, [f"{r['rank']}. {r['model']}" for r in rows])
    ax.set_xlabel("rating")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
