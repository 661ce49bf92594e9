"""`llmos scaling fit RUNS.jsonl --out FIT.json`: both Chinchilla approaches on a table of runs,
with bootstrap intervals.

RUNS.jsonl has one run a line, `{"params": N, "tokens": D, "loss": L}` (L in nats/token), with
`flops` (else 6ND), `budget` (the compute a sweep planned the run for: it groups the IsoFLOP
profiles) and `params_nonembed` (the same run counted without its embedding matrices)
optional. When every run has `params_nonembed`, the fits are made both ways: which parameters
count moves the compute-optimal tokens-per-parameter a lot at small sizes (nanochat saw about
10 against 3-4).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from llmos.data.sources import Refuse, iter_jsonl
from llmos.scaling.laws import (
    FitError,
    bootstrap_laws,
    fit_isoflops,
    fit_law,
    interval,
    profile_compute,
)
from llmos.scaling.plots import plot_fit


def read_runs(path: str | Path) -> list[dict]:
    """The runs of a RUNS.jsonl file; a line that is not a run is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such runs file")
    runs = []
    for where, rec in iter_jsonl(path, str(path), Refuse(), bad_json="not JSON"):
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a run is a JSON object")
        for key in ("params", "tokens", "loss", *(k for k in ("flops", "budget",
                                                             "params_nonembed") if k in rec)):
            value = rec.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{where}: {key!r} must be a positive number, not {value!r}")
        runs.append(rec)
    if not runs:
        raise FitError(f"{path} holds no runs")
    return runs


def _approach3(n, d, loss, compute, rounds: int, seed: int) -> dict:
    law = fit_law(n, d, loss)
    c_max = float(max(compute))
    n_opt, d_opt = law.optimum(c_max)
    boot = bootstrap_laws(n, d, loss, law, rounds, seed)
    out = {**law.as_dict(), "compute": c_max, "n_opt": n_opt, "d_opt": d_opt,
           "tokens_per_param": d_opt / n_opt, "bootstrap_rounds": len(boot)}
    if len(boot) >= 2:
        out["samples"] = [b.as_dict() for b in boot]  # for predictions' intervals
        ratios = [b.optimum(c_max)[1] / b.optimum(c_max)[0] for b in boot]
        out["ci"] = {"alpha": interval([b.alpha for b in boot]),
                     "beta": interval([b.beta for b in boot]),
                     "E": interval([b.E for b in boot]),
                     "tokens_per_param": interval(ratios)}
    return out


def _approach2(n, d, loss, compute) -> dict:
    try:
        return fit_isoflops(n, d, loss, compute)
    except FitError as e:
        return {"error": str(e)}


def fit_runs(runs: list[dict], rounds: int = 100, seed: int = 0) -> dict:
    """FIT.json's content: approach 3 (with 95% bootstrap intervals over `rounds` resamples of
    the runs) and approach 2 (or why it could not be made), with total parameters counted, and
    again without embeddings when the runs say how many those are."""
    d = np.array([r["tokens"] for r in runs], dtype=float)
    loss = np.array([r["loss"] for r in runs], dtype=float)
    countings = {"total": [r["params"] for r in runs]}
    if all("params_nonembed" in r for r in runs):
        countings["nonembedding"] = [r["params_nonembed"] for r in runs]
    out: dict = {"runs": len(runs)}
    spent = profile_compute(runs)
    for name, params in countings.items():
        n = np.array(params, dtype=float)
        # The optimum is found under C = 6ND with N counted this way (Kaplan's convention when
        # embeddings are left out).
        fits = {"approach3": _approach3(n, d, loss, 6 * n * d, rounds, seed),
                "approach2": _approach2(n, d, loss, spent)}
        if name == "total":
            out.update(fits)
        else:
            out[name] = fits
    return out


def _shown(a3: dict, key: str, digits: int = 3) -> str:
    """A fitted value with its bootstrap interval when there is one."""
    ci = a3.get("ci", {})
    value = f"{a3[key]:.{digits}f}"
    return value + (f" [{ci[key][0]:.{digits}f}, {ci[key][1]:.{digits}f}]" if key in ci else "")


def summary(fit: dict) -> str:
    """The fit in a few lines, as `llmos scaling fit` prints it."""
    lines = [f"{fit['runs']} runs"]
    for name, block in (("total parameters", fit), ("without embeddings",
                                                     fit.get("nonembedding"))):
        if not block:
            continue
        a3 = block["approach3"]
        lines.append(f"{name}: L = {_shown(a3, 'E')} + {a3['A']:.4g}/N^{_shown(a3, 'alpha')} + "
                     f"{a3['B']:.4g}/D^{_shown(a3, 'beta')}")
        lines.append(f"  at {a3['compute']:.3g} FLOPs: N_opt {a3['n_opt']:.3g}, D_opt "
                     f"{a3['d_opt']:.3g}, {_shown(a3, 'tokens_per_param', 1)} tokens per "
                     "parameter")
        a2 = block["approach2"]
        if "a" in a2:
            left_out = a2.get("unbracketed")
            lines.append(f"  approach 2: N_opt ~ C^{a2['a']:.3f}, D_opt ~ C^{a2['b']:.3f} "
                         f"({len(a2['profiles'])} profiles"
                         + (f"; left out, no valley among their sizes: C = "
                            f"{', '.join(f'{x:.3g}' for x in left_out)}" if left_out else "")
                         + ")")
        else:
            lines.append(f"  approach 2: {a2['error']}")
    return "\n".join(lines)


def fit_file(runs_path: str | Path, out: str | Path, rounds: int = 100, seed: int = 0) -> dict:
    """Fit RUNS.jsonl into `out` (FIT.json), with its picture beside it (FIT.png)."""
    runs = read_runs(runs_path)
    fit = fit_runs(runs, rounds, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(fit, indent=1))
    tmp.replace(out)
    plot_fit(runs, fit, out.with_suffix(".png"))
    return fit

