"""Arena ratings speed: Bradley-Terry with bootstrap intervals over synthetic battles.

Synthesizes --battles anonymous battles among --models models with known true ratings (seeded;
evals/battles.synthetic_battles), fits Bradley-Terry and --rounds bootstrap rounds (the
multinomial fast path of evals/ratings.bootstrap), and prints one JSON line: seconds, the
target (30 s for 1,000 rounds over 50,000 battles among 20 models on 2 cores), and how well the
fitted order matches the true one (Spearman's rho, Kendall's tau). The baseline is the
textbook bootstrap (resample the battle list, refit) timed on --baseline-rounds rounds and
scaled to --rounds.

    python benchmarks/ratings_speed.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

from llmos.evals import battles as battles_
from llmos.evals import ratings


def rank_of(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)


def spearman(x, y) -> float:
    return float(np.corrcoef(rank_of(np.asarray(x)), rank_of(np.asarray(y)))[0, 1])


def kendall_tau(x, y) -> float:
    x, y = np.asarray(x), np.asarray(y)
    s = np.sign(x[:, None] - x[None]) * np.sign(y[:, None] - y[None])
    n = len(x)
    return float(s.sum() / (n * (n - 1)))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--battles", type=int, default=50_000, help="battles to synthesize")
    p.add_argument("--models", type=int, default=20, help="models in the arena")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds")
    p.add_argument("--baseline-rounds", type=int, default=10,
                   help="rounds of the resample-and-refit baseline actually run (0 = skip)")
    p.add_argument("--tie-rate", type=float, default=0.2, help="share of battles that are ties")
    p.add_argument("--seed", type=int, default=0, help="seed for the true ratings and battles")
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    true = {f"model-{i:02d}": float(r) for i, r in enumerate(1000 + rng.normal(0, 100,
                                                                               args.models))}
    log = battles_.synthetic_battles(true, args.battles, seed=args.seed, tie_rate=args.tie_rate)
    print(f"{len(log)} battles among {len(true)} models", file=sys.stderr)

    t0 = time.perf_counter()
    fit = ratings.bradley_terry(log)
    t1 = time.perf_counter()
    ci = ratings.bootstrap(ratings.bradley_terry, log, rounds=args.rounds, seed=0)
    t2 = time.perf_counter()
    print(f"fit {t1 - t0:.2f} s, bootstrap {t2 - t1:.2f} s", file=sys.stderr)

    baseline = None
    if args.baseline_rounds > 0:
        refit = functools.partial(ratings.bootstrap, lambda bs: ratings.bradley_terry(bs), log,
                                  rounds=args.baseline_rounds, seed=0)
        t3 = time.perf_counter()
        refit()
        baseline = (time.perf_counter() - t3) * args.rounds / args.baseline_rounds
        print(f"baseline (resample and refit), scaled: {baseline:.1f} s", file=sys.stderr)

    names = list(true)
    truth = [true[m] for m in names]
    fitted = [fit[m] for m in names]
    width = [ci[m][2] - ci[m][1] for m in names]
    print(json.dumps({
        "benchmark": "ratings_speed", "battles": len(log), "models": len(true),
        "rounds": args.rounds, "threads": os.cpu_count(),
        "seconds": round(t2 - t0, 3), "fit_seconds": round(t1 - t0, 3),
        "bootstrap_seconds": round(t2 - t1, 3), "target_seconds": 30,
        "baseline_seconds": None if baseline is None else round(baseline, 1),
        "speedup": None if baseline is None else round(baseline / (t2 - t0), 1),
        "spearman": round(spearman(truth, fitted), 4),
        "kendall_tau": round(kendall_tau(truth, fitted), 4),
        "ci95_width_median": round(float(np.median(width)), 2),
    }))


if __name__ == "__main__":
    main()
