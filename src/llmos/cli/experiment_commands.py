"""`llmos experiment NAME`: the heavier studies, each its own command with its output in docs/."""

from __future__ import annotations

import sys
from pathlib import Path

from llmos.cli.flags import RAW, add_config_args, resolve_config


def add_experiment(sub) -> None:
    s = sub.add_parser("experiment", help="studies that train models to test a claim: "
                       "poisoning, reversal-curse, knowledge-extraction, overoptimization",
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
    p.set_defaults(func=_stoppable(cmd_experiment_poisoning))
    add_reversal_curse(names)
    add_knowledge_extraction(names)
    add_overoptimization(names)


def _stoppable(command):
    """An experiment whose training was interrupted (and saved) ends with a message and exit
    status 130, not a traceback and not a table of half-trained models."""
    def run(args):
        from llmos.experiments.runs import Stopped

        try:
            command(args)
        except Stopped as e:
            print(f"llmos experiment {args.name}: {e}", file=sys.stderr)
            sys.exit(130)
    return run


def _add_seed_out_scale(p, out: str) -> None:
    p.add_argument("--seed", type=int, default=0, help="draws the people and their facts")
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the people, the documents and the training steps by this, "
                        "for a bigger model on a GPU (e.g. --preset gpu-d12 --scale 10)")


def _scaled(n: int, scale: float) -> int:
    if scale <= 0:
        raise ValueError(f"--scale {scale}: give a positive number")
    return max(1, round(n * scale)) if n else 0


def add_reversal_curse(names) -> None:
    p = names.add_parser(
        "reversal-curse", formatter_class=RAW,
        help="teach facts in one order ('A is B'), ask them in both: a model does not learn "
             "'B is A'",
        description="The reversal curse of Berglund et al. (2023) at CPU scale: fictitious "
        "people taught in one order (name -> description, description -> name, both, child -> "
        "mother) in 8 phrasings, asked in 4 held-out phrasings in the trained order and "
        "reversed; exact match and the right answer's rank against 9 wrong ones, with 95% "
        "intervals over people; then, as a control, fresh people with four facts in the "
        "prompt, asked in the order written and reversed (GPT-3 reverses what it reads; "
        "cpu-tiny reads neither order, docs/experiments.md). By default the facts are mixed "
        "into the preset's corpus and a model is pretrained from scratch (about 5 minutes "
        "for cpu-tiny on 2 cores); --base CKPT "
        "continues pretraining a checkpoint on the facts alone. Writes OUT/results.md, "
        "OUT/results.json, OUT/items.jsonl and OUT/reversal.png.")
    add_config_args(p, naming=False)
    p.add_argument("--people", type=int, default=50,
                   help="people in each of the four subsets (default 50)")
    p.add_argument("--rounds", type=int, default=20,
                   help="times every training sentence appears in the corpus (default 20)")
    p.add_argument("--reading", type=int, default=3000,
                   help="reading documents: facts about other people stated and then restated "
                        "in either order, so the model learns to read a fact in its prompt "
                        "(default 3000; 0 = none)")
    p.add_argument("--base", default="", metavar="CKPT",
                   help="continue pretraining this checkpoint on the facts alone instead of "
                        "pretraining from scratch")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: the preset's when pretraining, 600 when "
                        "continuing a --base)")
    _add_seed_out_scale(p, "runs/reversal-curse")
    p.set_defaults(func=_stoppable(cmd_experiment_reversal_curse))


def cmd_experiment_reversal_curse(args):
    from llmos.experiments import reversal_curse

    people = _scaled(args.people, args.scale)
    if people < reversal_curse.WRONG + 1:
        raise ValueError(f"--people must be at least {reversal_curse.WRONG + 1} (each question "
                         f"has {reversal_curse.WRONG} wrong answers from the same subset)")
    if args.rounds < 1 or args.reading < 0 or (args.steps is not None and args.steps < 1):
        raise ValueError("--rounds and --steps must be positive, --reading not negative")
    if args.base and not (Path(args.base) / "model.safetensors").exists():
        raise FileNotFoundError(f"--base {args.base}: not a checkpoint folder")
    cfg = resolve_config(args)
    steps = _scaled(args.steps or (600 if args.base else cfg.train.max_steps), args.scale)
    results = reversal_curse.run(cfg, Path(args.out), people=people,
                                 rounds=args.rounds, reading=_scaled(args.reading, args.scale),
                                 base=args.base, steps=steps, seed=args.seed)
    print((Path(args.out) / "results.md").read_text())
    print(f"experiment reversal-curse: {results['seconds']:.0f}s -> {args.out}/results.md")


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


def add_knowledge_extraction(names) -> None:
    from llmos.experiments.knowledge_extraction import CONDITIONS

    p = names.add_parser(
        "knowledge-extraction", formatter_class=RAW,
        help="memorized is not usable: QA on people known only from biographies, with and "
             "without augmented biographies",
        description="Allen-Zhu & Li (2023, Physics of Language Models 3.1) at CPU scale: "
        "fictitious people with six attributes; pretrain on their biographies (single: one "
        "each; augmented: five each, sentences shuffled, the full name in every sentence; "
        "mixed: one each plus the training half's questions), finetune question answering on "
        "half the people, and ask the same questions about the other half; also inverse "
        "search ('Who was born on ... in ...?'). Exact match with 95% intervals over people. "
        "Three pretrainings and two short finetunings (about 14 minutes for cpu-tiny on 2 "
        "cores). Writes OUT/results.md, OUT/results.json, OUT/items.jsonl and "
        "OUT/extraction.png.")
    add_config_args(p, naming=False)
    p.add_argument("--people", type=int, default=500, help="people (default 500; half are "
                   "the training half)")
    p.add_argument("--steps", type=int, default=None,
                   help="pretraining steps of each condition (default: the preset's)")
    p.add_argument("--qa-steps", type=int, default=300,
                   help="question-answering finetuning steps (default 300; at 150 the "
                        "format was not learned: 39%% on the training half, docs/LOG.md)")
    p.add_argument("--conditions", default=",".join(CONDITIONS),
                   help=f"which pretraining texts, comma-separated (default "
                        f"{','.join(CONDITIONS)})")
    _add_seed_out_scale(p, "runs/knowledge-extraction")
    p.set_defaults(func=_stoppable(cmd_experiment_knowledge_extraction))


def cmd_experiment_knowledge_extraction(args):
    from llmos.experiments import knowledge_extraction as ke

    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    unknown = [c for c in conditions if c not in ke.CONDITIONS]
    if unknown or not conditions:
        raise ValueError(f"--conditions {args.conditions!r}: choose from "
                         f"{', '.join(ke.CONDITIONS)}")
    people = _scaled(args.people, args.scale)
    if people < 2 * (ke.WRONG + 1):
        raise ValueError(f"--people must be at least {2 * (ke.WRONG + 1)}")
    if (args.steps is not None and args.steps < 1) or args.qa_steps < 1:
        raise ValueError("--steps and --qa-steps must be positive")
    cfg = resolve_config(args)
    results = ke.run(cfg, Path(args.out), people=people,
                     steps=_scaled(args.steps or cfg.train.max_steps, args.scale),
                     qa_steps=_scaled(args.qa_steps, args.scale), conditions=conditions,
                     seed=args.seed)
    print((Path(args.out) / "results.md").read_text())
    print(f"experiment knowledge-extraction: {results['seconds']:.0f}s -> "
          f"{args.out}/results.md")


def add_overoptimization(names) -> None:
    p = names.add_parser(
        "overoptimization", formatter_class=RAW,
        help="DPO at several betas: proxy and held-out (gold) rewards against the distance "
             "from SFT",
        description="Reward-model over-optimisation (Gao, Schulman & Hilton 2022) with DPO: "
        "for each beta, DPO from --sft on the preset's comparisons (its [dpo] settings); then "
        "from SFT and from each DPO model, --samples answers to --prompts held-out prompts "
        "(builtin:assistant:heldout, spread over the tasks), each scored by the proxy reward "
        "model (trained on the comparisons DPO fits), by the held-out gold ones and by the "
        "verifier where the task has one, and the distance from SFT: KL(policy || SFT) "
        "estimated from the samples' log-probabilities under both. Means with 95% intervals "
        "over prompts. On cpu-tiny (100 DPO steps) about 2 minutes per beta for DPO and half a "
        "minute per policy for sampling and scoring on 2 cores (docs/comparisons.md). A "
        "finished DPO run and a "
        "finished measurement are reused, an interrupted DPO run resumed. Writes "
        "OUT/overoptimization.json, .md and .png.")
    add_config_args(p, naming=False)
    p.add_argument("--sft", required=True, metavar="CKPT",
                   help="the SFT checkpoint: DPO's start and reference, and the origin point")
    p.add_argument("--proxy", required=True, metavar="REWARD",
                   help="the proxy reward model (`llmos reward` on the comparisons DPO uses); "
                        "also recorded as dpo.judge")
    p.add_argument("--gold", required=True, metavar="REWARD[,REWARD]",
                   help="held-out reward models, comma-separated (trained apart: other runs)")
    p.add_argument("--betas", default="0.03,0.1,0.3,1",
                   help="DPO betas, comma-separated (default 0.03,0.1,0.3,1; smaller moves "
                        "further from SFT)")
    p.add_argument("--prompts", type=int, default=100,
                   help="held-out prompts (default 100: 11 of each of 9 tasks)")
    p.add_argument("--samples", type=int, default=4,
                   help="answers sampled per prompt and policy (default 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="DPO steps of every run (default: the preset's dpo.train.max_steps)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (default 1: the policy's own distribution, "
                        "which the KL estimate needs; both models are scored at this one)")
    p.add_argument("--max-new-tokens", type=int, default=128,
                   help="answer length limit across an answer's tool rounds (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples (the same for "
                   "every policy)")
    p.add_argument("--out", default="runs/overoptimization",
                   help="output folder (default runs/overoptimization)")
    p.set_defaults(func=_stoppable(cmd_experiment_overoptimization))


def cmd_experiment_overoptimization(args):
    from llmos.experiments import overoptimization as oo

    betas = oo.parse_betas(args.betas)
    if args.prompts < 1 or args.samples < 1 or args.max_new_tokens < 1:
        raise ValueError("--prompts, --samples and --max-new-tokens must be positive")
    if (args.steps is not None and args.steps < 1) or args.temperature <= 0:
        raise ValueError("--steps and --temperature must be positive")
    golds = [g.strip() for g in args.gold.split(",") if g.strip()]
    cfg = resolve_config(args)
    results = oo.run(cfg, Path(args.sft), Path(args.proxy), golds, betas, Path(args.out),
                     prompts=args.prompts, samples=args.samples, steps=args.steps,
                     seed=args.seed, temperature=args.temperature,
                     max_new_tokens=args.max_new_tokens)
    print(oo.table(results))
    print(f"experiment overoptimization: {results['seconds']:.0f}s -> "
          f"{args.out}/overoptimization.json, .md, .png")
