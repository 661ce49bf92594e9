"""The standard library's API, read with `ast`: every public module, class, function and method
with its docstring's first sentence and its signature, and a sentence that describes it.

The source files are parsed, never imported: importing arbitrary stdlib modules has side effects
(turtle opens a window, antigravity a browser). Test packages are left out, as in
``builtin:stdlib``.
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from llmos.data.sources import STDLIB_SKIP_DIRS, walk_sorted

MAX_SUMMARY_CHARS = 200
MAX_SIGNATURE_CHARS = 200

# Packages that are deprecated, bundled data or internals rather than library API to ask about.
STDLIB_EXCLUDE = {"idlelib", "lib2to3", "turtledemo", "pydoc_data", "ensurepip", "encodings",
                  "distutils", "msilib", "this", "antigravity"}


@dataclass(frozen=True)
class ApiEntry:
    kind: str  # "module", "class", "function" or "method"
    name: str  # qualified: "json", "json.dumps", "textwrap.TextWrapper.fill"
    module: str
    summary: str  # the docstring's first sentence, whitespace cleaned
    signature: str = ""  # "textwrap.fill(text, width=70, **kwargs)"; "" when not known


_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "Mr.", "No.")
_SKIP_FIRST_WORDS = {"**DEPRECATED**", "Deprecated", "Deprecated.", "Deprecated,", "Internal",
                     "Internal:", "XXX", "TODO", "Undocumented", "Helper", "Helper:", "Private"}


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, or "" when it makes no answer
    (too long, a signature line, a doctest, a deprecation note)."""
    para = doc.strip().split("\n\n")[0]
    text = " ".join(para.split())
    if not text or re.match(r"[\w.]+\(", text) or ">>>" in text or "::" in text:
        return ""
    if text.split()[0] in _SKIP_FIRST_WORDS:
        return ""
    for m in re.finditer(r"[.!?](?=\s+[A-Z(`'\"]|$)", text):
        sentence = text[: m.end()]
        if not sentence.endswith(_ABBREVIATIONS):
            text = sentence
            break
    if not text.endswith((".", "!", "?")):
        text += "."
    if len(text) > MAX_SUMMARY_CHARS or len(text.split()) < 3:
        return ""
    return text


def _signature(name: str, args: ast.arguments, drop_first: bool = False) -> str:
    """'name(a, b=1, /, *args, c, **kw)' as `inspect.signature` shows it, annotations left out."""
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults))
    n_posonly = len(args.posonlyargs)
    if drop_first and pairs:  # self of __init__, cls of a classmethod
        pairs, n_posonly = pairs[1:], max(0, n_posonly - 1)
    parts = []
    for i, (arg, default) in enumerate(pairs):
        parts.append(arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}")
        if i == n_posonly - 1:
            parts.append("/")
    if args.vararg:
        parts.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        parts.append("*")
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        parts.append(arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}")
    if args.kwarg:
        parts.append(f"**{args.kwarg.arg}")
    sig = f"{name}({', '.join(parts)})"
    return sig if len(sig) <= MAX_SIGNATURE_CHARS else ""


def _decorators(node) -> set[str]:
    names = set()
    for d in node.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        names.add(d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", ""))
    return names


def _public_names(tree: ast.Module) -> set[str] | None:
    """The module's literal ``__all__``, or None when it has none we can read without running."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "__all__"):
            try:
                names = ast.literal_eval(node.value)
            except ValueError:
                return None
            return {n for n in names if isinstance(n, str)}
    return None


_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _class_entries(node: ast.ClassDef, module: str) -> list[ApiEntry]:
    name = f"{module}.{node.name}"
    out = []
    init = next((n for n in node.body if isinstance(n, _FUNCS) and n.name == "__init__"), None)
    summary = first_sentence(ast.get_docstring(node) or "")
    if summary:
        sig = _signature(name, init.args, drop_first=True) if init else ""
        out.append(ApiEntry("class", name, module, summary, sig))
    seen = set()
    for child in node.body:
        if not isinstance(child, _FUNCS) or child.name.startswith("_") or child.name in seen:
            continue
        seen.add(child.name)
        decorators = _decorators(child)
        if decorators & {"property", "setter", "getter", "deleter", "overload",
                         "cached_property"}:
            continue  # attributes, not calls; overloads repeat the real definition
        summary = first_sentence(ast.get_docstring(child) or "")
        if summary:
            qual = f"{name}.{child.name}"
            sig = _signature(qual, child.args, drop_first="classmethod" in decorators)
            out.append(ApiEntry("method", qual, module, summary, sig))
    return out


def _module_entries(tree: ast.Module, module: str) -> list[ApiEntry]:
    out = []
    summary = first_sentence(ast.get_docstring(tree) or "")
    if summary:
        out.append(ApiEntry("module", module, module, summary))
    public = _public_names(tree)
    seen = set()
    for node in tree.body:
        if not isinstance(node, (*_FUNCS, ast.ClassDef)) or node.name in seen:
            continue
        seen.add(node.name)
        if node.name.startswith("_") or (public is not None and node.name not in public):
            continue
        if isinstance(node, ast.ClassDef):
            out.extend(_class_entries(node, module))
            continue
        summary = first_sentence(ast.get_docstring(node) or "")
        if summary and "overload" not in _decorators(node):
            name = f"{module}.{node.name}"
            out.append(ApiEntry("function", name, module, summary, _signature(name, node.args)))
    return out


@functools.lru_cache(maxsize=1)
def stdlib_api() -> tuple[ApiEntry, ...]:
    """Public modules, classes, functions and methods of the stdlib that have a usable docstring,
    in sorted file order. Parsing takes about two seconds, so the result is kept."""
    root = Path(sysconfig.get_paths()["stdlib"])
    entries: list[ApiEntry] = []
    for path in walk_sorted(root, lambda d: d in STDLIB_SKIP_DIRS):
        if path.suffix != ".py":
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not parts or parts[0] in STDLIB_EXCLUDE or any(p.startswith("_") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):  # a file for another Python, or unreadable
            continue
        entries.extend(_module_entries(tree, ".".join(parts)))
    return tuple(entries)


# --- phrasing answers -----------------------------------------------------------------------------

# Imperative first words of stdlib docstrings ("Return the ..."), from counting them.
VERBS = set("""
accept acquire add append apply arrange assert attach bind block build calculate call cancel
change check clear close collect compare compile compose compress compute configure connect
construct convert copy count create decide decode decompress define delegate delete describe
detach determine disable display do dump emit enable encode ensure escape evaluate execute exit
expand extract fail feed fetch filter find flush format generate get guess handle implement
indicate initialize insert install invoke iterate join load lock log look make manage map mark
match move normalize notify open override pack parse perform pop prepare print process produce
provide push put quote raise read receive record register release remove rename replace report
represent request reset resolve restore retrieve return reverse run save scan schedule search
select send serialize set show shut skip sort split start stop store strip submit take terminate
test tokenize transform translate truncate try turn unlock unpack unquote update upgrade use
validate verify wait wake walk wrap write yield
""".split())


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _base_verb(word: str) -> str | None:
    """'returns' -> 'return', 'applies' -> 'apply'; None when it is not one of VERBS."""
    for base in (word[:-3] + "y", word[:-2], word[:-1]):
        if word.endswith("s") and base in VERBS and _third_person(base) == word:
            return base
    return None


def _lower_first(text: str) -> str:
    word = text.split(" ", 1)[0]
    if len(word) > 1 and (word[1].isupper() or not word.isalpha()):
        return text  # an acronym or code: "HTTP ...", "``obj`` ..."
    return text[:1].lower() + text[1:]


def describe(entry: ApiEntry) -> str:
    """The docstring's first sentence as an answer about the entry: "Serialize ``obj`` to ..."
    -> "`json.dumps` serializes ``obj`` to ..."."""
    subject = f"The `{entry.name}` module" if entry.kind == "module" else f"`{entry.name}`"
    text = entry.summary
    words = text.split(" ")
    first = words[0]
    if first == "This" and len(words) > 2:  # "This module provides ..." -> "... provides ..."
        return f"{subject} {' '.join(words[2:])}"
    if first in ("A", "An", "The", "Raised", "Called", "Used", "Returned", "Equivalent"):
        return f"{subject} is {_lower_first(text)}"
    if first == "Same":  # "Same as a + b."
        return f"{subject} is the {_lower_first(text)}"
    if first.lower() in VERBS and entry.kind in ("function", "method", "module"):
        return f"{subject} {_third_person(first.lower())} {' '.join(words[1:])}"
    if _base_verb(first.lower()):
        return f"{subject} {first.lower()} {' '.join(words[1:])}"
    return f"{subject}: {text}"
