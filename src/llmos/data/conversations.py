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
  standard library (see `llmos.data.assistant`), no download.

Messages come out in one internal shape whatever the input:
``{"role": "system"|"user"|"assistant"|"tool", "content": str}``, where an assistant message
may add ``"tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict}}]``
and ``"reasoning_content": str`` (a think block), and a tool message adds ``"name"`` (the tool
that answered). Other keys (ids, weights, ...) are dropped.

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

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmos.chat_format import ChatFormatError, tool_arguments
from llmos.data.sources import (
    SkipReport,
    SourceError,
    _parse_hf_spec,
    _walk_sorted,
    iter_jsonl,
)

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker names -> roles. "function_call" holds a JSON call and becomes an assistant
# tool call; "observation" is that tool's output (LLaMA-Factory's names).
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "function_call": "assistant", "tool": "tool", "observation": "tool",
}
FILE_SUFFIXES = {".jsonl", ".json"}
BUILTIN_SPECS = ("builtin:assistant", "builtin:assistant:heldout")
SUMMARY_EXAMPLES = 3

ACCEPTED_FORMS = (
    "accepted conversation sources: a .jsonl file ({\"messages\": [...]} or ShareGPT "
    "{\"conversations\": [...]} per line), a .json list of those, a folder of them, "
    "'hf:NAME[:CONFIG][@N]', 'builtin:assistant' or 'builtin:assistant:heldout'"
)


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


def _messages(raw: list) -> list[dict]:
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
    messages = _messages(raw)
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


# --- sources ------------------------------------------------------------------------------------


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

    for path in _walk_sorted(root, skip_dir):
        if path.suffix.lower() in FILE_SUFFIXES:
            yield from _read_file(path, str(path), skips)
        else:
            skips.add("unsupported_type", str(path))


def _iter_path(spec: str, skips: ConversationSkips):
    # Not a generator, so a missing path fails when the spec is given, not when it is read.
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"conversation source {spec!r}: no such file or folder. "
                          f"{ACCEPTED_FORMS}")
    if path.is_dir():
        return _iter_folder(path, skips)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise SourceError(f"conversation source {spec!r}: expected a .jsonl or .json file. "
                          f"{ACCEPTED_FORMS}")
    return _read_file(path, spec, skips)


def _iter_hf(spec: str, fields: tuple[str, ...] = ("messages", "conversations"),
             kind: str = "conversation", offline: str = "builtin:assistant"):
    # Not a generator, so a bad spec, a missing library or no network fails at once.
    # `fields`: a first record with none of them is refused (it is some other kind of set).
    name, config, limit = _parse_hf_spec(spec)
    try:
        import datasets
    except ImportError as e:
        raise SourceError(
            f"{kind} source {spec!r} needs the Hugging Face `datasets` library: "
            "pip install datasets (or pip install llmos[hf])"
        ) from e
    try:
        records = iter(datasets.load_dataset(name, config, split="train", streaming=True))
    except Exception as e:  # the library raises many types (HTTP, file-not-found, config) here
        raise SourceError(
            f"could not load {spec!r}: the Hugging Face hub could not be reached, or the dataset "
            "or its train split is not there; hf: sources need network access (offline, use a "
            f".jsonl file or {offline})"
        ) from e
    return _hf_records(records, spec, name, limit, fields)


def _hf_records(records, spec: str, name: str, limit: int | None,
                fields: tuple[str, ...] = ("messages", "conversations")):
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


def _iter_builtin(spec: str):
    if spec not in BUILTIN_SPECS:
        raise SourceError(f"unknown builtin conversation source {spec!r}; {ACCEPTED_FORMS}")
    from llmos.data.assistant import assistant_dataset  # it imports this module

    train, heldout = assistant_dataset()
    return ((c.source, c.to_dict()) for c in (heldout if spec.endswith(":heldout") else train))


def iter_records(spec: str, skips: ConversationSkips) -> Iterator[tuple[str, object]]:
    """(place, raw record) from one spec, in a deterministic order; unreadable lines counted."""
    if spec.startswith("builtin:"):
        return _iter_builtin(spec)
    if spec.startswith("hf:"):
        return _iter_hf(spec)
    if not spec.strip():
        raise SourceError(f"empty conversation source; {ACCEPTED_FORMS}")
    return _iter_path(spec, skips)


def read_conversations(specs: list[str], max_messages: int = 64, max_chars: int = 32000
                       ) -> tuple[list[Conversation], ConversationSkips]:
    """Every usable conversation of the specs, in order, plus what was skipped and why.

    Raises SourceError for a spec that cannot be read (missing file, no `datasets`, offline)
    and ConversationError for one that gives no usable conversation at all.
    """
    if isinstance(specs, str):  # a lone string would be iterated character by character
        specs = [specs]
    if not specs:
        raise ConversationError(f"no conversation sources given; {ACCEPTED_FORMS}")
    if max_messages < 1 or max_chars < 1:
        raise ValueError("max_messages and max_chars must be positive")
    return parse_all(specs, iter_records,
                     lambda record, where: parse_record(record, where, max_messages, max_chars),
                     "conversation", ConversationError)


def parse_all(specs: list[str], records, parse, noun: str, error: type[Exception]
              ) -> tuple[list, ConversationSkips]:
    """`parse(record, where)` over `records(spec, skips)` of every spec, in order; a record it
    rejects with BadConversation is skipped and counted. A spec with nothing usable raises
    `error`."""
    skips = ConversationSkips()
    out: list = []
    for spec in specs:
        found = 0
        for where, record in records(spec, skips):
            try:
                out.append(parse(record, where))
                found += 1
            except BadConversation as e:
                skips.add(e.reason, where)
        if not found:
            raise error(f"no usable {noun} in {spec!r}; {skips.summary()}")
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
