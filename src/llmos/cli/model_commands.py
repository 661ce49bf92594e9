"""Commands that use a checkpoint: generate, chat, serve, import and export."""

from __future__ import annotations

import sys
from pathlib import Path

from llmos.cli.flags import (
    add_backend_flags,
    add_sampling_flags,
    llamacpp_options,
    prefer_spinning,
    sampling_params,
)


def add_generate(sub) -> None:
    s = sub.add_parser("generate", help="sample text from a checkpoint")
    s.add_argument("--model", required=True, help="checkpoint directory (e.g. runs/cpu-tiny/base)")
    s.add_argument("--prompt", action="append",
                   help="prompt text (repeatable: several prompts decode as one batch)")
    add_sampling_flags(s, 128, 0.8, "tokens to generate")
    s.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    s.set_defaults(func=cmd_generate)


def cmd_generate(args):
    from llmos import checkpoint
    from llmos import tokenizer as tk
    from llmos.infer.engine import Engine, TextStream

    model = checkpoint.load_model(args.model)
    tok = tk.load(Path(args.model))
    params = sampling_params(args, top_k=args.top_k, stop_tokens=[tk.eot_id(tok)])
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


def add_chat(sub) -> None:
    s = sub.add_parser("chat", help="talk to a checkpoint in the terminal (tools in the loop)",
                       description="A terminal chat with streaming answers, history and the "
                       "built-in tools (calculator, Python). Inside: /reset, /save [FILE], "
                       "/system TEXT, /quit.")
    s.add_argument("--model", help="checkpoint directory (e.g. runs/cpu-tiny/sft); required "
                   "unless --profile names one")
    s.add_argument("--profile", metavar="NAME|FILE",
                   help="a custom GPT: its instructions, knowledge bases, tools, model and "
                   "sampling (profiles/*.toml, e.g. stdlib-helper, or one stored in --db; "
                   "docs/llm-os.md); flags given here override its model and sampling")
    s.add_argument("--db", metavar="URL",
                   help="the database of the profile's knowledge bases and memories, and of "
                   "stored profiles (default: the profile's)")
    s.add_argument("--user", default="default",
                   help="whose memories a profile with remember/recall uses (default: default)")
    s.add_argument("--system", help="system prompt (after a profile's instructions)")
    s.add_argument("-m", "--message", action="append",
                   help="answer this message and exit (repeatable: a multi-turn script)")
    add_sampling_flags(s, 256, 0.7, "most tokens per answer, tool rounds included")
    s.add_argument("--no-tools", action="store_true", help="run no tools the model calls")
    s.add_argument("--yes", action="store_true",
                   help="run a profile's tools with side effects (remember, browse, ask_model) "
                   "without asking first at the terminal")
    s.add_argument("--summarize", action="store_true",
                   help="when the conversation outgrows the context window, have the model "
                   "summarise the oldest turns (default: leave them out, saying so)")
    s.add_argument("--save", default="chat.jsonl",
                   help="file that /save appends to (default chat.jsonl)")
    s.add_argument("--think", choices=["greedy", "vote", "best-of", "search"],
                   help="answer with a System-2 strategy (docs/system2.md): vote, best-of or "
                   "search over --budget samples (tools are not run then)")
    s.add_argument("--budget", type=int, default=8, metavar="K",
                   help="samples (search: rows per step) of --think (default 8)")
    s.add_argument("--judge", metavar="SPEC",
                   help="best-of and search: verifier (checks worked arithmetic, the default) "
                   "or reward:PATH (a reward model)")
    s.add_argument("--answer-kind", default="number",
                   choices=["number", "choice", "code", "text"],
                   help="what a vote compares: the final number (default), a choice letter, "
                   "the program, or the normalized text")
    add_backend_flags(s)
    s.set_defaults(func=cmd_chat)


CHAT_SAMPLING = {"max_new_tokens": 256, "temperature": 0.7, "top_p": 0.95}  # the flags' defaults


def _chat_profile(args):
    """(model, system prompt, tools, prepare) from --profile; sampling flags left at their
    defaults take the profile's values; a profile with memory tools gets --user's."""
    from pathlib import Path

    from llmos.agent.profile_store import find

    p = find(args.profile, args.db)  # a file, a shipped name, or one stored in --db
    model = args.model or p.model
    if not Path(model).is_dir():
        raise ValueError(f"profile {p.name!r}: model {model!r} not found in {Path.cwd()} "
                         "(train it, e.g. make speedrun, or give --model DIR)")
    for key, value in p.sampling.items():
        attr = "max_new_tokens" if key == "max_tokens" else key
        if getattr(args, attr) == CHAT_SAMPLING[attr]:
            setattr(args, attr, int(value) if attr == "max_new_tokens" else float(value))
    if p.think and not args.think:  # the profile's System-2 setting, unless --think says
        args.think = p.think["strategy"]
        args.budget = p.think.get("n", args.budget)
        args.answer_kind = p.think.get("answer_kind", args.answer_kind)
    tools = {} if args.no_tools else p.build_tools(args.db)
    system = "\n\n".join(x for x in (p.instructions, args.system or "") if x)
    prepare = None
    if p.uses_memory and not args.no_tools:
        store = p.memory_store(args.db)
        tools, _ = p.with_user(tools, [], store, args.user)

        def prepare(messages):  # the user's memories as they are now, every turn
            return p.with_user({}, messages, store, args.user)[1]
    if args.confirm:  # a person at the terminal allows each call with side effects
        from llmos.agent.terminal import ask_at_terminal
        from llmos.agent.tools import with_confirmation

        tools = with_confirmation(tools, ask_at_terminal, set(p.tools))
    return model, system, tools, prepare


def cmd_chat(args):
    prefer_spinning()
    from llmos.agent.terminal import Session, repl

    model, system, tools, prepare = args.model, args.system or "", not args.no_tools, None
    # At an interactive terminal, tools with side effects ask first (-m scripts and --yes do not).
    args.confirm = not args.message and not args.yes and sys.stdin.isatty()
    if args.profile:
        model, system, tools, prepare = _chat_profile(args)
    thinking = None
    if args.think:
        from llmos.envs.verifiers import judge_working
        from llmos.infer.think import Think, parse_judge

        p = sampling_params(args)
        thinking = Think(args.think, args.budget, args.answer_kind, p.temperature or 0.8,
                         max_new_tokens=p.max_new_tokens, top_p=p.top_p, seed=p.seed,
                         judge=parse_judge(args.judge) or judge_working)
    if not model:
        raise ValueError("give --model DIR, or a --profile that names a model")
    session = Session(model, system, sampling_params(args), tools=tools, thinking=thinking,
                      summarize=args.summarize, prepare=prepare,
                      llamacpp=llamacpp_options(args))
    if args.message:  # one-shot: answer each message in turn, then exit
        for text in args.message:
            print(f"you> {text}\nassistant> ", end="", flush=True)
            session.ask(text)
        return
    repl(session, args.save)


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible API and web chat over checkpoints",
                       description="Serve checkpoints over HTTP: /v1/chat/completions (streaming, "
                       "tools), /v1/completions, /v1/models, /health, and a web chat at /. "
                       "Concurrent requests to a model decode together in one batch.")
    s.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR",
                   help="checkpoint to serve (repeatable); its name in the API is the folder's "
                   "name (with parent folders when two would clash) unless given as NAME=DIR")
    s.add_argument("--profile", action="append", default=[], metavar="NAME|FILE",
                   help="a custom GPT to serve as a model of its own name (repeatable): its "
                   "instructions, knowledge bases and tools around its checkpoint "
                   "(profiles/*.toml, e.g. stdlib-helper; docs/llm-os.md)")
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
                   help="database for the arena pages at /arena, the labeling pages at /label "
                   "and the profile editor at /profiles, whose stored profiles are served too "
                   "(a SQLite path or postgresql://...; without it there are none of these), "
                   "and of the profiles' knowledge bases (default: each profile's own)")
    s.add_argument("--arena-contestant", action="append", metavar="SPEC",
                   help="another arena contestant besides the served models (repeatable): "
                   "NAME=openai:BASE_URL#MODEL[;key=ENV] or [NAME=]DIR")
    s.add_argument("--guard", nargs="?", const="default", metavar="POLICY",
                   help="check every chat answer with the output guard before it is sent: "
                   "Markdown images from hosts the policy does not allow are removed, an answer "
                   "that repeats the system prompt or does what the policy forbids (also "
                   "encoded) is withheld; streamed answers then arrive whole. POLICY: a .toml "
                   "file or a shipped policy (default: default; docs/security.md)")
    add_backend_flags(s)
    s.set_defaults(func=cmd_serve)


def cmd_serve(args):
    prefer_spinning()
    from llmos.serve.app import serve

    serve(args.model, host=args.host, port=args.port, api_keys=args.api_key,
          max_tokens=args.max_tokens_limit, max_batch=args.max_batch, device=args.device,
          tools=not args.no_tools, database=args.db, arena_contestants=args.arena_contestant,
          profiles=args.profile, guard=args.guard, llamacpp=llamacpp_options(args, spare=1))


def add_import(sub) -> None:
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
    a = formats.add_parser("peft", help="a LoRA adapter (PEFT's or llmos's) merged into its base",
                           description="Fold a LoRA adapter folder (PEFT's adapter_config.json + "
                           "adapter_model.safetensors, e.g. trained with peft, or an llmos "
                           "run's adapter/) into the base checkpoint's weights and write a "
                           "checkpoint that chat, serve, eval and export use. docs/interop.md.")
    a.add_argument("src", metavar="ADAPTER_DIR", help="the adapter folder")
    a.add_argument("--base", help="the base checkpoint (default: the folder the adapter names as "
                   "base_model_name_or_path, when it is one here)")
    a.add_argument("--out", help="output checkpoint (default runs/imported/<ADAPTER_DIR's name>)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    a.set_defaults(func=cmd_import_peft)


def cmd_import_peft(args):
    from llmos.train.lora import merged_checkpoint

    out = args.out or str(Path("runs") / "imported" / Path(args.src).resolve().name)
    out = merged_checkpoint(args.src, args.base, out, overwrite=args.overwrite)
    print(f"merged {args.src} into its base -> {out} (chat: llmos chat --model {out})")


def cmd_import(args):
    from llmos.export.hf_import import import_hf

    out = import_hf(args.src, args.out, overwrite=args.overwrite)
    print(f"imported {args.src} -> {out} (chat: llmos chat --model {out})")


def add_export(sub) -> None:
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
