"""`llmos scaling predict`: what a fit says about a run not made yet — the loss of N parameters
trained on D tokens, or the compute-optimal N and D for a budget and the loss there — each with
the 95% interval of the fit's bootstrap resamples."""

from __future__ import annotations

import json
from pathlib import Path

from llmos.scaling.laws import Law, interval
from llmos.scaling.shapes import COUNTINGS


def read_fit(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such fit (make one with `llmos scaling fit`)")
    fit = json.loads(path.read_text())
    if "approach3" not in fit:
        raise ValueError(f"{path} is not a FIT.json written by `llmos scaling fit`")
    return fit


def block_of(fit: dict, counting: str | None) -> tuple[str, dict]:
    """The approach-3 fit for this counting of parameters (default: all of them)."""
    counting = counting or "total"
    if counting not in COUNTINGS:
        raise ValueError(f"counting {counting!r}: use one of {', '.join(COUNTINGS)}")
    if counting == "nonembedding" and "nonembedding" not in fit:
        raise ValueError("this fit has no fit without embeddings (its runs did not give "
                         "params_nonembed)")
    return counting, fit["nonembedding"]["approach3"] if counting == "nonembedding" \
        else fit["approach3"]


def _samples(a3: dict) -> list[Law]:
    return [Law.of(s) for s in a3.get("samples", [])]


def loss_at(fit: dict, n: float, d: float, counting: str | None = None) -> dict:
    """Predicted loss (nats/token) of N parameters trained on D tokens."""
    counting, a3 = block_of(fit, counting)
    out = {"counting": counting, "params": n, "tokens": d, "loss": float(Law.of(a3).loss(n, d))}
    samples = _samples(a3)
    if len(samples) >= 2:
        out["ci"] = interval([float(s.loss(n, d)) for s in samples])
    return out


def optimum_at(fit: dict, compute: float, counting: str | None = None) -> dict:
    """The compute-optimal N and D for `compute` FLOPs (C = 6ND) and the loss there."""
    counting, a3 = block_of(fit, counting)
    law = Law.of(a3)
    n, d = law.optimum(compute)
    out = {**loss_at(fit, n, d, counting), "compute": compute}
    samples = _samples(a3)
    if len(samples) >= 2:
        opts = [s.optimum(compute) for s in samples]
        out["params_ci"] = interval([o[0] for o in opts])
        out["tokens_ci"] = interval([o[1] for o in opts])
    return out


def shown(p: dict) -> str:
    ci = p.get("ci")
    span = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
    what = "parameters" if p["counting"] == "total" else "parameters without embeddings"
    lines = []
    if "compute" in p:
        lines.append(f"at {p['compute']:.3g} FLOPs the fit's optimum is:")
    lines.append(f"  {p['params']:,.0f} {what}" + (
        f" [{p['params_ci'][0]:,.0f}, {p['params_ci'][1]:,.0f}]" if "params_ci" in p else ""))
    lines.append(f"  {p['tokens']:,.0f} tokens" + (
        f" [{p['tokens_ci'][0]:,.0f}, {p['tokens_ci'][1]:,.0f}]" if "tokens_ci" in p else "")
        + f" ({p['tokens'] / p['params']:.1f} per parameter)")
    lines.append(f"  predicted loss {p['loss']:.4f} nats/token{span}")
    return "\n".join(lines)
