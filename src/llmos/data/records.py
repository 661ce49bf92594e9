"""The records that join the data stages: conversations (for SFT) and comparisons (for reward
models and DPO), in the OpenAI / TRL shapes, the errors their readers raise, and the report of
what was skipped.

Messages inside are in one internal shape whatever the input:
``{"role": "system"|"user"|"assistant"|"tool", "content": str}``, where an assistant message
may add ``"tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict}}]``
and ``"reasoning_content": str`` (a think block), and a tool message adds ``"name"`` (the tool
that answered). Readers and validation: `llmos.data.conversations`, `llmos.data.comparisons`.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmos.data.sources import SkipReport

SUMMARY_EXAMPLES = 3


class ConversationError(ValueError):
    """A source gave no usable conversation."""


class BadConversation(ValueError):
    """One record that breaks a rule; `reason` is the skip-report key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Conversation:
    messages: list[dict]
    source: str  # "path.jsonl:12", "builtin:assistant", "hf:NAME:7"
    task: str = "chat"  # builtin: docstring, signature, followup, identity, arithmetic, python
    subject: str = ""  # builtin: the module, function or problem asked about (the split key)
    answer: str = ""  # builtin: the gold final answer, for task accuracy

    def to_dict(self) -> dict:
        """A JSONL record that `read_conversations` reads back to an equal Conversation."""
        record: dict = {"messages": self.messages}
        if self.task != "chat":
            record["task"] = self.task
        if self.subject:
            record["subject"] = self.subject
        if self.answer:
            record["answer"] = self.answer
        return record


class ConversationSkips(SkipReport):
    """Skipped records by reason, with the first few places (``file:line``) for each; the
    summary names the places, since a user fixes a conversation file line by line."""

    def summary(self) -> str:
        """One line, e.g. 'skipped malformed_json=2 (a.jsonl:3, a.jsonl:9), overlong=1 (...)'."""
        if not self.counts:
            return "nothing skipped"
        parts = []
        for reason, n in sorted(self.counts.items()):
            shown = self.examples.get(reason, [])[:SUMMARY_EXAMPLES]
            more = ", ..." if n > len(shown) else ""
            parts.append(f"{reason}={n} ({', '.join(shown)}{more})")
        return "skipped " + ", ".join(parts)


class ComparisonError(ValueError):
    """A source gave no usable comparison."""


@dataclass
class Comparison:
    prompt: list[dict]  # the conversation so far, ending where the answers start
    chosen: list[dict]  # the preferred answer: assistant message(s), tool turns included
    rejected: list[dict]
    source: str  # "path.jsonl:12", "builtin:comparisons", "hf:NAME:7"
    task: str = "chat"  # builtin: the builtin:assistant task of the prompt
    subject: str = ""  # builtin: what the prompt asks about (the held-out split key)
    answer: str = ""  # builtin: the gold final answer
    kind: str = ""  # builtin: what is wrong with the rejected answer

    def to_dict(self) -> dict:
        """A JSONL record in TRL's conversational shape that `read_comparisons` reads back."""
        record = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        record |= {k: v for k, v in (("task", self.task), ("subject", self.subject),
                                     ("answer", self.answer), ("kind", self.kind))
                   if v and v != "chat"}
        return record


def prompt_of(conv: Conversation) -> list[dict]:
    """The conversation up to its last user message: what the model must answer."""
    last_user = max(i for i, m in enumerate(conv.messages) if m["role"] == "user")
    return conv.messages[:last_user + 1]
