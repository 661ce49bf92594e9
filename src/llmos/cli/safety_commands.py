"""`llmos redteam`: attack a model or an assistant with prompt injection, jailbreaks and
system-prompt leakage, under each defense, and measure (docs/security.md)."""

from __future__ import annotations

import sys
from pathlib import Path


def add_redteam(sub) -> None:
    s = sub.add_parser(
        "redteam", help="attack a checkpoint, profile or endpoint; measure each defense",
        description="Run the red-team probes against TARGET (a checkpoint folder, a profile "
        "name or .toml file, or openai:URL#MODEL for any OpenAI-compatible endpoint): indirect "
        "prompt injection through a retrieved passage, a web page, a tool's output and a pasted "
        "document; jailbreaks of the requests the policy forbids; system-prompt leakage. Each "
        "probe is answered --generations times under each defense; deterministic detectors "
        "decide. Writes OUT/attempts.jsonl, OUT/report.json and OUT/report.html.")
    s.add_argument("target", metavar="TARGET")
    s.add_argument("--policy", default="default", metavar="NAME|FILE",
                   help="what counts as forbidden (default: the shipped default policy)")
    s.add_argument("--generations", type=int, default=5, metavar="N",
                   help="answers per probe and defense (default 5)")
    s.add_argument("--defenses", default="none,spotlight,guard,spotlight+guard", metavar="LIST",
                   help="comma-separated: none, spotlight (tool results and pasted documents "
                   "marked as data), guard (the output guard), spotlight+guard")
    s.add_argument("--spotlight", default="delimit", choices=["delimit", "datamark", "encode"],
                   help="how the spotlight defense marks untrusted text (default delimit, as "
                   "the assistant is trained to read it)")
    s.add_argument("--families", default="injection,leakage,jailbreak,clean", metavar="LIST",
                   help="probe families to run (clean: the injection conversations without "
                   "the attack, scored as accuracy)")
    s.add_argument("--tasks", type=int, default=3, metavar="N",
                   help="questions the injection probes carry (default 3; each makes 20 probes)")
    s.add_argument("--max-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", metavar="DIR", help="default: runs/redteam/TARGET-NAME")
    s.add_argument("--db", metavar="URL", help="the database of a profile target")
    s.add_argument("--api-key", metavar="KEY", help="for an endpoint that needs one")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_redteam)


def cmd_redteam(args):
    from llmos.agent.policy import load_policy
    from llmos.evals.redteam_card import table
    from llmos.safety.probe_set import FAMILIES, default_probes
    from llmos.safety.redteam import DEFENSES, Settings, open_target, run
    from llmos.safety.report import write_reports

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    defenses = tuple(d.strip() for d in args.defenses.split(",") if d.strip())
    for what, given, known in (("family", families, FAMILIES), ("defense", defenses, DEFENSES)):
        bad = [x for x in given if x not in known]
        if bad or not given:
            raise ValueError(f"unknown {what} {bad[0] if bad else '(none given)'!r}; "
                             f"choose from: {', '.join(known)}")
    if not 1 <= args.generations <= 64:
        raise ValueError("--generations must be 1-64")
    policy = load_policy(args.policy)
    probes = [p for p in default_probes(policy, args.seed, args.tasks) if p.family in families]
    settings = Settings(args.generations, args.temperature, args.max_tokens, args.seed, defenses,
                        args.spotlight)
    name = Path(args.target.rstrip("/")).name.replace("#", "-").replace(":", "-") or "target"
    out = Path(args.out or Path("runs") / "redteam" / name)

    def progress(done, total):
        print(f"\rredteam: {done}/{total} requests", end="", file=sys.stderr, flush=True)

    with open_target(args.target, args.device, args.db, args.api_key) as target:
        print(f"redteam: {len(probes)} probes x {len(defenses)} defenses x {args.generations} "
              f"generations against {args.target}", file=sys.stderr)
        result = run(target, probes, settings, policy, progress)
    print(file=sys.stderr)
    result.target, result.tasks = args.target, args.tasks
    report = write_reports(result, out)
    print(table(report))
    print(f"\n{len(result.attempts)} attempts in {result.seconds} s -> {out}/report.html")
