"""`llmos scaling`: scaling-law fits (`fit`; the sweep and predictions come next)."""

from __future__ import annotations

from llmos.cli.flags import RAW


def add_scaling(sub) -> None:
    s = sub.add_parser("scaling", help="fit scaling laws to pretraining runs",
                       description="Scaling laws: L(N, D) = E + A/N^alpha + B/D^beta fitted to "
                       "runs of several sizes and token budgets (docs/scaling.md).")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
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
