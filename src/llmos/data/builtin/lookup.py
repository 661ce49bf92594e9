"""``lookup`` conversations: a question about the standard library answered from a retrieved
passage. Under the stdlib helper's instructions the assistant calls ``search_knowledge`` with
the name asked about, reads the passage the knowledge base returns for it (the same chunk and
the same rendering the live tool gives), answers from its docstring and cites it:

    system     Look things up with search_knowledge and cite the passage.
    user       What does `json.dumps` do?
    assistant  -> search_knowledge {"query": "json.dumps"}
    tool       [json/__init__.py#2] json.dumps: Serialize ``obj`` to a JSON formatted ...
    assistant  `json.dumps` serializes ``obj`` to a JSON formatted ``str``. [json/__init__.py#2]

This is how a model answers about functions it never learned: the docstring questions of
held-out subjects fail from memory and are meant to pass from the passage.
"""

from __future__ import annotations

import functools
import random
import re

from llmos.data.builtin.stdlib_api import ApiEntry, describe
from llmos.data.builtin.turns import SEED, assistant, tool_call, user
from llmos.data.chunking import chunk_source, passage, stdlib_sources
from llmos.data.records import Conversation
from llmos.data.sources import SkipReport

# The stdlib helper's instructions (profiles/stdlib-helper.toml says the same): short, because
# cpu-tiny's whole context is 256 tokens.
INSTRUCTIONS = "Look things up with search_knowledge and cite the passage."
TOOL = "search_knowledge"
PASSAGE_CHARS = 240  # one passage of this size fits cpu-tiny's context with the answer
LOOKUP_FRACTION = 0.35  # share of stdlib entries that also get a lookup conversation
CITATION = re.compile(r"\s*\[[^\[\]\s]+#\d+\]")


@functools.lru_cache(maxsize=1)
def stdlib_passages() -> dict[str, tuple[str, str, str]]:
    """Chunk title -> (cite, title, text) for every chunk of builtin:stdlib."""
    out = {}
    skips = SkipReport()
    for source in stdlib_sources():
        for c in chunk_source(source, skips):
            out.setdefault(c.title, (c.cite, c.title, c.text))
    return out


def lookup_messages(question: str) -> list[dict]:
    """The prompt of a lookup conversation: the stdlib helper's instructions, the question."""
    return [{"role": "system", "content": INSTRUCTIONS}, user(question)]


def strip_citations(answer: str) -> str:
    return CITATION.sub("", answer).strip()


def cited(answer: str) -> list[str]:
    return [m.strip()[1:-1] for m in CITATION.findall(answer)]


def lookup_items(api: tuple[ApiEntry, ...], question) -> list[Conversation]:
    """Lookup conversations for a share of the entries; `question(rng, entry)` asks about one."""
    rng = random.Random(f"{SEED}:lookup")
    chunks = stdlib_passages()
    out = []
    for e in api:
        if rng.random() >= LOOKUP_FRACTION or e.name not in chunks:
            continue
        cite, title, text = chunks[e.name]
        turns = lookup_messages(question(rng, e)) + [
            tool_call(TOOL, {"query": e.name}),
            {"role": "tool", "name": TOOL, "content": passage(cite, title, text, PASSAGE_CHARS)},
            assistant(f"{describe(e)} [{cite}]")]
        out.append(Conversation(messages=turns, source="builtin:assistant", task="lookup",
                                subject=e.name, answer=e.summary))
    return out
