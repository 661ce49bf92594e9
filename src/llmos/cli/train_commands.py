"""Commands that make checkpoints: config, data, tokenizer, pretrain, the post-training stages
(sft, rl, reward, dpo) and the speedrun over all of them."""

from __future__ import annotations

import json
from pathlib import Path

from llmos import config as config_
from llmos.cli.flags import (
    CONFIG_HELP,
    RAW,
    add_config_args,
    add_output_flags,
    resolve_config,
    run_stage,
    stage_parser,
)


def add_config(sub) -> None:
    s = sub.add_parser("config", help="print the resolved run configuration",
                       description=CONFIG_HELP, formatter_class=RAW)
    add_config_args(s)
    s.set_defaults(func=cmd_config)


def cmd_config(args):
    print(config_.dumps(resolve_config(args)))


def add_data(sub) -> None:
    s = sub.add_parser("data", help="corpus -> tokenizer -> token shards; `data scan` for poison",
                       description="Read the corpus sources, train a BPE tokenizer (or use "
                       "data.tokenizer), and write token shards + manifest.json. Re-running with "
                       "the same inputs reuses the shards.\n\n`llmos data scan SOURCES --out "
                       "REPORT.json` looks for poisoned documents first; `llmos data --exclude "
                       "REPORT.json` then leaves the flagged ones out.\n\n" + CONFIG_HELP,
                       formatter_class=RAW)
    add_config_args(s)
    s.add_argument("--out", help="output folder (default RUNS_DIR/NAME/data)")
    s.add_argument("--exclude", metavar="FILE",
                   help="leave out the documents a scan report flagged, or those a text file "
                        "lists (one source per line); sets data.exclude")
    s.set_defaults(func=cmd_data)
    verbs = s.add_subparsers(dest="verb", metavar="[scan]")
    scan = verbs.add_parser(
        "scan", help="flag documents that look poisoned (backdoor triggers, near-duplicates, "
        "perplexity outliers)", formatter_class=RAW,
        description="Flag suspicious documents before pretraining, with no trigger known in "
        "advance: n-grams after which the text turns abnormal in document after document, "
        "clusters of near-duplicates, and (with --reference) documents a checkpoint finds far "
        "harder to predict than the rest. Writes a JSON report whose flagged list `llmos data "
        "--exclude` accepts. docs/security.md has the measured detection and false-alarm rates.")
    scan.add_argument("sources", nargs="+", metavar="SOURCE",
                      help="corpus sources, as in data.sources: builtin:stdlib, a file or folder, "
                           "hf:NAME")
    scan.add_argument("--out", required=True, help="the report (JSON)")
    scan.add_argument("--reference", metavar="CHECKPOINT",
                      help="also flag perplexity outliers under this checkpoint (slow on CPU: "
                           "about 2 minutes for the stdlib under cpu-tiny)")
    scan.add_argument("--z", type=float, default=None,
                      help="with --reference: robust standard deviations above the median that "
                           "make an outlier (default 8)")
    scan.add_argument("--min-docs", type=int, default=None,
                      help="documents a trigger must be seen in (default 3)")
    scan.add_argument("--dup-cluster", type=int, default=None,
                      help="flag near-duplicate clusters of at least this many documents "
                           "(default 10)")
    scan.set_defaults(func=cmd_data_scan)


def cmd_data(args):
    from llmos.data.prepare import prepare

    cfg = resolve_config(args)
    if args.exclude:
        cfg.data.exclude = args.exclude
    out = Path(args.out) if args.out else cfg.run_dir / "data"
    prepare(cfg.data, out)


def cmd_data_scan(args):
    from llmos.data.sources import load_corpus
    from llmos.safety import scan

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the report file (e.g. {out}/scan.json)")
    settings = scan.ScanSettings()
    for key in ("min_docs", "dup_cluster"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    reference = None
    if args.reference:
        from llmos.safety.perplexity_scan import Reference

        reference = Reference(args.reference, **({"z_threshold": args.z} if args.z else {}))
    docs, skipped = load_corpus(args.sources)
    report = scan.scan(docs, settings, reference)
    report["skipped"] = skipped.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"data scan: {scan.summary(report)} -> {out}")


def add_tokenizer(sub) -> None:
    s = sub.add_parser("tokenizer", help="train a BPE tokenizer, or show how one splits text")
    s.add_argument("--source", action="append", default=[], metavar="SPEC",
                   help="corpus source (repeatable; default builtin:stdlib)")
    s.add_argument("--vocab-size", type=int, default=4096,
                   help="vocabulary size, special tokens included (default 4096)")
    s.add_argument("--val-fraction", type=float, default=0.02,
                   help="share of documents held out from training, as `llmos data` does")
    s.add_argument("--out", default="tokenizer", help="output folder (default ./tokenizer)")
    s.add_argument("--show", metavar="TEXT", help="instead of training, print TEXT's tokens")
    s.add_argument("--tokenizer", default="tokenizer",
                   help="with --show: a tokenizer.json or a folder holding one")
    s.set_defaults(func=cmd_tokenizer)


def cmd_tokenizer(args):
    from llmos import tokenizer as tk

    if args.show:
        tok = tk.load(args.tokenizer)
        enc = tok.encode(args.show, add_special_tokens=False)
        print(f"{len(enc.ids)} tokens for {len(args.show.encode())} bytes")
        print(" ".join(f"{t!r}:{i}" for t, i in zip(enc.tokens, enc.ids)))
        return
    from llmos.data.prepare import split_documents
    from llmos.data.sources import load_corpus

    docs, report = load_corpus(args.source or ["builtin:stdlib"])
    train, _ = split_documents(docs, args.val_fraction)
    tok = tk.train_bpe((d.text for d in train), args.vocab_size)
    tk.save(tok, args.out, max_len=1 << 30)
    print(f"trained a {tok.get_vocab_size():,}-token tokenizer on {len(train):,} documents "
          f"({report.summary()}) -> {args.out}/tokenizer.json")


def add_pretrain(sub) -> None:
    s = sub.add_parser("pretrain", help="train a base model on token shards",
                       description="Pretrain a transformer on the run's token shards (prepared "
                       "first if missing). Ctrl-C saves a checkpoint; --resume continues it "
                       "exactly. For several processes: torchrun --nproc_per_node N -m llmos "
                       "pretrain ...\n\n" + CONFIG_HELP, formatter_class=RAW)
    add_config_args(s)
    s.add_argument("--resume", action="store_true",
                   help="continue from RUNS_DIR/NAME/base/trainer_state")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint in RUNS_DIR/NAME/base")
    s.add_argument("--init", metavar="CKPT",
                   help="continued pretraining: start from this checkpoint's weights (its model "
                        "shape and tokenizer) on the run's data (= --set train.init_from=CKPT)")
    s.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args):
    from llmos.train import pretrain

    cfg = resolve_config(args)
    if args.init:
        cfg.train.init_from = args.init
    try:
        pretrain.run(cfg, resume=args.resume, overwrite=args.overwrite)
    except pretrain.AlreadyTrained as e:
        print(e)


def add_sft(sub) -> None:
    s = stage_parser(sub, "sft", "finetune a checkpoint on conversations (full or LoRA)",
                     "Supervised finetuning: render conversations in the chat format, pack them, "
                     "train on the assistant tokens only, then report held-out loss and task "
                     "accuracy. Settings live in the sft section (sft.sources, sft.lora_rank, "
                     "sft.train.max_steps, ...).", "parent checkpoint (default RUNS_DIR/NAME/base)")
    s.add_argument("--data", action="append", metavar="SPEC",
                   help="conversations: a .jsonl file or folder ({'messages': [...]} or "
                   "ShareGPT), builtin:assistant, or hf:NAME (repeatable; default "
                   "builtin:assistant)")
    s.add_argument("--lora-rank", type=int, metavar="R",
                   help="train rank-R LoRA adapters on the frozen model instead of every weight")
    add_output_flags(s, "RUNS_DIR/NAME/sft, or sft-lora")
    s.set_defaults(func=cmd_sft)


def cmd_sft(args):
    from llmos.train import sft

    cfg = resolve_config(args)
    if args.data:
        cfg.sft.sources = args.data
    if args.lora_rank is not None:
        cfg.sft.lora_rank = args.lora_rank
    run_stage(sft, cfg, args, "base")


def add_rl(sub) -> None:
    s = stage_parser(sub, "rl", "online RL on prompts with a verifier or a reward model",
                     "Online reinforcement learning: sample a group of answers per prompt, score "
                     "them (exact arithmetic, unit tests in the sandbox, or a reward model), and "
                     "take clipped policy-gradient steps on group-normalized advantages (GRPO), "
                     "optionally with a KL penalty to the starting model. Logs reward, accuracy, "
                     "KL and answer length per step and plots held-out accuracy to "
                     "RUNS_DIR/NAME/rl.png. Settings live in the rl section (rl.group_size, "
                     "rl.prompts_per_step, rl.kl_coef, rl.train.max_steps, ...).",
                     "starting checkpoint (default RUNS_DIR/NAME/sft)")
    s.add_argument("--prompts", action="append", metavar="SPEC",
                   help="builtin:arithmetic (no calculator), builtin:mental (its one-digit sums "
                   "again), builtin:signature, builtin:identity, or a .jsonl "
                   "file of {'prompt': ..., 'answer': ...} or {'prompt': ..., 'tests': ...} "
                   "(repeatable; default: the preset's rl.prompts, cpu-tiny's "
                   "builtin:arithmetic and builtin:mental)")
    s.add_argument("--reward-model", metavar="DIR",
                   help="score answers with this `llmos reward` checkpoint instead of a verifier")
    add_output_flags(s, "RUNS_DIR/NAME/rl")
    s.set_defaults(func=cmd_rl)


def cmd_rl(args):
    from llmos.train import rl

    cfg = resolve_config(args)
    if args.prompts:
        cfg.rl.prompts = args.prompts
    if args.reward_model:
        cfg.rl.reward_model = args.reward_model
    run_stage(rl, cfg, args, "sft")


def add_improve(sub) -> None:
    s = sub.add_parser("improve", help="self-improvement: sample, keep what a verifier accepts, "
                       "finetune, repeat", description="Expert iteration (STaR) on an "
                       "environment with a verifier: each round samples --samples answers to "
                       "--problems training problems, keeps the verified ones (rationalizing "
                       "unsolved problems with the answer as a hint), finetunes on them mixed "
                       "with replayed SFT conversations, and evaluates the held-out problems "
                       "(greedy, pass@1, pass@k) and every held-out assistant task. Writes "
                       "OUT/round-R checkpoints and OUT/rounds.jsonl; run it again to go on "
                       "after a stop. docs/system2.md.")
    s.add_argument("--model", required=True, help="starting checkpoint (e.g. runs/cpu-tiny/sft)")
    s.add_argument("--env", default="arithmetic", choices=["arithmetic", "countdown"],
                   help="the environment: arithmetic (two-digit sums without the calculator) "
                   "or countdown (make a target from 3 numbers; its held-out puzzles are "
                   "`llmos eval --tasks countdown`'s)")
    s.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    s.add_argument("--out", required=True, help="output directory (e.g. runs/improve)")
    s.add_argument("--samples", type=int, default=8, help="answers per problem (default 8)")
    s.add_argument("--problems", type=int, default=800, help="problems per round (default 800)")
    s.add_argument("--steps", type=int, default=120,
                   help="finetuning steps per round (default 120)")
    s.add_argument("--epochs", type=float, default=0.0,
                   help="instead of --steps: this many passes over each round's data, so the "
                   "steps follow what the round kept (default 0: off)")
    s.add_argument("--lr", type=float, default=3e-4,
                   help="finetuning learning rate per round (default 3e-4, a tenth of SFT's)")
    s.add_argument("--replay", type=float, default=4.0,
                   help="SFT conversations replayed per kept answer (default 4; 0 = none)")
    s.add_argument("--heldout", type=int, default=200,
                   help="held-out problems sampled --samples times per round, for pass@1 and "
                   "pass@k (default 200)")
    s.add_argument("--greedy-heldout", type=int, default=0,
                   help="held-out problems answered greedily per round, the change from round "
                   "0 paired on them (default 0: every one, 1,195 for arithmetic)")
    s.add_argument("--demos", type=int, default=0,
                   help="add N solver-written answers to round 1, for a model that has never "
                   "seen the environment's format (default 0)")
    s.add_argument("--seed", type=int, default=0)
    add_config_args(s, naming=False)
    s.set_defaults(func=cmd_improve)


def cmd_improve(args):
    from llmos.train import improve

    opts = improve.ImproveOptions(env=args.env, rounds=args.rounds, samples=args.samples,
                                  problems=args.problems, steps=args.steps,
                                  epochs=args.epochs, lr=args.lr,
                                  replay=args.replay, demos=args.demos,
                                  heldout=args.heldout, greedy_heldout=args.greedy_heldout,
                                  seed=args.seed)
    improve.run(resolve_config(args), args.model, args.out, opts)


def add_reward(sub) -> None:
    s = stage_parser(sub, "reward", "train a reward model on comparisons (Bradley-Terry)",
                     "Reward modelling: the SFT model with a scalar head on the last token, "
                     "trained so that r(chosen) > r(rejected) (Bradley-Terry loss); reports "
                     "held-out pairwise accuracy and the reward-margin distribution "
                     "(OUT/reward_eval.json, OUT/margins.png). The checkpoint loads in "
                     "transformers as LlamaForSequenceClassification. Settings live in the "
                     "reward section (reward.sources, reward.train.max_steps, reward.train.lr, "
                     "...).", "SFT checkpoint to start from (default RUNS_DIR/NAME/sft)")
    s.add_argument("--data", action="append", metavar="SPEC",
                   help="comparisons: a .jsonl file or folder ({'prompt', 'chosen', "
                   "'rejected'}), builtin:comparisons, or hf:NAME (repeatable; default "
                   "builtin:comparisons)")
    add_output_flags(s, "RUNS_DIR/NAME/reward")
    s.set_defaults(func=cmd_reward)


def cmd_reward(args):
    from llmos.train import reward

    cfg = resolve_config(args)
    if args.data:
        cfg.reward.sources = args.data
    run_stage(reward, cfg, args, "sft")


def add_dpo(sub) -> None:
    s = stage_parser(sub, "dpo", "tune a checkpoint on comparisons with DPO",
                     "Direct Preference Optimization from an SFT checkpoint against itself "
                     "frozen as the reference (its log-probabilities computed once): raises the "
                     "chosen answers' likelihood relative to the rejected ones, on the answer "
                     "tokens only. Logs the implicit rewards, margins and accuracy to "
                     "metrics.jsonl. With --eval-items N it then answers N held-out questions "
                     "with the tuned model and its parent and reports the win rate and task "
                     "accuracy side by side. Settings live in the dpo section (dpo.beta, "
                     "dpo.loss, dpo.train.max_steps, ...).",
                     "SFT checkpoint to tune (default RUNS_DIR/NAME/sft)")
    s.add_argument("--data", action="append", metavar="SPEC",
                   help="comparisons, as for `llmos reward` (default builtin:comparisons)")
    s.add_argument("--beta", type=float,
                   help="strength of the pull toward the reference (dpo.beta, default 0.1)")
    s.add_argument("--loss", choices=["sigmoid", "robust", "ipo", "hinge"],
                   help="sigmoid = DPO, robust = label-smoothed DPO (dpo.label_smoothing), "
                   "ipo = IPO, hinge = SLiC (default sigmoid)")
    s.add_argument("--eval-items", type=int, metavar="N",
                   help="held-out questions for the comparison with the parent (0 = skip)")
    s.add_argument("--judge", metavar="DIR",
                   help="an `llmos reward` checkpoint that decides pairs the verifier cannot")
    add_output_flags(s, "RUNS_DIR/NAME/dpo")
    s.set_defaults(func=cmd_dpo)


def cmd_dpo(args):
    from llmos.train import dpo

    cfg = resolve_config(args)
    if args.data:
        cfg.dpo.sources = args.data
    for key in ("beta", "loss", "judge", "eval_items"):
        if getattr(args, key) is not None:
            setattr(cfg.dpo, key, getattr(args, key))
    run_stage(dpo, cfg, args, "sft")


def add_speedrun(sub) -> None:
    s = sub.add_parser("speedrun", help="the whole pipeline on a preset, ending in a report card",
                       description="data -> tokenizer -> shards -> pretrain -> samples -> SFT "
                       "-> held-out evaluation -> sample conversations -> reward model -> DPO "
                       "-> llmos eval of base, SFT and DPO -> arena -> report card (RUN/"
                       "report.html). Picks up where it stopped when run again.\n\n"
                       + CONFIG_HELP,
                       formatter_class=RAW)
    add_config_args(s)
    s.set_defaults(func=cmd_speedrun)


def cmd_speedrun(args):
    from llmos import speedrun

    speedrun.run(resolve_config(args))
