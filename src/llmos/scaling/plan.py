"""What a sweep will train: the runs of a grid (sizes x token budgets) or of IsoFLOP profiles
(for each compute C, several sizes N with D = C / 6N), each a model shape, a step count and the
`--set` overrides that make it a normal `llmos pretrain` run. The plan is kept in
SWEEP/sweep.json, so a rerun of the same command finds it and trains only what is missing.

Sizes N count every parameter (Chinchilla's convention) or, with counting "nonembedding", those
outside the embedding (Kaplan et al. 2020's), and C = 6 N D counts them the same way;
runs.jsonl records both counts.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from llmos.config import RunConfig
from llmos.scaling.shapes import count_params, shape_for

SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12}
MIN_STEPS = 20  # fewer optimizer steps than this is not a training run worth fitting
MISS = 0.10  # a planned shape may miss its size by this much (the rule: 7% or better)


class PlanError(ValueError):
    """A sweep that cannot be made as asked."""


def parse_amount(text: str) -> float:
    """'50k', '2M', '1.5e12', '3G' -> a number."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgbt]?)\s*", text, re.I)
    if not m:
        raise PlanError(f"{text!r} is not an amount (e.g. 50k, 2M, 1e12)")
    value = float(m.group(1)) * SUFFIX[m.group(2).lower()]
    if value <= 0:
        raise PlanError(f"{text!r}: an amount must be positive")
    return value


def parse_amounts(text: str) -> list[float]:
    """A comma list ('50k,200k,1M') or a log-spaced range FROM:TO:COUNT ('50k:2M:5')."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3 or not parts[2].strip().isdigit() or int(parts[2]) < 1:
            raise PlanError(f"{text!r}: a range is FROM:TO:COUNT, e.g. 50k:2M:5")
        lo, hi, count = parse_amount(parts[0]), parse_amount(parts[1]), int(parts[2])
        if count == 1:
            return [lo]
        return [lo * (hi / lo) ** (i / (count - 1)) for i in range(count)]
    return [parse_amount(p) for p in text.split(",") if p.strip()]


def short(x: float) -> str:
    """A number as a run name shows it: 3 significant digits and a suffix (52.3k, 1.2M)."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def tokens_per_step(cfg: RunConfig, nproc: int = 1) -> int:
    t = cfg.train
    return t.batch_size * t.seq_len * t.grad_accum * nproc


def counted(run: dict, counting: str) -> int:
    return run["params"] if counting == "total" else run["params_nonembed"]


def batch_for(tokens: float, steps: int, cfg: RunConfig, nproc: int = 1) -> int:
    """Sequences per process and step that spend `tokens` in about `steps` steps."""
    t = cfg.train
    return max(1, round(tokens / (steps * t.seq_len * t.grad_accum * nproc)))


def plan_run(n_params: float, tokens: float, cfg: RunConfig, nproc: int = 1,
             prefix: str = "", counting: str = "total", steps: int | None = None) -> dict:
    """One run of the sweep: its name, shape, steps and overrides. With `steps`, every run
    takes about that many optimizer steps and its batch grows with its tokens (otherwise the
    preset's batch, and the steps grow)."""
    try:
        model = shape_for(n_params, cfg.model, counting)
    except ValueError as e:
        raise PlanError(str(e)) from None
    total, nonembed = count_params(model)
    n = total if counting == "total" else nonembed
    if abs(n / n_params - 1) > MISS:
        raise PlanError(f"N={short(n_params)}: the nearest shape the rule makes has {n:,} "
                        f"parameters ({100 * (n / n_params - 1):+.0f}%); choose another size")
    overrides = {"model.dim": model.dim, "model.n_layers": model.n_layers,
                 "model.n_heads": model.n_heads, "model.n_kv_heads": model.n_kv_heads,
                 "model.ffn_dim": model.ffn_dim}
    if steps:
        if steps < MIN_STEPS:
            raise PlanError(f"{steps} steps a run is too few to train (at least {MIN_STEPS})")
        cfg = copy.deepcopy(cfg)
        cfg.train.batch_size = overrides["train.batch_size"] = batch_for(tokens, steps, cfg,
                                                                         nproc)
    per_step = tokens_per_step(cfg, nproc)
    steps = round(tokens / per_step)
    if steps < MIN_STEPS:
        raise PlanError(f"{short(tokens)} tokens is {steps} steps of {per_step:,} tokens: too few "
                        f"to train (at least {MIN_STEPS}); raise the budget or lower "
                        "train.batch_size")
    warmup = min(cfg.train.warmup_steps, steps // 10)
    overrides.update({"train.max_steps": steps, "train.warmup_steps": warmup,
                      "train.eval_every": 0, "train.save_every": 0})
    actual = steps * per_step
    return {"name": f"{prefix}N{short(n)}-D{short(actual)}", "params": total,
            "params_nonembed": nonembed, "tokens": actual, "flops": 6 * n * actual,
            "target": {"params": n_params, "tokens": tokens}, "overrides": overrides}


def plan_grid(params: list[float], tokens: list[float], cfg: RunConfig, nproc: int = 1,
              counting: str = "total", steps: int | None = None) -> list[dict]:
    return [plan_run(n, d, cfg, nproc, counting=counting, steps=steps)
            for n in params for d in tokens]


def plan_isoflops(flops: list[float], params: list[float], cfg: RunConfig, nproc: int = 1,
                  tokens_per_param: tuple[float, float] = (0.5, 100),
                  counting: str = "total", steps: int | None = None
                  ) -> tuple[list[dict], list[str]]:
    """For each budget C, a run at each size N whose D = C / 6N is within `tokens_per_param`
    (D/N) and makes enough steps: a profile needs the sizes around its valley, not a tiny model
    fed for hours. Returns the runs and a line for each (C, N) left out."""
    lo, hi = tokens_per_param
    runs, skipped = [], []
    for c in flops:
        for n in params:
            ratio = c / (6 * n * n)
            if not lo <= ratio <= hi:
                skipped.append(f"C={c:.3g}, N={short(n)}: {ratio:.3g} tokens per parameter is "
                               f"outside {lo:g}-{hi:g}")
                continue
            try:
                runs.append({**plan_run(n, c / (6 * n), cfg, nproc, counting=counting,
                                      steps=steps),
                             "budget": c})
            except PlanError as e:
                skipped.append(f"C={c:.3g}, N={short(n)}: {e}")
    if not runs:
        raise PlanError("no size fits any budget:\n  " + "\n  ".join(skipped))
    return runs, skipped


def check_plan(runs: list[dict]) -> None:
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):
        raise PlanError("two sizes or budgets round to the same run: space them further apart")
    if len(runs) < 2:
        raise PlanError(f"a sweep of {len(runs)} run cannot be fitted: give several sizes or "
                        "budgets")


def merge(path: Path, plan: dict) -> dict:
    """The plan on disk with this one's runs added. A run of the same name must have the same
    settings (else the sweep folder belongs to another sweep), and no run on disk is dropped."""
    if not path.exists():
        return plan
    old = json.loads(path.read_text())
    for key in ("preset", "overrides", "sources", "nproc", "counting", "steps"):
        if old.get(key) != plan.get(key):
            raise PlanError(f"{path} is a sweep with {key} {old.get(key)!r}, not "
                            f"{plan.get(key)!r}: use another --out")
    have = {r["name"]: r for r in old["runs"]}
    for run in plan["runs"]:
        same = have.get(run["name"])
        if same is not None and same["overrides"] != run["overrides"]:
            raise PlanError(f"{path}: run {run['name']} was planned with other settings")
        have.setdefault(run["name"], run)
    return {**old, "runs": list(have.values())}


def write(path: Path, plan: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=1))
    tmp.replace(path)


def describe(run: dict) -> str:
    o = run["overrides"]
    heads = o["model.n_heads"]
    return (f"{run['name']}: {o['model.n_layers']} x {o['model.dim']} ({heads} "
            f"head{'s' * (heads > 1)}, SwiGLU {o['model.ffn_dim']}), {run['params']:,} "
            f"parameters ({run['params_nonembed']:,} without embeddings), {run['tokens']:,} "
            f"tokens in {o['train.max_steps']} steps"
            + (f" of {o['train.batch_size']} sequences" if "train.batch_size" in o else "")
            + f", C = {run['flops']:.3g}")


def parse_range(text: str) -> tuple[float, float]:
    """'0.5:300' -> (0.5, 300)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise PlanError(f"{text!r}: a range is LOW:HIGH, e.g. 0.5:300")
    lo, hi = (parse_amount(p) for p in parts)
    if lo > hi:
        raise PlanError(f"{text!r}: LOW is above HIGH")
    return lo, hi
