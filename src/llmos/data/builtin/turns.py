"""What every built-in set is made of: its seed, the held-out split by subject, system prompts,
and the message builders.

Train and held-out are split by *subject* (the module, function, problem or question asked
about) with a stable hash, so no subject is in both and the split is the same on every machine
that has the same Python.
"""

from __future__ import annotations

import hashlib
import random

from llmos.data.records import Conversation

SEED = "llmos-assistant-1"
HELDOUT_FRACTION = 0.10
SYSTEM_FRACTION = 0.30  # share of conversations that start with a system prompt

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly.",
    "You are llmos, a small assistant that knows the Python standard library.",
    "Answer the user's questions concisely.",
    "You are a concise, accurate assistant. Use tools when they help.",
)


def tool_call(name: str, arguments: dict) -> dict:
    """An assistant message that calls one tool (the shape builtin:assistant writes)."""
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def conversation(rng: random.Random, task: str, subject: str, answer: str,
                 turns: list[dict]) -> Conversation:
    messages = list(turns)
    if rng.random() < SYSTEM_FRACTION:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return Conversation(messages=messages, source="builtin:assistant", task=task,
                        subject=subject, answer=answer)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def is_heldout(subject: str) -> bool:
    """True for the ~10% of subjects that are held out; stable across runs and machines."""
    digest = hashlib.sha256(subject.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_FRACTION
