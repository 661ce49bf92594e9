"""Memory: facts the model saves about a user and finds again in later conversations, in the
database (so they survive a restart), listed and deleted by the user (`llmos memory`).

    store = MemoryStore.open("llmos.db")
    tools = memory_tools(store, "ada")        # remember / recall, bound to one user
    messages = with_memories(messages, store.list("ada"))   # what the model is told it knows

A profile that grants `recall` also gets the user's memories in its system message each turn:
a small model may not think to call `recall`, and a deleted memory is gone from the next
answer either way.
"""

from __future__ import annotations

import re
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmos import db
from llmos.agent.tools import Tool, ToolError

MAX_FACT_CHARS = 500
MAX_SHOWN = 20  # memories put in the system message, newest first
DEFAULT_USER = "default"

_meta = sa.MetaData()
memories = sa.Table("memories", _meta, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("owner", sa.String(128)), sa.Column("text", sa.Text),
                    sa.Column("created", sa.Float))


class MemoryStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str, must_exist: bool = False) -> MemoryStore:
        return cls(db.open_database(url, must_exist))

    def add(self, user: str, text: str) -> int:
        """Save a fact (once: saving it again returns the same id)."""
        text = " ".join(text.split())
        if not text:
            raise ValueError("an empty memory")
        if len(text) > MAX_FACT_CHARS:
            raise ValueError(f"a memory is at most {MAX_FACT_CHARS} characters")
        if len(user) > 128:
            raise ValueError("a user name is at most 128 characters")
        for _attempt in range(2):  # a twin saved at the same moment wins; return its id
            try:
                with self.engine.begin() as c:
                    old = c.execute(sa.select(memories.c.id).where(
                        memories.c.owner == user, memories.c.text == text)).scalar()
                    if old is not None:
                        return old
                    return c.execute(sa.insert(memories).values(
                        owner=user, text=text, created=time.time())).inserted_primary_key[0]
            except sa.exc.IntegrityError:
                continue
        raise ValueError("the memory could not be saved")

    def list(self, user: str) -> list[dict]:
        """The user's memories, newest first."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(memories.c.id, memories.c.text, memories.c.created)
                             .where(memories.c.owner == user)
                             .order_by(memories.c.created.desc(), memories.c.id.desc()))
            return [dict(r._mapping) for r in rows]

    def forget(self, user: str, memory_id: int) -> bool:
        with self.engine.begin() as c:
            return c.execute(sa.delete(memories).where(
                memories.c.owner == user, memories.c.id == memory_id)).rowcount > 0

    def clear(self, user: str) -> int:
        with self.engine.begin() as c:
            return c.execute(sa.delete(memories).where(memories.c.owner == user)).rowcount

    def search(self, user: str, query: str, k: int = 5) -> list[dict]:
        """The user's k memories sharing the most words with the query (the k newest for an
        empty query)."""
        words = set(re.findall(r"\w+", query.lower()))
        found = self.list(user)
        if not words:
            return found[:k]
        scored = [(len(words & set(re.findall(r"\w+", m["text"].lower()))), i, m)
                  for i, m in enumerate(found)]
        return [m for s, _, m in sorted(scored, key=lambda x: (-x[0], x[1])) if s][:k]


def memory_tools(store: MemoryStore, user: str) -> dict[str, Tool]:
    def remember(args: dict) -> str:
        try:
            store.add(user, args["fact"])
        except ValueError as e:
            raise ToolError(str(e)) from None
        return "saved"

    def recall(args: dict) -> str:
        found = store.search(user, args.get("query", ""))
        return "\n".join(f"- {m['text']}" for m in found) or "nothing saved about that"

    return {
        "remember": Tool("remember", "Save a fact about the user for later conversations.",
                         {"type": "object", "properties": {"fact": {"type": "string"}},
                          "required": ["fact"], "additionalProperties": False}, remember,
                         capability="write-memory"),
        "recall": Tool("recall", "Find facts saved about the user in earlier conversations.",
                       {"type": "object", "properties": {"query": {"type": "string"}},
                        "required": ["query"], "additionalProperties": False}, recall,
                       capability="read-memory"),
    }


def with_memories(messages: list[dict], saved: list[dict]) -> list[dict]:
    """The conversation with the user's memories in its system message (unchanged if none)."""
    if not saved:
        return list(messages)
    note = "What you know about the user:\n" + "\n".join(
        f"- {m['text']}" for m in saved[:MAX_SHOWN])
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"},
                *messages[1:]]
    return [{"role": "system", "content": note}, *messages]
