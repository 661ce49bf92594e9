"""`llmos scaling`: sweeps of pretraining runs, scaling-law fits, predictions."""

from __future__ import annotations

import sys
from pathlib import Path

from llmos.cli.flags import RAW, add_config_args, resolve_config

# The default CPU sweep (2 cores, about an hour): IsoFLOP profiles on builtin:stdlib.
DEFAULT_FLOPS = "2e12,6e12,2e13"
DEFAULT_PARAMS = "150k:2.5M:7"


def add_scaling(sub) -> None:
    s = sub.add_parser("scaling", help="fit scaling laws to pretraining runs",
                       description="Scaling laws: L(N, D) = E + A/N^alpha + B/D^beta fitted to "
                       "runs of several sizes and token budgets (docs/scaling.md).")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_sweep(verbs)
    _add_collect(verbs)
    _add_predict(verbs)
    f = verbs.add_parser("fit", help="fit both Chinchilla approaches to a runs file",
                         formatter_class=RAW,
                         description="Read RUNS.jsonl, one run a line: {\"params\": N, "
                         "\"tokens\": D, \"loss\": L} (nats/token), optional \"flops\" (else "
                         "6ND) and \"params_nonembed\". Fit approach 3 of Hoffmann et al. 2022 "
                         "(Huber loss on log-loss, L-BFGS from a grid of starts, as the Epoch AI "
                         "replication) with bootstrap 95% intervals, and approach 2 (a parabola "
                         "per IsoFLOP profile of 3+ runs); write FIT.json and print the fit.")
    f.add_argument("runs", metavar="RUNS.jsonl", help="one run a line")
    f.add_argument("--out", required=True, metavar="FIT.json", help="where the fit goes")
    f.add_argument("--bootstrap", type=int, default=100, metavar="ROUNDS",
                   help="resamples of the runs for the intervals (default 100; 0 = none)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    f.set_defaults(func=cmd_scaling_fit)


def cmd_scaling_fit(args):
    from llmos.scaling import fitting

    if args.bootstrap < 0:
        raise ValueError("--bootstrap must be 0 or more")
    fit = fitting.fit_file(args.runs, args.out, args.bootstrap, args.seed)
    print(fitting.summary(fit))
    print(f"wrote {args.out}")


def _add_sweep(verbs) -> None:
    w = verbs.add_parser(
        "sweep", help="train a grid or IsoFLOP sweep of model sizes and token budgets",
        formatter_class=RAW,
        description="Train one ordinary pretraining run per (size, tokens) of the sweep, collect\n"
        "their validation losses into OUT/runs.jsonl and fit them (OUT/fit.json, fit.png).\n"
        "Sizes N count every parameter (--count nonembedding: those outside the embedding);\n"
        "each N gets a shape (depth, width, heads) by one rule (docs/scaling.md); compute is\n"
        "C = 6ND with N counted the same way.\n\n"
        "  --flops C,... --params N,...   IsoFLOP profiles: at each C, each N with D = C/6N\n"
        "  --tokens D,... --params N,...  a grid: every N with every D\n\n"
        "Amounts take k/M/G suffixes and FROM:TO:COUNT log-spaced ranges. Without either,\n"
        f"the default CPU sweep: --flops {DEFAULT_FLOPS} --params {DEFAULT_PARAMS}.\n"
        "Run the same command again to continue a stopped sweep: finished runs are kept,\n"
        "a stopped run resumes from its checkpoint.")
    add_config_args(w, naming=False)
    w.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder")
    w.add_argument("--params", metavar="LIST", help="model sizes (parameters)")
    w.add_argument("--count", choices=("total", "nonembedding"), default="total",
                   help="which parameters N counts (default total, as Chinchilla)")
    g = w.add_mutually_exclusive_group()
    g.add_argument("--flops", metavar="LIST", help="compute budgets: IsoFLOP profiles")
    g.add_argument("--tokens", metavar="LIST", help="token budgets: a grid with --params")
    w.add_argument("--tokens-per-param", default="0.5:100", metavar="LOW:HIGH",
                   help="IsoFLOP: leave out the runs whose D/N falls outside (default 0.5:100)")
    w.add_argument("--steps", type=int, metavar="S",
                   help="every run takes about S optimizer steps, its batch grown with its "
                   "tokens (default: the preset's batch, the steps grown with the tokens)")
    w.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each on its share of the cores (default 1)")
    w.add_argument("--emit-jobs", metavar="FILE",
                   help="instead of training, write one torchrun line per run not yet done "
                   "(for any scheduler); `llmos scaling collect OUT` gathers the results")
    w.add_argument("--nproc", type=int, default=1,
                   help="with --emit-jobs: processes per run (token budgets count all of them)")
    w.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    w.add_argument("--bootstrap", type=int, default=100, metavar="ROUNDS",
                   help="bootstrap resamples for the fit's intervals (default 100)")
    w.set_defaults(func=cmd_scaling_sweep)


def _add_collect(verbs) -> None:
    c = verbs.add_parser("collect", help="gather a sweep's finished runs into runs.jsonl",
                         description="Read the checkpoints of a sweep's runs (trained by "
                         "`llmos scaling sweep` or by its --emit-jobs lines) and write "
                         "OUT/runs.jsonl, one finished run a line; say which are missing.")
    c.add_argument("sweep", metavar="OUT", help="the sweep's folder")
    c.set_defaults(func=cmd_scaling_collect)


def _make_plan(args, cfg) -> tuple[dict, list[str]]:
    from llmos.scaling import plan

    if args.jobs < 1 or args.nproc < 1:
        raise ValueError("--jobs and --nproc must be 1 or more")
    if args.nproc > 1 and not args.emit_jobs:
        raise ValueError("--nproc is for --emit-jobs (a sweep here runs one process per run; "
                         "use --jobs for several runs at once)")
    default = not (args.params or args.flops or args.tokens)
    params = plan.parse_amounts(args.params or DEFAULT_PARAMS)
    skipped: list[str] = []
    if args.tokens:
        runs = plan.plan_grid(params, plan.parse_amounts(args.tokens), cfg, args.nproc,
                              args.count, args.steps)
        kind = "grid"
    elif args.flops or default:
        runs, skipped = plan.plan_isoflops(
            plan.parse_amounts(args.flops or DEFAULT_FLOPS), params, cfg, args.nproc,
            plan.parse_range(args.tokens_per_param), args.count, args.steps)
        kind = "isoflop"
    else:
        raise ValueError("--params needs --flops (IsoFLOP profiles) or --tokens (a grid)")
    plan.check_plan(runs)
    return {"kind": kind, "preset": args.preset, "overrides": [
        o.split("=", 1) for o in args.overrides], "sources": cfg.data.sources,
        "nproc": args.nproc, "counting": args.count, "steps": args.steps or None,
        "runs": runs}, skipped


def cmd_scaling_sweep(args):
    from llmos.scaling import fitting, plan, sweep

    cfg = resolve_config(args)
    out = Path(args.out)
    # Planned first with data.vocab_size (or the folder's tokenizer), so that a bad sweep, or
    # one that belongs in another folder, is refused before any data is prepared.
    sweep.size_vocabulary(cfg, out)
    new, skipped = _make_plan(args, cfg)
    if args.dry_run:
        print("".join(f"left out: {line}\n" for line in skipped), end="")
        print("\n".join(plan.describe(r) for r in new["runs"]))
        return
    plan.merge(out / "sweep.json", new)
    out.mkdir(parents=True, exist_ok=True)
    sweep.prepare_data(out, cfg)  # the tokenizer sets the vocabulary the shapes are sized with
    new, skipped = _make_plan(args, cfg)
    print("".join(f"left out: {line}\n" for line in skipped), end="")
    merged = plan.merge(out / "sweep.json", new)
    plan.write(out / "sweep.json", merged)
    sweep.link_data(out, merged)
    if args.emit_jobs:
        n = sweep.emit_jobs(out, merged, Path(args.emit_jobs))
        print(f"wrote {n} job lines to {args.emit_jobs}; then: llmos scaling collect {out}")
        return
    try:
        failures = sweep.run_all(out, merged, args.jobs)
    except sweep.Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(130)
    rows, missing = sweep.collect(out)
    print(f"collected {len(rows)} runs into {out / 'runs.jsonl'}")
    if failures or missing:
        raise ValueError(f"{len(missing)} runs did not finish ({', '.join(missing)}): fix the "
                         "cause in their train.log and run the same command again")
    fit = fitting.fit_file(out / "runs.jsonl", out / "fit.json", args.bootstrap, 0)
    print(fitting.summary(fit))
    print(f"wrote {out / 'fit.json'}")


def cmd_scaling_collect(args):
    from llmos.scaling import sweep

    out = Path(args.sweep)
    if not (out / "sweep.json").exists():
        raise FileNotFoundError(f"{out} is not a sweep folder (no sweep.json)")
    rows, missing = sweep.collect(out)
    print(f"collected {len(rows)} finished runs into {out / 'runs.jsonl'}")
    if missing:
        print(f"not finished ({len(missing)}): {', '.join(missing)}")


def _add_predict(verbs) -> None:
    p = verbs.add_parser(
        "predict", help="a run's loss from a fit, or the compute-optimal N and D for a budget",
        formatter_class=RAW,
        description="From FIT.json (approach 3, with the 95% interval of its bootstrap):\n"
        "  --params N --tokens D   the loss of N parameters trained on D tokens\n"
        "  --flops C               the compute-optimal N and D for C = 6ND, and the loss there\n"
        "--check trains that run in the sweep's folder (held out of its runs.jsonl) and\n"
        "prints predicted against measured (N counted as the sweep counts it).")
    p.add_argument("fit", metavar="FIT.json")
    p.add_argument("--params", metavar="N")
    p.add_argument("--tokens", metavar="D")
    p.add_argument("--flops", metavar="C")
    p.add_argument("--count", choices=("total", "nonembedding"),
                   help="which parameters N counts (default total; nonembedding needs runs "
                   "that gave params_nonembed)")
    p.add_argument("--check", action="store_true", help="train the run and compare")
    p.add_argument("--sweep", metavar="DIR",
                   help="with --check: the sweep whose settings the run takes (default: the "
                   "folder of FIT.json)")
    p.set_defaults(func=cmd_scaling_predict)


def cmd_scaling_predict(args):
    from llmos.scaling import plan, predict

    fit = predict.read_fit(args.fit)
    if args.flops and not (args.params or args.tokens):
        p = predict.optimum_at(fit, plan.parse_amount(args.flops), args.count)
    elif args.params and args.tokens and not args.flops:
        p = predict.loss_at(fit, plan.parse_amount(args.params), plan.parse_amount(args.tokens),
                            args.count)
    else:
        raise ValueError("give --flops C, or --params N with --tokens D")
    print(predict.shown(p))
    if args.check:
        _check(args, fit, p)


def _check(args, fit: dict, p: dict) -> None:
    """Train the predicted run as a held-out run of the sweep; print predicted vs measured."""
    import json

    from llmos.scaling import plan, predict, sweep

    folder = Path(args.sweep) if args.sweep else Path(args.fit).parent
    if not (folder / "sweep.json").exists():
        raise FileNotFoundError(f"{folder} is not a sweep folder (no sweep.json): pass --sweep")
    on_disk = json.loads((folder / "sweep.json").read_text())
    counting = on_disk.get("counting", "total")
    if p["counting"] != counting:
        raise ValueError(f"the sweep in {folder} counts parameters as {counting!r}: pass "
                         f"--count {counting}")
    cfg = sweep.config_of(on_disk, folder)
    sweep.prepare_data(folder, cfg)
    run = {**plan.plan_run(p["params"], p["tokens"], cfg, on_disk["nproc"], prefix="check-",
                           counting=counting, steps=on_disk.get("steps")), "held_out": True}
    merged = plan.merge(folder / "sweep.json", {**on_disk, "runs": [run]})
    plan.write(folder / "sweep.json", merged)
    sweep.link_data(folder, merged)
    if sweep.run_all(folder, {**merged, "runs": [run]}):
        raise ValueError(f"the check run failed: see {sweep.run_dir(folder, run) / 'train.log'}")
    row = sweep.measured(folder, run, counting)
    # The run trained has the rule's shape and whole steps: predict for exactly that.
    again = predict.loss_at(fit, plan.counted(row, counting), row["tokens"], counting)
    error = row["loss"] / again["loss"] - 1
    ci = again.get("ci")
    inside = ci is not None and ci[0] <= row["loss"] <= ci[1]
    print(f"check {run['name']}: predicted {again['loss']:.4f}"
          + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
          + f", measured {row['loss']:.4f} nats/token ({100 * error:+.2f}%"
          + (", inside the interval)" if inside else ")"))
    with open(folder / "checks.jsonl", "a") as f:
        f.write(json.dumps({**row, "predicted": again["loss"], "predicted_ci": ci,
                            "relative_error": error, "fit": str(args.fit)}) + "\n")
