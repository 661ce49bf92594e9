"""Conversations for supervised finetuning: readers, validation and skip accounting.

A *conversation spec* names where conversations come from:

- a ``.jsonl`` file, one conversation per line, either in the OpenAI/TRL shape
  ``{"messages": [{"role": ..., "content": ...}, ...]}`` or ShareGPT-style
  ``{"conversations": [{"from": "human", "value": ...}, ...]}`` (an optional top-level
  ``"system"`` string becomes the system message). A ``.json`` file holding a list of such
  records (LLaMA-Factory ships data that way) works too; its places read ``file.json#index``.
- a folder: every ``.jsonl``/``.json`` file under it, in sorted order (other files are counted
  as ``unsupported_type``).
- ``hf:NAME[:CONFIG][@N]`` - a Hugging Face dataset's train split, streamed (needs ``datasets``
  and network); ``@N`` stops after N records.
- ``builtin:assistant`` / ``builtin:assistant:heldout`` - the set made from the running Python's
  standard library (see `llmos.data.builtin.assistant`), no download.

Messages come out in one internal shape whatever the input (`llmos.data.records`); other keys
(ids, weights, ...) are dropped.

A record that breaks a rule is skipped and counted under a reason with its place, never fixed
up, so what trains is exactly what the file says. The rules, in the order they are checked:

- ``malformed_json`` - the line is not valid UTF-8 JSON; ``not_object`` - it is not an object;
  ``missing_messages`` - no non-empty ``messages`` (or ``conversations``) list.
- ``bad_message`` - a message is not an object or has a field of the wrong type;
  ``unknown_role`` - a role (or ShareGPT ``from``) we do not know;
  ``malformed_tool_call`` - a tool call without a function name, or whose ``arguments`` are
  neither an object nor a string holding a JSON object;
  ``empty_content`` - blank content in a system or user message, or in an assistant message
  without tool calls (a tool's output may be empty: a program can print nothing).
- ``too_many_messages`` - more than ``max_messages``.
- ``no_assistant`` - nothing to learn from.
- turn order: one optional system message, first; then a user message; a user message is
  answered by an assistant message; an assistant message is followed by a user message, or, if
  it calls tools, by one tool message per call (matched by ``tool_call_id`` or name, else in
  order); after the tool results the assistant speaks again; the conversation ends with an
  assistant message that calls no tool. Breaking this is ``bad_order``, except that a tool
  message nothing asked for is ``orphan_tool`` and a call left without its result is
  ``unanswered_tool_call``.
- ``overlong`` - more than ``max_chars`` characters in all (contents, think blocks, tool names
  and arguments as JSON). Long conversations are skipped, never cut: half an answer teaches the
  model to stop mid-sentence.
"""

from __future__ import annotations

import json
import os

from llmos.chat_format import ROLES, ChatFormatError, tool_arguments
from llmos.data.builtin import assistant as builtin_assistant
from llmos.data.record_sources import RecordKind, parse_all, split_specs
from llmos.data.records import (
    BadConversation,
    Conversation,
    ConversationError,
    ConversationSkips,
)

# ShareGPT speaker names -> roles. "function_call" holds a JSON call and becomes an assistant
# tool call; "observation" is that tool's output (LLaMA-Factory's names).
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "function_call": "assistant", "tool": "tool", "observation": "tool",
}

ACCEPTED_FORMS = (
    "accepted conversation sources: a .jsonl file ({\"messages\": [...]} or ShareGPT "
    "{\"conversations\": [...]} per line), a .json list of those, a folder of them, "
    "'hf:NAME[:CONFIG][@N]', 'builtin:assistant' or 'builtin:assistant:heldout'"
)

CONVERSATIONS = RecordKind(
    "conversation", ACCEPTED_FORMS, ("messages", "conversations"),
    "a .jsonl file or builtin:assistant",
    {builtin_assistant.SPECS[0]: lambda: builtin_assistant.assistant_dataset()[0],
     builtin_assistant.SPECS[1]: lambda: builtin_assistant.assistant_dataset()[1]})


# --- one message --------------------------------------------------------------------------------


def _text(value, what: str) -> str:
    """Message content as a string: None is empty, OpenAI text parts are joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise BadConversation("bad_message", f"{what} content must be a string or text parts")


def _tool_call(raw, what: str) -> tuple[dict, str | None]:
    """OpenAI ``{"type", "function": {"name", "arguments"}}`` or flat ``{"name", "arguments"}``
    -> (our call, its id or None)."""
    if not isinstance(raw, dict) or raw.get("type", "function") != "function":
        raise BadConversation("malformed_tool_call", f"{what}: a tool call must be a function")
    fn = raw.get("function", raw)
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise BadConversation("malformed_tool_call", f"{what}: a tool call needs a name")
    args = fn.get("arguments")
    try:
        args = tool_arguments({} if args is None else args)
    except ChatFormatError as e:
        raise BadConversation("malformed_tool_call", f"{what}: {e}") from None
    call_id = raw.get("id")
    return ({"type": "function", "function": {"name": name, "arguments": args}},
            call_id if isinstance(call_id, str) else None)


def _openai_message(raw: dict, what: str) -> dict:
    """One message in the role/content shape -> ours, with call ids kept under private keys
    (``_ids``, ``_call_id``) until the turn order is checked."""
    role = raw.get("role")
    if role not in ROLES:
        raise BadConversation("unknown_role", f"{what} has role {role!r}; expected one of {ROLES}")
    content = _text(raw.get("content"), what)
    message = {"role": role, "content": content}
    calls = raw.get("tool_calls")
    if role == "assistant":
        if calls is not None and not isinstance(calls, list):
            raise BadConversation("malformed_tool_call", f"{what}: tool_calls must be a list")
        if calls:
            parsed = [_tool_call(c, what) for c in calls]
            message["tool_calls"] = [call for call, _ in parsed]
            message["_ids"] = [call_id for _, call_id in parsed]
        reasoning = raw.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise BadConversation("bad_message", f"{what}: reasoning_content must be a string")
        if reasoning and reasoning.strip():
            message["reasoning_content"] = reasoning
    elif calls:
        raise BadConversation("bad_message", f"{what}: only assistant messages call tools")
    if role == "tool":
        name, call_id = raw.get("name"), raw.get("tool_call_id")
        if not isinstance(name, str | None) or not isinstance(call_id, str | None):
            raise BadConversation("bad_message", f"{what}: tool name and call id are strings")
        message["name"] = name or ""
        message["_call_id"] = call_id
    elif not content.strip() and not message.get("tool_calls"):
        raise BadConversation("empty_content", f"{what} ({role}) has no content")
    return message


def _sharegpt_message(raw: dict, what: str) -> dict:
    speaker = raw.get("from")
    role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise BadConversation("unknown_role", f"{what} is from {speaker!r}")
    value = raw.get("value")
    if speaker != "function_call":
        return _openai_message({"role": role, "content": value, "name": raw.get("name")}, what)
    # The value is a call (or a list of parallel calls) as JSON: {"name": ..., "arguments": ...}.
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        raise BadConversation("malformed_tool_call", f"{what}: function_call is not JSON") from None
    calls = calls if isinstance(calls, list) else [calls]
    return _openai_message({"role": "assistant", "content": "", "tool_calls": calls}, what)


def normalized_messages(raw: list) -> list[dict]:
    """OpenAI or ShareGPT messages in the internal shape (consecutive ShareGPT function calls
    join the assistant message before them); raises BadConversation on a bad message."""
    out: list[dict] = []
    for i, m in enumerate(raw):
        what = f"message {i}"
        if not isinstance(m, dict):
            raise BadConversation("bad_message", f"{what} is not an object")
        if "role" not in m and "from" in m:
            message = _sharegpt_message(m, what)
            prev = out[-1] if out else None
            if m.get("from") == "function_call" and prev and prev["role"] == "assistant":
                # ShareGPT writes "text, then a call" (or parallel calls) as separate turns.
                prev.setdefault("tool_calls", []).extend(message["tool_calls"])
                prev.setdefault("_ids", []).extend(message["_ids"])
                continue
        else:
            message = _openai_message(m, what)
        out.append(message)
    return out


# --- one conversation ---------------------------------------------------------------------------


def _check_order(messages: list[dict]) -> None:
    """The turn-order rules of the module docstring; fills in tool names from their calls."""
    pending: list[tuple[str, str | None]] = []  # (name, id) of calls still waiting for results
    prev = None
    for i, m in enumerate(messages):
        role, what = m["role"], f"message {i} ({m['role']})"
        if role == "tool":
            if not pending:
                raise BadConversation("orphan_tool", f"{what} answers no tool call")
            # By call id where both sides have one, else by name, else the first waiting call.
            by_id = [j for j, (_, cid) in enumerate(pending) if cid and cid == m["_call_id"]]
            by_name = [j for j, (name, _) in enumerate(pending) if m["name"] in ("", name)]
            k = (by_id or by_name or [None])[0]
            if k is None or (m["name"] and m["name"] != pending[k][0]):
                raise BadConversation("orphan_tool", f"{what} names no pending call")
            m["name"] = pending.pop(k)[0]
        elif pending:
            raise BadConversation("unanswered_tool_call", f"{what} comes before all results")
        elif role == "system":
            if i != 0:
                raise BadConversation("bad_order", f"{what}: a system message must come first")
        elif role == "user":
            if prev not in (None, "system", "assistant"):
                raise BadConversation("bad_order", f"{what} follows a {prev} message")
        elif prev not in ("user", "tool"):  # assistant
            raise BadConversation("bad_order", f"{what} follows {prev or 'nothing'}")
        if role == "assistant" and m.get("tool_calls"):
            ids = m.get("_ids") or [None] * len(m["tool_calls"])
            pending = [(c["function"]["name"], cid) for c, cid in zip(m["tool_calls"], ids)]
        prev = role
    if pending:
        raise BadConversation("unanswered_tool_call", "the conversation ends before tool results")
    if prev != "assistant":
        raise BadConversation("bad_order", f"the conversation ends with a {prev} message")


def _size(messages: list[dict]) -> int:
    n = 0
    for m in messages:
        n += len(m["content"]) + len(m.get("reasoning_content", "")) + len(m.get("name", ""))
        for call in m.get("tool_calls", []):
            fn = call["function"]
            n += len(fn["name"]) + len(json.dumps(fn["arguments"], ensure_ascii=False))
    return n


def parse_messages(raw, max_messages: int = 64, max_chars: int = 32000) -> list[dict]:
    """Messages as read (OpenAI/TRL or ShareGPT items) -> our shape, checked against every rule
    of the module docstring; raises `BadConversation` (with its skip reason) otherwise."""
    if not isinstance(raw, list) or not raw:
        raise BadConversation("missing_messages", "messages must be a non-empty list")
    messages = normalized_messages(raw)
    if len(messages) > max_messages:
        raise BadConversation("too_many_messages", f"{len(messages)} > {max_messages} messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadConversation("no_assistant", "no assistant message")
    _check_order(messages)
    for m in messages:
        m.pop("_ids", None)
        m.pop("_call_id", None)
    size = _size(messages)
    if size > max_chars:
        raise BadConversation("overlong", f"{size} > {max_chars} characters")
    return messages


def parse_record(record, where: str, max_messages: int = 64,
                 max_chars: int = 32000) -> Conversation:
    """One JSON record -> Conversation; raises `BadConversation` for a record to skip."""
    if not isinstance(record, dict):
        raise BadConversation("not_object", f"a {type(record).__name__}, not an object")
    raw = record["messages"] if "messages" in record else record.get("conversations")
    if not isinstance(raw, list) or not raw:
        raise BadConversation("missing_messages", "no non-empty 'messages' list")
    system = record.get("system")
    if isinstance(system, str) and system.strip():  # ShareGPT's top-level system prompt
        raw = [{"role": "system", "content": system}, *raw]
    messages = parse_messages(raw, max_messages, max_chars)
    extra = {k: record[k] for k in ("task", "subject", "answer") if isinstance(record.get(k), str)}
    return Conversation(messages=messages, source=where, **extra)


def read_conversations(specs: list[str], max_messages: int = 64, max_chars: int = 32000
                       ) -> tuple[list[Conversation], ConversationSkips]:
    """Every usable conversation of the specs, in order, plus what was skipped and why.

    Raises SourceError for a spec that cannot be read (missing file, no `datasets`, offline)
    and ConversationError for one that gives no usable conversation at all.
    """
    if isinstance(specs, str | os.PathLike):  # a lone string would be iterated char by char
        specs = [specs]
    if not specs:
        raise ConversationError(f"no conversation sources given; {ACCEPTED_FORMS}")
    if max_messages < 1 or max_chars < 1:
        raise ValueError("max_messages and max_chars must be positive")
    return parse_all(specs, CONVERSATIONS,
                     lambda record, where: parse_record(record, where, max_messages, max_chars),
                     ConversationError)


def split_sources(specs: list[str], val_fraction: float
                  ) -> tuple[list[Conversation], list[Conversation], str]:
    """(train, heldout, skip summary). The built-in set has its own split (by subject); other
    sources are split by a hash of each conversation, so the split never changes between runs."""
    return split_specs(specs, read_conversations, builtin_assistant.SPECS,
                       lambda c: c.messages, val_fraction)
