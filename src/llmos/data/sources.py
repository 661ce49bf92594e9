"""Corpus sources -> documents.

A *source spec* is one string naming where text comes from:

- ``builtin:stdlib`` - the running Python's standard library ``.py`` files (no test packages).
  It ships with every Python, so a run works offline with no downloads.
- a local file or folder (folders are walked recursively in sorted order): ``.txt .md .rst .py``
  files are whole documents, ``.jsonl`` gives one document per line (``text`` field) and
  ``.parquet`` one per row (``text`` column, needs pyarrow).
- ``hf:NAME[:CONFIG][@N]`` - a Hugging Face dataset, streamed (needs ``datasets`` and network);
  ``@N`` stops after N documents.

Nothing is silently lost: every file or record that is not used is counted in a `SkipReport`
under a reason, with the first few places it happened, and the report goes into the data
manifest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py"}
RECORD_SUFFIXES = {".jsonl", ".parquet"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | RECORD_SUFFIXES

# A NUL byte this early almost always means a binary file that happens to decode as UTF-8.
BINARY_SNIFF_BYTES = 8192
MAX_EXAMPLES = 10

# Stdlib folders that hold tests or third-party code rather than library source.
STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

ACCEPTED_FORMS = (
    "accepted source forms: 'builtin:stdlib', a path to a file or folder "
    "(.txt .md .rst .py .jsonl .parquet), or 'hf:NAME[:CONFIG][@N]'"
)


class SourceError(ValueError):
    """A source spec that cannot be used: bad form, missing path, missing library, no network."""


class CorpusError(ValueError):
    """The sources together gave no usable text."""


@dataclass
class Document:
    text: str
    source: str  # e.g. "builtin:stdlib:json/decoder.py", a file path, "f.jsonl:12", "hf:NAME"


@dataclass
class SkipReport:
    """Everything skipped, by reason, so a user can see what was left out and why.

    Reasons: binary, undecodable, empty, unreadable, broken_symlink, unsupported_type,
    duplicate, excluded (named by an exclude list), truncated (document cut to max_doc_chars),
    bad_record (a JSONL line that is not
    a JSON object with a string ``text`` field, or a null parquet/hf value).
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line for logs, e.g. 'binary=2, empty=1' (or 'nothing skipped')."""
        if not self.counts:
            return "nothing skipped"
        return ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts.items()))

    def to_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }


# --- reading single files -------------------------------------------------------------------


def decode_text(data: bytes, where: str, report: SkipReport) -> str | None:
    """Bytes -> text, or None after counting why the bytes are not usable text."""
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        report.add("binary", where)
        return None
    try:
        # utf-8-sig drops a leading byte-order mark, which editors on Windows like to add.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        report.add("undecodable", where)
        return None
    if not text.strip():
        report.add("empty", where)
        return None
    return text


def _is_regular_file(path: Path) -> bool:
    """True for a regular file (following symlinks); FIFOs and devices would block or never end."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _read_text_file(path: Path, where: str, report: SkipReport) -> Iterator[Document]:
    if not _is_regular_file(path):
        report.add("unreadable", where)
        return
    try:
        data = path.read_bytes()
    except OSError:  # PermissionError included
        report.add("unreadable", where)
        return
    text = decode_text(data, where, report)
    if text is not None:
        yield Document(text=text, source=where)


class Refuse:
    """`skips` for a reader that takes no bad input: the first bad line raises, naming it."""

    def add(self, reason: str, where: str) -> None:
        raise SourceError(f"{where}: {reason}")


def iter_jsonl(path: Path, where: str, skips, bad_json: str = "bad_record"
               ) -> Iterator[tuple[str, object]]:
    """(place, record) for each non-blank line of a JSONL file. Each line is decoded on its own,
    so one bad line costs one record: an unreadable file, and a line that is not JSON, are
    counted in `skips` (anything with .add(reason, place)) and passed over."""
    if not _is_regular_file(path):
        skips.add("unreadable", where)
        return
    try:
        f = open(path, "rb")
    except OSError:
        skips.add("unreadable", where)
        return
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, spacing) are not records
            place = f"{where}:{lineno}"
            try:
                # utf-8-sig drops a byte-order mark, which editors on Windows like to add.
                record = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                skips.add(bad_json, place)
                continue
            yield place, record


def _read_jsonl(path: Path, where: str, report: SkipReport) -> Iterator[Document]:
    """One document per line, from its `text` field."""
    return _text_records(iter_jsonl(path, where, report), report)


def _import_pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise SourceError(
            "reading .parquet files needs pyarrow: "
            "pip install pyarrow (or pip install llmos[parquet])"
        ) from e
    return pq


def _read_parquet(path: Path, where: str, report: SkipReport) -> Iterator[Document]:
    """One document per row of the `text` column, read in batches to bound memory."""
    pq = _import_pyarrow_parquet()
    import pyarrow as pa

    if not _is_regular_file(path):
        report.add("unreadable", where)
        return
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):  # corrupt or not really parquet
        report.add("unreadable", where)
        return
    columns = pf.schema_arrow.names
    if "text" not in columns:
        raise SourceError(f"{where}: parquet file has no 'text' column (columns: {columns})")
    row = 0
    for batch in pf.iter_batches(columns=["text"]):
        for value in batch.column(0).to_pylist():
            row_where = f"{where}:{row}"
            row += 1
            if not isinstance(value, str):
                report.add("bad_record", row_where)
            elif not value.strip():
                report.add("empty", row_where)
            else:
                yield Document(text=value, source=row_where)


def _read_file(path: Path, where: str, report: SkipReport) -> Iterator[Document]:
    """Dispatch on the suffix; the caller has already checked that it is supported."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, where, report)
    elif suffix == ".parquet":
        yield from _read_parquet(path, where, report)
    else:
        yield from _read_text_file(path, where, report)


# --- sources ----------------------------------------------------------------------------------


def walk_sorted(root: Path, skip_dir) -> list[Path]:
    """All non-directory entries under root, sorted, pruning folders for which skip_dir is true.

    Symlinked folders are not followed, so a link cycle cannot make the walk endless.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not skip_dir(d)]
        found.extend(Path(dirpath) / name for name in filenames)
    return sorted(found)


def _iter_stdlib(report: SkipReport) -> Iterator[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in walk_sorted(root, lambda d: d in STDLIB_SKIP_DIRS):
        if path.suffix == ".py":
            rel = path.relative_to(root).as_posix()
            yield from _read_text_file(path, f"builtin:stdlib:{rel}", report)


def skip_user_dir(name: str) -> bool:
    # Hidden folders (.git, .venv, .cache) hold tooling, not corpus text, and can be huge.
    return name.startswith(".") or name == "__pycache__"


def _iter_folder(root: Path, report: SkipReport) -> Iterator[Document]:
    for path in walk_sorted(root, skip_user_dir):
        where = str(path)
        if path.is_symlink() and not path.exists():
            report.add("broken_symlink", where)
        elif path.suffix.lower() not in SUPPORTED_SUFFIXES:
            report.add("unsupported_type", where)
        else:
            yield from _read_file(path, where, report)


def _iter_path(spec: str, report: SkipReport) -> Iterator[Document]:
    # Not a generator itself, so a missing path fails when the spec is given, not when read.
    path = Path(spec).expanduser()
    if path.is_symlink() and not path.exists():
        raise SourceError(f"source {spec!r} is a broken symlink (it points to a missing file)")
    if not path.exists():
        raise SourceError(f"source {spec!r}: no such file or folder. {ACCEPTED_FORMS}")
    if path.is_dir():
        return _iter_folder(path, report)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        supported = " ".join(sorted(SUPPORTED_SUFFIXES))
        raise SourceError(f"source {spec!r}: unsupported file type; supported: {supported}")
    return _read_file(path, spec, report)


def _parse_hf_spec(spec: str) -> tuple[str, str | None, int | None]:
    """'hf:NAME[:CONFIG][@N]' -> (name, config, limit)."""
    body = spec[len("hf:") :]
    limit = None
    if "@" in body:
        body, _, count = body.rpartition("@")
        if not count.isdigit() or int(count) <= 0:
            raise SourceError(f"source {spec!r}: the part after '@' must be a positive doc count")
        limit = int(count)
    name, _, config = body.partition(":")
    if not name:
        raise SourceError(f"source {spec!r}: missing dataset name; expected hf:NAME[:CONFIG][@N]")
    return name, config or None, limit


def hf_records(spec: str, fields: tuple[str, ...], noun: str = "", offline: str = "a local file"
               ) -> Iterator[tuple[str, object]]:
    """(place, record) from the train split of a Hugging Face dataset, streamed: the one reader of
    `hf:` specs for documents, conversations and comparisons. A first record with none of
    `fields` is refused (it is some other kind of set). `noun` names the kind of source in
    errors, `offline` what to use instead without the network."""
    # Not a generator itself, so a bad spec, a missing library or no network fails at once.
    name, config, limit = _parse_hf_spec(spec)
    what = f"{noun} source" if noun else "source"
    try:
        import datasets
    except ImportError as e:
        raise SourceError(f"{what} {spec!r} needs the Hugging Face `datasets` library: "
                          "pip install datasets (or pip install llmos[hf])") from e
    try:
        records = iter(datasets.load_dataset(name, config, split="train", streaming=True))
    except Exception as e:  # the library raises many types (HTTP, file-not-found, config) here
        raise SourceError(
            f"could not load {spec!r}: the Hugging Face hub could not be reached, or the dataset "
            f"or its train split is not there; hf: sources need network access (offline, use "
            f"{offline})") from e
    return _hf_stream(records, spec, name, limit, fields)


def _hf_stream(records, spec: str, name: str, limit: int | None, fields: tuple[str, ...]):
    for index in range(limit) if limit is not None else itertools.count():
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as e:  # streaming fetches lazily, so the network can fail mid-way
            raise SourceError(f"lost the connection to the Hugging Face hub while streaming "
                              f"{spec!r}; hf: sources need network access") from e
        if index == 0 and isinstance(record, dict) and not set(fields) & set(record):
            # Without this a whole (possibly huge) dataset would stream by as skipped records.
            raise SourceError(f"{spec!r} has no {' or '.join(map(repr, fields))} field "
                              f"(fields: {sorted(record)})")
        yield f"hf:{name}:{index}", record


def _hf_documents(spec: str, report: SkipReport) -> Iterator[Document]:
    records = hf_records(spec, ("text",), offline="a local file or builtin:stdlib")
    return _text_records(records, report)


def _text_records(records, report: SkipReport) -> Iterator[Document]:
    """One document per record, from its `text` field."""
    for where, record in records:
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            report.add("bad_record", where)
        elif not text.strip():
            report.add("empty", where)
        else:
            yield Document(text=text, source=where)


def iter_source(spec: str, report: SkipReport) -> Iterator[Document]:
    """Documents from one source spec, in a deterministic order; skips are counted in report."""
    if spec.startswith("builtin:"):
        if spec != "builtin:stdlib":
            raise SourceError(f"unknown builtin source {spec!r}; {ACCEPTED_FORMS}")
        return _iter_stdlib(report)
    if spec.startswith("hf:"):
        return _hf_documents(spec, report)
    if "://" in spec:
        raise SourceError(f"URLs are not a source form ({spec!r}); {ACCEPTED_FORMS}")
    if not spec.strip():
        raise SourceError(f"empty source spec; {ACCEPTED_FORMS}")
    return _iter_path(spec, report)


# --- corpus -----------------------------------------------------------------------------------


def iter_corpus(
    specs: Iterable[str], report: SkipReport, max_doc_chars: int = 0,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> Iterator[Document]:
    """All sources in order, excluded documents and exact duplicates dropped, long documents cut
    to max_doc_chars."""
    seen: set[bytes] = set()
    for spec in specs:
        for doc in iter_source(spec, report):
            if doc.source in exclude:
                report.add("excluded", doc.source)
                continue
            digest = hashlib.sha256(doc.text.encode("utf-8")).digest()
            if digest in seen:
                report.add("duplicate", doc.source)
                continue
            seen.add(digest)
            if max_doc_chars > 0 and len(doc.text) > max_doc_chars:
                report.add("truncated", doc.source)
                doc = Document(text=doc.text[:max_doc_chars], source=doc.source)
            yield doc


def load_corpus(specs: list[str], max_doc_chars: int = 0,
                exclude: frozenset[str] | set[str] = frozenset()
                ) -> tuple[list[Document], SkipReport]:
    """Every usable document of the specs plus what was skipped; CorpusError if none is usable.
    `exclude`: document sources to leave out (data/exclusions.py reads them from a file)."""
    if isinstance(specs, str):  # a lone string would be iterated character by character
        specs = [specs]
    if not specs:
        raise CorpusError(f"no sources given; {ACCEPTED_FORMS}")
    report = SkipReport()
    docs = list(iter_corpus(specs, report, max_doc_chars, exclude))
    if not docs:
        raise CorpusError(
            f"no usable text in sources {', '.join(repr(s) for s in specs)}; "
            f"skipped: {report.summary()}"
        )
    return docs, report


def split_of(text: str, val_fraction: float) -> str:
    """'train' or 'val', decided by the text's hash so the split is stable across runs and
    machines and a document can never be in both."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if position < val_fraction else "train"
