"""The served-model table: which checkpoints `llmos serve` answers for, under which names.

    models = load_models(["runs/cpu-tiny/sft", "dpo=runs/cpu-tiny/dpo"])  # {"sft": ..., "dpo": ...}

Each served model has its tokenizer, its batching `Scheduler` (infer/batching.py; or llama.cpp
with `--backend llamacpp`, infer/llamacpp.py) and its context length; the API, the arena and
the labeling pages all answer through this table.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.infer.batching import Scheduler
from llmos.infer.llamacpp import LlamaCppDecoder, LlamaCppOptions


@dataclass
class ServedModel:
    name: str
    tok: Any  # tokenizers.Tokenizer
    scheduler: Scheduler  # or infer/llamacpp.py's LlamaCppDecoder: the same interface
    context: int  # max_seq_len: prompt + answer
    created: int = field(default_factory=lambda: int(time.time()))
    profile: Any = None  # a custom GPT (agent/profiles.py) answering through this model
    tools: dict | None = None  # the profile's tools, built; None: the server's built-in ones
    memory: Any = None  # the profile's MemoryStore (agent/memory.py) when it grants memory tools


def model_names(specs: list[str]) -> dict[str, Path]:
    """`DIR` or `NAME=DIR` -> {name: dir}. A bare folder is named after itself ("sft"), with
    as many parent folders as it takes to tell it apart from the others ("runA/sft")."""
    named: dict[str, Path] = {}
    bare: list[Path] = []
    for spec in specs:
        name, eq, path = spec.partition("=")
        if eq and name and not Path(spec).exists():
            if name in named:
                raise ValueError(f"two models are named {name!r}")
            named[name] = Path(path)
        else:
            bare.append(Path(spec))
    parts = [p.resolve().parts for p in bare]
    if len(set(parts)) < len(parts):
        raise ValueError("a checkpoint is listed twice; give the copies names with NAME=DIR")
    for depth in range(1, max(map(len, parts), default=0) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        for i, name in enumerate(names):
            if bare[i] is not None and names.count(name) == 1 and name not in named:
                named[name], bare[i] = bare[i], None
    return named


def open_checkpoint(path: str | Path, name: str, device: str = "cpu", max_batch: int = 16,
                    llamacpp: LlamaCppOptions | None = None) -> ServedModel:
    """A checkpoint ready to answer: on the native engine's batching scheduler, or, with
    `llamacpp` options, decoded by llama.cpp from a GGUF made next to it (infer/llamacpp.py)."""
    path = Path(path)
    if llamacpp is not None:
        sched = LlamaCppDecoder(path, llamacpp, name=name)
        return ServedModel(name, tk.load(path), sched, sched.context)
    model = load_off_main(path, device)
    sched = Scheduler(model, max_batch=max_batch, name=name)
    sched.path = path.resolve()  # a profile of the same folder shares it
    return ServedModel(name, tk.load(path), sched, model.cfg.max_seq_len)


def load_off_main(path: Path, device: str):
    """checkpoint.load_model on a thread of its own. GNU OpenMP keeps a team of threads for each
    thread that runs parallel work; once the main thread has one (loading a checkpoint copies
    tensors in parallel), the scheduler thread's team is oversubscribed and a decoding step of
    the cpu-tiny shape at 8 rows took 3.0 ms instead of 1.4 (2 cores; docs/serving.md). A
    thread's team goes when the thread ends, so loading elsewhere leaves the main thread
    without one."""
    with ThreadPoolExecutor(1) as pool:  # its thread ends with the block; errors re-raise here
        return pool.submit(checkpoint.load_model, path, device).result()


def load_models(specs: list[str], device: str = "cpu", max_batch: int = 16,
                llamacpp: LlamaCppOptions | None = None) -> dict[str, ServedModel]:
    return {name: open_checkpoint(path, name, device, max_batch, llamacpp)
            for name, path in model_names(specs).items()}


def add_profiles(served: dict[str, ServedModel], specs: list, device: str = "cpu",
                 max_batch: int = 16, database: str | None = None,
                 llamacpp: LlamaCppOptions | None = None) -> None:
    """Serve each profile (agent/profiles.py: a file, a shipped name or a Profile) as a model
    of its own name. Its checkpoint is
    shared with a served model of the same folder, else loaded once for it."""
    from llmos.agent import profiles

    by_path = {}  # one copy of a checkpoint, whoever serves it
    for m in served.values():
        if getattr(m.scheduler, "path", None):
            by_path.setdefault(m.scheduler.path, m)
    for spec in specs:
        p = spec if isinstance(spec, profiles.Profile) else profiles.load(spec)
        if p.name in served:
            raise ValueError(f"profile {p.name!r} has the name of a model already served")
        path = Path(p.model).resolve()
        if not path.is_dir():
            where = "" if Path(p.model).is_absolute() else f" (from {Path.cwd()})"
            raise ValueError(f"profile {p.name!r}: model {p.model!r} not found{where}")
        # its tools first: a profile that cannot have them loads no checkpoint for nothing
        tools = p.build_tools(database)
        memory = p.memory_store(database) if p.uses_memory else None
        base = by_path.get(path)
        if base is None:
            base = open_checkpoint(path, p.name, device, max_batch, llamacpp)
            by_path[path] = base
        served[p.name] = ServedModel(p.name, base.tok, base.scheduler, base.context,
                                     profile=p, tools=tools, memory=memory)


def schedulers(served: dict[str, ServedModel]) -> list[Scheduler]:
    """Each scheduler once (profiles share their checkpoint's)."""
    return list({id(m.scheduler): m.scheduler for m in served.values()}.values())


def model_card(m: ServedModel) -> dict:
    card = {"id": m.name, "object": "model", "created": m.created, "owned_by": "llmos",
            "max_model_len": m.context}
    if m.profile is not None:
        card["llmos_profile"] = {"description": m.profile.description,
                                 "knowledge": m.profile.knowledge, "tools": m.profile.tools}
    return card
