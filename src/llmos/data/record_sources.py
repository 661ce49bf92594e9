"""Where conversation and comparison records come from: one reader for both kinds.

A *record spec* is a ``.jsonl`` file (one record a line), a ``.json`` file (a list of records,
or one), a folder of such files (walked in sorted order; other files counted as
``unsupported_type``), ``hf:NAME[:CONFIG][@N]`` (a Hugging Face dataset's train split, streamed;
opt-in, needs ``datasets`` and the network) or a ``builtin:`` set made on the spot. A kind of
record is a `RecordKind`: its noun for messages, the forms it accepts, its built-in sets and
the fields that mark its hf: datasets. Each record comes with its place (``file:line``,
``file.json#i``, ``hf:NAME:i``) so that a skipped one can be found and fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmos.data.records import BadConversation, ConversationSkips
from llmos.data.sources import SourceError, hf_records, iter_jsonl, walk_sorted

FILE_SUFFIXES = {".jsonl", ".json"}


@dataclass(frozen=True)
class RecordKind:
    noun: str  # "conversation", "comparison"
    accepted: str  # the accepted forms, told with every error about a spec
    hf_fields: tuple[str, ...]  # a hf: dataset without any of these is refused
    offline: str  # what to use without the network
    # builtin spec -> records (objects with .source and .to_dict())
    builtin: dict[str, Callable[[], list]] = field(default_factory=dict)


def _read_json(path: Path, where: str, skips: ConversationSkips) -> Iterator[tuple[str, object]]:
    """A .json file: a list of records (``file.json#i``) or a single record."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError:
        skips.add("unreadable", where)
        return
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        skips.add("malformed_json", where)
        return
    if isinstance(data, list):
        for i, record in enumerate(data):
            yield f"{where}#{i}", record
    else:
        yield where, data


def _read_file(path: Path, where: str, skips: ConversationSkips):
    if path.suffix.lower() == ".json":
        return _read_json(path, where, skips)
    return iter_jsonl(path, where, skips, bad_json="malformed_json")


def _iter_folder(root: Path, skips: ConversationSkips) -> Iterator[tuple[str, object]]:
    def skip_dir(name: str) -> bool:
        return name.startswith(".") or name == "__pycache__"

    for path in walk_sorted(root, skip_dir):
        if path.suffix.lower() in FILE_SUFFIXES:
            yield from _read_file(path, str(path), skips)
        else:
            skips.add("unsupported_type", str(path))


def _iter_path(spec: str, skips: ConversationSkips, kind: RecordKind):
    # Not a generator, so a missing path fails when the spec is given, not when it is read.
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"{kind.noun} source {spec!r}: no such file or folder. "
                          f"{kind.accepted}")
    if path.is_dir():
        return _iter_folder(path, skips)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise SourceError(f"{kind.noun} source {spec!r}: expected a .jsonl or .json file. "
                          f"{kind.accepted}")
    return _read_file(path, spec, skips)


def _iter_builtin(spec: str, kind: RecordKind):
    if spec not in kind.builtin:
        raise SourceError(f"unknown builtin {kind.noun} source {spec!r}; {kind.accepted}")
    return ((r.source, r.to_dict()) for r in kind.builtin[spec]())


def iter_records(spec: str, skips: ConversationSkips, kind: RecordKind
                 ) -> Iterator[tuple[str, object]]:
    """(place, raw record) from one spec, in a deterministic order; unreadable lines counted."""
    if spec.startswith("builtin:"):
        return _iter_builtin(spec, kind)
    if spec.startswith("hf:"):
        return hf_records(spec, kind.hf_fields, kind.noun, kind.offline)
    if not spec.strip():
        raise SourceError(f"empty {kind.noun} source; {kind.accepted}")
    return _iter_path(spec, skips, kind)


def parse_all(specs: list[str], kind: RecordKind, parse, error: type[Exception]
              ) -> tuple[list, ConversationSkips]:
    """`parse(record, where)` over the records of every spec, in order; a record it rejects with
    BadConversation is skipped and counted. A spec with nothing usable raises `error`. A spec
    may be a path object."""
    skips = ConversationSkips()
    out: list = []
    for spec in map(os.fspath, specs):
        found = 0
        for where, record in iter_records(spec, skips, kind):
            try:
                out.append(parse(record, where))
                found += 1
            except BadConversation as e:
                skips.add(e.reason, where)
        if not found:
            raise error(f"no usable {kind.noun} in {spec!r}; {skips.summary()}")
    return out, skips


def split_specs(specs: list[str], read, builtin: tuple[str, str], key, val_fraction: float
                ) -> tuple[list, list, str]:
    """(train, heldout, skip summary) of the records `read([spec])` gives. The built-in set
    (builtin[0]) keeps its own held-out part (builtin[1]); other sources are split by a hash of
    key(record), so records sharing a key land on one side and the split never changes."""
    train, heldout, skipped = [], [], []
    for spec in specs:
        part, skips = read([spec])
        if spec == builtin[0]:
            train += part
            heldout += read([builtin[1]])[0]
        else:
            for r in part:
                (heldout if split_bucket(key(r)) < val_fraction else train).append(r)
        if skips.total:
            skipped.append(f"{spec}: {skips.summary()}")
    return train, heldout, "; ".join(skipped)


def split_bucket(obj) -> float:
    """A number in [0, 1) fixed by the object's content (its sorted JSON): comparing it with a
    held-out fraction splits records the same way on every run and machine."""
    key = json.dumps(obj, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
