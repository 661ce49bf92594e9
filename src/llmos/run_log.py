"""A run's log, RUN/metrics.jsonl: one JSON record a line, `{"stage", "step", "tokens", ...}`,
appended by every training stage and read by the loss plots and the report card.

A run killed mid-write leaves a cut last line; readers pass over it.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmos.data.sources import SkipReport, iter_jsonl


def read(path: Path) -> list[dict]:
    """Every whole record of the log, oldest first ([] when there is no log)."""
    path = Path(path)
    if not path.exists():
        return []
    return [r for _, r in iter_jsonl(path, str(path), SkipReport()) if isinstance(r, dict)]


def append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def drop(path: Path, stage: str, after_step: int = -1) -> None:
    """Remove a stage's records past `after_step` (all of them by default): a resumed run writes
    them again, a fresh one replaces them. Cut lines go too."""
    kept = [r for r in read(path) if r.get("stage") != stage or r.get("step", 0) <= after_step]
    if Path(path).exists():
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in kept))
