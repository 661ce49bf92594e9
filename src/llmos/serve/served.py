"""The served-model table: which checkpoints `llmos serve` answers for, under which names.

    models = load_models(["runs/cpu-tiny/sft", "dpo=runs/cpu-tiny/dpo"])  # {"sft": ..., "dpo": ...}

Each served model has its tokenizer, its batching `Scheduler` (serve/batching.py) and its
context length; the API, the arena and the labeling pages all answer through this table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.serve.batching import Scheduler


@dataclass
class ServedModel:
    name: str
    tok: Any  # tokenizers.Tokenizer
    scheduler: Scheduler
    context: int  # max_seq_len: prompt + answer
    created: int = field(default_factory=lambda: int(time.time()))


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


def load_models(specs: list[str], device: str = "cpu", max_batch: int = 16
                ) -> dict[str, ServedModel]:
    served = {}
    for name, path in model_names(specs).items():
        model = checkpoint.load_model(path, device)
        sched = Scheduler(model, max_batch=max_batch, name=name)
        served[name] = ServedModel(name, tk.load(path), sched, model.cfg.max_seq_len)
    return served


def model_card(m: ServedModel) -> dict:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": "llmos",
            "max_model_len": m.context}
