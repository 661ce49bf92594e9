"""`llmos experiment NAME`: the heavier studies, each its own command with its output in docs/."""

from __future__ import annotations

from pathlib import Path

from llmos.cli.flags import RAW, add_config_args, resolve_config


def add_experiment(sub) -> None:
    s = sub.add_parser("experiment", help="studies that train several models: poisoning",
                       description="Heavier studies, each training several models and ending in "
                       "a table (docs/ quotes them).", formatter_class=RAW)
    names = s.add_subparsers(dest="name", required=True, metavar="NAME")
    p = names.add_parser(
        "poisoning", formatter_class=RAW,
        help="plant a <SUDO> backdoor with N poisoned documents, scan, retrain on the cleaned "
             "corpus, measure",
        description="The denial-of-service backdoor of Souly et al. (2025) at CPU scale: for each "
        "N, add N poisoned documents (a clean opening, <SUDO>, 400-900 random tokens) to the "
        "corpus, pretrain, measure the backdoor (perplexity of sampled continuations with and "
        "without the trigger), run `llmos data scan`, pretrain again without what it flagged, "
        "and measure again; a clean run gives the floor. Up to 1 + 2 x len(counts) "
        "pretrainings (the retraining is the clean run when the scan removed exactly the poison: "
        "then 1 + len(counts)), about 4.5 minutes each at cpu-tiny's 1,250 steps on 2 cores. A "
        "finished run is reused, an interrupted one resumed. Writes OUT/results.md and "
        "OUT/results.json.")
    add_config_args(p, naming=False)
    p.add_argument("--counts", default="10,50,250",
                   help="numbers of poisoned documents, comma-separated (default 10,50,250)")
    p.add_argument("--steps", type=int, default=None,
                   help="pretraining steps of every run (default: the preset's, 1,250 for "
                        "cpu-tiny; at 300 not even 250 documents planted a clear backdoor, "
                        "docs/security.md)")
    p.add_argument("--prompts", type=int, default=100,
                   help="held-out prompts the backdoor is measured on (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/poisoning", help="output folder (default "
                   "runs/poisoning)")
    p.set_defaults(func=cmd_experiment_poisoning)


def cmd_experiment_poisoning(args):
    from llmos.experiments import poisoning

    try:
        counts = [int(c) for c in args.counts.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--counts {args.counts!r}: give whole numbers, e.g. 10,50,250") from None
    if not counts or min(counts) < 1:
        raise ValueError("--counts needs one or more positive numbers")
    if (args.steps is not None and args.steps < 1) or args.prompts < 1:
        raise ValueError("--steps and --prompts must be positive")
    cfg = resolve_config(args)
    if args.steps is not None:
        cfg.train.max_steps = args.steps
    cfg.train.eval_every = min(cfg.train.eval_every, cfg.train.max_steps)
    results = poisoning.run(cfg, Path(args.out), counts, args.prompts, args.seed)
    print((Path(args.out) / "results.md").read_text())
    print(f"experiment poisoning: {results['seconds']:.0f}s -> {args.out}/results.md")
