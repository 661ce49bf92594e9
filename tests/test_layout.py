"""The layout rules of docs/DESIGN.md, checked on the source: no import cycle between llmos
modules (imports inside functions count), no source file over 600 lines, and no arrow pointing
back up the pipeline (data -> checkpoints -> evaluation / serving)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 600

# (importer, imported): a module under the first may not import one under the second.
# A prefix names a package ("llmos.train") or a module ("llmos.cli").
FORBIDDEN = [
    *((low, high) for low in ("llmos.data", "llmos.model", "llmos.config", "llmos.tokenizer",
                              "llmos.chat_format", "llmos.runtime", "llmos.checkpoint",
                              "llmos.db")
      for high in ("llmos.train", "llmos.evals", "llmos.serve", "llmos.agent", "llmos.infer",
                   "llmos.envs", "llmos.export", "llmos.safety", "llmos.reward_model")),
    *(("llmos.infer", high) for high in ("llmos.train", "llmos.evals", "llmos.serve",
                                         "llmos.agent", "llmos.safety")),
    *(("llmos.agent", high) for high in ("llmos.train", "llmos.evals", "llmos.serve",
                                         "llmos.safety")),
    *(("llmos.envs", high) for high in ("llmos.train", "llmos.evals", "llmos.serve",
                                        "llmos.safety")),
    *(("llmos.evals", high) for high in ("llmos.train", "llmos.serve", "llmos.safety")),
    ("llmos.serve", "llmos.train"),
    ("llmos.reward_model", "llmos.train"),
    # the entry points are imported by nothing in the library
    *((part, top) for part in ("llmos.data", "llmos.train", "llmos.evals", "llmos.serve",
                               "llmos.agent", "llmos.infer", "llmos.envs", "llmos.export",
                               "llmos.safety", "llmos.experiments")
      for top in ("llmos.cli", "llmos.speedrun")),
    # an experiment is a script at the top: the library does not import it
    *((part, "llmos.experiments") for part in ("llmos.data", "llmos.train", "llmos.evals",
                                               "llmos.serve", "llmos.agent", "llmos.infer",
                                               "llmos.envs", "llmos.export", "llmos.safety")),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "llmos").rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The llmos modules `name` imports anywhere in its file, functions included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `from llmos import chat_format` names a module
                t = t.rpartition(".")[0]
            if t and t != name and t != "llmos":
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_source_file_over_600_lines():
    big = {name: n for name, path in modules().items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def wrong_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({(a, b) for a, targets in graph.items() for b in targets
                   for low, high in FORBIDDEN if under(a, low) and under(b, high)})


def test_no_arrow_points_back_up_the_pipeline(graph):
    assert wrong_arrows(graph) == []


def test_an_evaluation_importing_a_training_stage_is_an_upward_arrow():
    graph = {"llmos.evals.judges": {"llmos.train.reward", "llmos.reward_model"},
             "llmos.train.dpo": {"llmos.evals.versus"}}
    assert wrong_arrows(graph) == [("llmos.evals.judges", "llmos.train.reward")]


def test_imports_inside_functions_are_seen(tmp_path):
    known = {"llmos.a": Path(), "llmos.b": Path(), "llmos.c": Path()}
    probe = tmp_path / "a.py"
    probe.write_text("from llmos import c\n\ndef f():\n    from llmos.b import g\n")
    assert imports("llmos.a", probe, known) == {"llmos.b", "llmos.c"}
