"""Knowledge sources cut into chunks a search can return and a model can read.

A source spec is a file, a folder (every readable file in it), ``builtin:stdlib`` (every
module of the running Python's standard library, its tests left out) or ``builtin:pydocs`` (the
Library Reference's HTML pages, where Debian's python3.X-doc package is installed). Python
files are cut along their definitions with `ast` (the module docstring, then each function,
class and method with its signature, docstring and the start of its code), Markdown and
reStructuredText along their headings, HTML into its readable text (`readable_html`), PDF page
by page (`pypdf`), other text along blank lines. A chunk is cited as ``source#position``.

    for source in iter_sources(["builtin:stdlib", "notes/"], skips):
        chunks = chunk_source(source, skips)
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmos.data.readable import readable_html
from llmos.data.sources import (
    STDLIB_SKIP_DIRS,
    SkipReport,
    SourceError,
    decode_text,
    skip_user_dir,
    walk_sorted,
)

MAX_CHUNK_CHARS = 1200  # about 300 words: a passage a small model's context can hold
CODE_LINES = 12  # lines of a definition's body kept after its docstring
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".py", ".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | {".pdf"}
STDLIB = "builtin:stdlib"
PYDOCS = "builtin:pydocs"
# The Library Reference as HTML, from Debian's python3.X-doc package: prose written by people.
PYDOCS_DIR = Path(f"/usr/share/doc/python3.{sys.version_info.minor}/html/library")


@dataclass(frozen=True)
class Source:
    name: str  # how chunks cite it: a path, or "json/__init__.py" under builtin:stdlib
    path: Path
    module: str = ""  # the dotted module name of a Python file, when known

    def fingerprint(self) -> str:
        """Changes whenever the file does: a source is re-read only when this differs."""
        st = self.path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class Chunk:
    source: str
    position: int  # 0, 1, ... in the source
    title: str  # "json.dumps", "README.md > Install", "paper.pdf p.3"
    text: str

    @property
    def cite(self) -> str:
        return f"{self.source}#{self.position}"


# --------------------------------------------------------------------------- sources

def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stdlib_sources() -> list[Source]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in walk_sorted(root, lambda d: d in STDLIB_SKIP_DIRS):
        if path.suffix == ".py":
            rel = path.relative_to(root)
            out.append(Source(rel.as_posix(), path, _module_name(rel)))
    return out


def pydocs_sources(root: Path = PYDOCS_DIR) -> list[Source]:
    if not root.is_dir():
        raise SourceError(f"{PYDOCS} reads the Python documentation from {root}, which is not "
                          f"there: apt-get install python3.{sys.version_info.minor}-doc")
    return [Source(f"pydocs/{p.name}", p, p.stem) for p in sorted(root.glob("*.html"))]


def builtin_available(spec: str) -> bool:
    """Whether a builtin: source can be read on this machine (pydocs needs a Debian package)."""
    return spec != PYDOCS or PYDOCS_DIR.is_dir()


def source_name(path: Path) -> str:
    """How a file is cited: relative to the current folder when inside it, else absolute, so
    `a.md`, `./a.md` and `$PWD/a.md` are one source, not three."""
    full = Path(os.path.abspath(path))  # normalised, symlinks kept as the user named them
    try:
        return full.relative_to(os.getcwd()).as_posix()
    except ValueError:
        return full.as_posix()


def iter_sources(specs: list[str], skips: SkipReport) -> Iterator[Source]:
    """The files the specs name, in order; a missing path or an unsupported single file is a
    SourceError (said before anything is read), files in a folder that cannot be read are
    counted in `skips`."""
    resolved: list[list[Source]] = []
    for spec in specs:
        if spec == STDLIB:
            resolved.append(stdlib_sources())
            continue
        if spec == PYDOCS:
            resolved.append(pydocs_sources())
            continue
        if spec.startswith("builtin:"):
            raise SourceError(f"unknown knowledge source {spec!r}; built in: {STDLIB}, {PYDOCS}")
        path = Path(spec).expanduser()
        if not path.exists():
            raise SourceError(f"knowledge source {spec!r}: no such file or folder")
        if path.is_dir():
            found = []
            for f in walk_sorted(path, skip_user_dir):
                if not f.is_file():  # a broken symlink, a FIFO: nothing to read
                    skips.add("unreadable", str(f))
                elif f.suffix.lower() in SUFFIXES:
                    found.append(Source(source_name(f), f, _module_name(f.relative_to(path))))
                else:
                    skips.add("unsupported_type", str(f))
            resolved.append(found)
        elif path.suffix.lower() in SUFFIXES:
            resolved.append([Source(source_name(path), path, path.stem)])
        else:
            raise SourceError(f"knowledge source {spec!r}: unsupported file type; supported: "
                              + " ".join(sorted(SUFFIXES)))
    if any(s.path.suffix.lower() == ".pdf" for sources in resolved for s in sources):
        _need_pypdf()  # before anything is written, not halfway through a build
    for sources in resolved:
        yield from sources


# --------------------------------------------------------------------------- chunking

def chunk_source(source: Source, skips: SkipReport) -> list[Chunk]:
    """The source's chunks, or [] after counting why it could not be read."""
    suffix = source.path.suffix.lower()
    try:
        if suffix == ".pdf":
            return _pdf_chunks(source, skips)
        data = source.path.read_bytes()
    except OSError:
        skips.add("unreadable", source.name)
        return []
    text = decode_text(data, source.name, skips)
    if text is None:
        return []
    if suffix == ".py":
        try:
            return python_chunks(source.name, source.module, text)
        except (SyntaxError, ValueError):  # a file for another Python: read it as plain text
            pass
    if suffix in (".html", ".htm"):
        page = readable_html(text)
        return _number(source.name, _sections(page.text, source.path.name, "md"))
    style = {".md": "md", ".markdown": "md", ".rst": "rst"}.get(suffix, "")
    return _number(source.name, _sections(text, source.path.name, style))


def passage(cite: str, title: str, text: str, max_chars: int) -> str:
    """A chunk as a model reads it in a tool result: "[cite] title: text", whitespace
    collapsed, cut to max_chars."""
    shown = f"[{cite}] {title}: {' '.join(text.split())}"
    return shown if len(shown) <= max_chars else shown[: max_chars - 3].rstrip() + "..."


def _number(source: str, pieces: list[tuple[str, str]]) -> list[Chunk]:
    return [Chunk(source, i, title, text) for i, (title, text) in enumerate(pieces)]


def _cut(text: str, limit: int = MAX_CHUNK_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# Python: one chunk per definition, titled by its qualified name.

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _definition_text(node, lines: list[str]) -> str:
    """The docstring, the def/class line(s), then the first lines of the body's code."""
    doc = ast.get_docstring(node) or ""
    first = node.body[0]
    has_doc = bool(doc) and isinstance(first, ast.Expr)
    head_end = first.lineno - 1 if first.lineno > node.lineno else node.lineno
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    head = "\n".join(line.strip() for line in lines[start - 1: head_end])
    body_nodes = node.body[1:] if has_doc else node.body
    if isinstance(node, ast.ClassDef):  # a class's methods are chunks of their own
        body_nodes = [b for b in body_nodes if not isinstance(b, _DEFS)]
    code = []
    for b in body_nodes:
        code.extend(lines[b.lineno - 1: b.end_lineno])
        if len(code) >= CODE_LINES:
            break
    # The docstring first: a reader shown only the start of a chunk (a small model's context)
    # gets what the definition is for before its code.
    parts = [doc] if doc else []
    parts.append(head)
    if code:
        parts.append("\n".join(_dedent(code[:CODE_LINES])))
    return _cut("\n".join(parts))


def _dedent(lines: list[str]) -> list[str]:
    indents = [len(x) - len(x.lstrip()) for x in lines if x.strip()]
    cut = min(indents, default=0)
    return [x[cut:] for x in lines]


def python_chunks(source: str, module: str, text: str) -> list[Chunk]:
    """The module's docstring (or its first lines), then every function, class and method."""
    tree = ast.parse(text)
    lines = text.splitlines()
    module = module or Path(source).stem
    doc = ast.get_docstring(tree)
    intro = doc if doc else "\n".join(lines[:CODE_LINES])
    pieces = [(module, _cut(intro))]

    def visit(body, prefix: str):
        for node in body:
            if isinstance(node, _DEFS):
                qual = f"{prefix}.{node.name}"
                pieces.append((qual, _definition_text(node, lines)))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, qual)

    visit(tree.body, module)
    return _number(source, pieces)


# Prose: sections along headings, packed paragraphs within a section.

_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")


def _headings(text: str, style: str) -> list[tuple[str, list[str]]]:
    """[(heading, lines)] in order; the text before the first heading has heading ""."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if style == "md" and re.match(r"#{1,6}\s+\S", line):
            sections.append((line.lstrip("#").strip(), []))
        elif (style == "rst" and i + 1 < len(lines) and line.strip()
              and _RST_UNDERLINE.match(lines[i + 1])
              and len(lines[i + 1].strip()) >= len(line.strip())):
            sections.append((line.strip(), []))
            i += 1
        elif style == "rst" and _RST_UNDERLINE.match(line) and i + 2 < len(lines) \
                and _RST_UNDERLINE.match(lines[i + 2]):  # an overlined title
            sections.append((lines[i + 1].strip(), []))
            i += 2
        else:
            sections[-1][1].append(line)
        i += 1
    return sections


def _paragraphs(lines: list[str]) -> list[str]:
    paras = [p.strip() for p in re.split(r"\n\s*\n", "\n".join(lines))]
    out = []
    for p in paras:
        while len(p) > MAX_CHUNK_CHARS:  # one huge paragraph: cut at a sentence or a space
            cut = max(p.rfind(". ", 0, MAX_CHUNK_CHARS), p.rfind(" ", 0, MAX_CHUNK_CHARS // 2))
            cut = cut + 1 if cut > 0 else MAX_CHUNK_CHARS
            out.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            out.append(p)
    return out


def _sections(text: str, name: str, style: str) -> list[tuple[str, str]]:
    pieces = []
    for heading, lines in _headings(text, style):
        title = f"{name} > {heading}" if heading else name
        packed = ""
        for para in _paragraphs(lines):
            if packed and len(packed) + len(para) + 2 > MAX_CHUNK_CHARS:
                pieces.append((title, packed))
                packed = ""
            packed = f"{packed}\n\n{para}" if packed else para
        if packed:
            pieces.append((title, packed))
        elif heading:  # a heading with nothing under it still names a place in the file
            pieces.append((title, heading))
    return pieces


def _need_pypdf():
    try:
        import pypdf
    except ModuleNotFoundError as e:
        raise SourceError("reading PDF files needs the pypdf package: "
                          "pip install 'llmos[knowledge]'") from e
    return pypdf


def _pdf_chunks(source: Source, skips: SkipReport) -> list[Chunk]:
    pypdf = _need_pypdf()
    try:
        reader = pypdf.PdfReader(str(source.path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception:  # noqa: BLE001 - pypdf raises many kinds on a damaged file
        skips.add("unreadable_pdf", source.name)
        return []
    pieces = []
    for number, page in enumerate(pages, 1):
        pieces.extend(_sections(page, f"{source.path.name} p.{number}", ""))
    if not pieces:
        skips.add("empty", source.name)
    return _number(source.name, pieces)
