"""Flags several commands share: the run configuration, a stage's parent and output, sampling."""

from __future__ import annotations

import argparse

from llmos import config as config_

RAW = argparse.RawDescriptionHelpFormatter
CONFIG_HELP = """Settings come from a preset (configs/*.toml), then --set overrides, e.g.
  --set train.lr=1e-3 --set model.n_layers=6 --set data.sources=docs/,notes.md
Sections: model, data, train (see `llmos config` for every key and its value)."""


def add_config_args(p: argparse.ArgumentParser, default_preset: str | None = "cpu-tiny",
                    naming: bool = True):
    """--preset, --set and --source; with `naming`, --name and --runs-dir too (a command that
    names its own runs leaves them out)."""
    g = p.add_argument_group("run configuration")
    g.add_argument("--preset", default=default_preset,
                   help=f"preset name or path to a TOML file (default {default_preset}); "
                        f"available: {', '.join(config_.list_presets())}")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. train.max_steps=200 (repeatable)")
    if naming:
        g.add_argument("--name", help="run name: outputs go to RUNS_DIR/NAME (default: the "
                       "preset's)")
        g.add_argument("--runs-dir", help="where runs live (default runs/)")
    g.add_argument("--source", action="append", default=[], metavar="SPEC",
                   help="a corpus source, replacing the preset's (repeatable): builtin:stdlib, "
                        "a file or folder (.txt .md .rst .py .jsonl .parquet), or hf:NAME[:CONFIG]")


def resolve_config(args) -> config_.RunConfig:
    cfg = config_.load_config(args.preset, args.overrides)
    if getattr(args, "name", None):
        cfg.name = args.name
    if getattr(args, "runs_dir", None):
        cfg.runs_dir = args.runs_dir
    if args.source:
        cfg.data.sources = list(args.source)
    return cfg


# ---- a training stage after pretraining: a parent checkpoint in, a checkpoint out ------------


def stage_parser(sub, name: str, help: str, description: str, parent: str
                 ) -> argparse.ArgumentParser:
    """The parser of a stage command: its description, the run configuration and --model (the
    parent checkpoint; `parent` says which by default)."""
    s = sub.add_parser(name, help=help, description=description + "\n\n" + CONFIG_HELP,
                       formatter_class=RAW)
    add_config_args(s)
    s.add_argument("--model", help=parent)
    return s


def add_output_flags(s: argparse.ArgumentParser, out: str) -> None:
    """--out (what `out` says is the default), --resume and --overwrite."""
    s.add_argument("--out", help=f"output checkpoint (default {out})")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run")
    s.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")


def run_stage(module, cfg, args, parent: str):
    """module.run on --model (else RUNS_DIR/NAME/`parent`) into --out."""
    parent_dir = args.model or str(cfg.run_dir / parent)
    return module.run(cfg, parent_dir, args.out, resume=args.resume, overwrite=args.overwrite)


# ---- sampling -------------------------------------------------------------------------------


def add_sampling_flags(s: argparse.ArgumentParser, max_new_tokens: int, temperature: float,
                       tokens: str) -> None:
    """-n (`tokens` says what counts), -t, --top-p and --seed."""
    s.add_argument("-n", "--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"{tokens} (default {max_new_tokens})")
    s.add_argument("-t", "--temperature", type=float, default=temperature,
                   help=f"sampling temperature; 0 = greedy (default {temperature})")
    s.add_argument("--top-p", type=float, default=0.95,
                   help="nucleus sampling: keep the smallest set with this much mass (1 = off; "
                   "default 0.95)")
    s.add_argument("--seed", type=int, help="random seed for reproducible samples")


def sampling_params(args, **extra):
    from llmos.infer.engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, seed=args.seed, **extra)


# ---- which engine decodes: the native one, or llama.cpp ---------------------------------------


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    """--backend, --gguf-type and --threads (serve, chat)."""
    p.add_argument("--backend", choices=["native", "llamacpp"], default="native",
                   help="what decodes: llmos's engine (default; batches concurrent requests) or "
                   "llama.cpp (fastest single-stream CPU decoding; the checkpoint is exported to "
                   "CKPT/gguf/ on first use and again when it changes; needs pip install "
                   "'llmos[llamacpp]'; docs/serving.md; on the CPU, one request at a time: "
                   "--device and --max-batch are the engine's)")
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], default="f16",
                   help="--backend llamacpp: the weights' type in the GGUF (default f16; f32 "
                   "decodes the engine's greedy tokens exactly)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="--backend llamacpp: llama.cpp's threads (default: as many as torch "
                   "uses; llmos serve: one fewer, left to the server)")


def llamacpp_options(args, spare: int = 0):
    """The llama.cpp options the flags ask for, or None for the native engine; `spare` cores
    are left to the caller's own Python unless --threads says otherwise."""
    if args.backend != "llamacpp":
        for flag, value, default in (("--gguf-type", args.gguf_type, "f16"),
                                     ("--threads", args.threads, None)):
            if value != default:
                raise ValueError(f"{flag} is for --backend llamacpp")
        return None
    if getattr(args, "device", "auto") not in ("auto", "cpu"):
        raise ValueError(f"--backend llamacpp decodes on the CPU; --device {args.device} is for "
                         "the native engine")
    from llmos.infer.llamacpp import LlamaCppOptions, llama_cpp_module

    llama_cpp_module()  # a missing extra is said before anything loads
    return LlamaCppOptions(args.gguf_type, args.threads, spare)


def prefer_spinning() -> None:
    """For `llmos serve` and `llmos chat`, before torch loads. GNU OpenMP (torch's, which
    llama.cpp shares in this process) sleeps almost at once between parallel steps when it
    counts more of its threads than cores, and it counts a team for each thread that starts
    parallel work: a server's decoding thread beside the main thread's. Spinning a little first,
    as it does when not oversubscribed, made llama.cpp behind `llmos serve` 4.8x faster and the
    served engine 1.26x (2 cores; docs/serving.md). Only where one process decodes: several
    training processes sharing the cores would spin against each other. A user's own setting
    wins, and once torch is loaded it changes nothing."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", "300000")
