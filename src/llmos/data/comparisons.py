"""Comparisons for reward modelling and DPO: readers, validation and the built-in set.

A *comparison spec* names where pairs come from:

- a ``.jsonl`` file, one pair per line in TRL's preference shape, either conversational
  ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` or plain
  ``{"prompt": "text", "chosen": "text", "rejected": "text"}`` (the prompt becomes a user
  message, each answer an assistant message). Without ``prompt`` (TRL's "implicit prompt"),
  ``chosen`` and ``rejected`` are whole conversations and their shared first messages are the
  prompt. A ``.json`` list of such records, or a folder of these files, works too.
- ``hf:NAME[:CONFIG][@N]`` - a Hugging Face dataset's train split, streamed (opt-in: needs
  ``datasets`` and network).
- ``builtin:comparisons`` / ``builtin:comparisons:heldout`` - made from ``builtin:assistant``
  (see `builtin_comparisons`), no download. The held-out pairs have the held-out prompts of
  ``builtin:assistant:heldout``, so a model tuned on the train pairs never saw them.

Messages are checked by the conversation rules (`llmos.data.conversations`): prompt + chosen
and prompt + rejected must each be a valid conversation, and each answer starts with an
assistant message. A record that breaks a rule is skipped and counted with its place
(``file:line``) under the conversation reasons or these: ``missing_field`` (no ``chosen`` /
``rejected``, or a field of the wrong type), ``no_prompt`` (nothing before the answers),
``bad_answer`` (an answer that does not start with an assistant message), ``same_answers``
(chosen equals rejected: nothing to learn).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from llmos.data.conversations import (
    FILE_SUFFIXES,
    BadConversation,
    Conversation,
    ConversationSkips,
    _iter_folder,
    _iter_hf,
    _messages,
    _read_file,
    parse_all,
    parse_messages,
    split_specs,
)
from llmos.data.sources import SourceError

BUILTIN_SPECS = ("builtin:comparisons", "builtin:comparisons:heldout")
ACCEPTED_FORMS = (
    "accepted comparison sources: a .jsonl file ({\"prompt\", \"chosen\", \"rejected\"} per "
    "line, messages or plain strings), a .json list of those, a folder of them, "
    "'hf:NAME[:CONFIG][@N]', 'builtin:comparisons' or 'builtin:comparisons:heldout'"
)


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


# --- one record ---------------------------------------------------------------------------------


def _as_messages(value, role: str, field: str) -> list:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        return value
    raise BadConversation("missing_field", f"'{field}' must be a string or a non-empty list")


def _shared_prefix(a: list, b: list) -> int:
    """How many first messages two conversations share, stopping before an assistant message
    (an answer starts there)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n > 0 and isinstance(a[n - 1], dict) and a[n - 1].get("role") == "assistant":
        n -= 1
    return n


def parse_comparison(record, where: str, max_messages: int = 64,
                     max_chars: int = 32000) -> Comparison:
    """One JSON record -> Comparison; raises `BadConversation` (with its reason) to skip it."""
    if not isinstance(record, dict):
        raise BadConversation("not_object", f"a {type(record).__name__}, not an object")
    if "chosen" not in record or "rejected" not in record:
        raise BadConversation("missing_field", "a comparison needs 'chosen' and 'rejected'")
    prompt = record.get("prompt")
    if prompt is None:  # implicit prompt: two whole conversations sharing their start
        chosen, rejected = record["chosen"], record["rejected"]
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise BadConversation("missing_field", "without 'prompt', 'chosen' and 'rejected' "
                                  "must be conversations (lists of messages)")
        n = _shared_prefix(chosen, rejected)
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        prompt = _as_messages(prompt, "user", "prompt") if prompt != [] else []
        chosen = _as_messages(record["chosen"], "assistant", "chosen")
        rejected = _as_messages(record["rejected"], "assistant", "rejected")
    if not prompt:
        raise BadConversation("no_prompt", "nothing comes before the answers")
    n_prompt = len(_messages(prompt))  # as normalized (ShareGPT calls can merge)
    full = [parse_messages(prompt + answer, max_messages, max_chars)
            for answer in (chosen, rejected)]
    answers = [f[n_prompt:] for f in full]
    for name, answer in zip(("chosen", "rejected"), answers):
        if not answer or answer[0]["role"] != "assistant":
            raise BadConversation("bad_answer", f"'{name}' must start with an assistant message")
    if answers[0] == answers[1]:
        raise BadConversation("same_answers", "chosen and rejected are the same")
    extra = {k: record[k] for k in ("task", "subject", "answer", "kind")
             if isinstance(record.get(k), str)}
    return Comparison(full[0][:n_prompt], answers[0], answers[1], where, **extra)


# --- sources ------------------------------------------------------------------------------------


def _iter_path(spec: str, skips: ConversationSkips):
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"comparison source {spec!r}: no such file or folder. {ACCEPTED_FORMS}")
    if path.is_dir():
        return _iter_folder(path, skips)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise SourceError(f"comparison source {spec!r}: expected a .jsonl or .json file. "
                          f"{ACCEPTED_FORMS}")
    return _read_file(path, spec, skips)


def _iter_builtin(spec: str):
    if spec not in BUILTIN_SPECS:
        raise SourceError(f"unknown builtin comparison source {spec!r}; {ACCEPTED_FORMS}")
    train, heldout = builtin_comparisons()
    return ((c.source, c.to_dict()) for c in (heldout if spec.endswith(":heldout") else train))


def iter_records(spec: str, skips: ConversationSkips) -> Iterator[tuple[str, object]]:
    if spec.startswith("builtin:"):
        return _iter_builtin(spec)
    if spec.startswith("hf:"):
        return _iter_hf(spec, fields=("chosen",), kind="comparison",
                        offline="builtin:comparisons")
    if not spec.strip():
        raise SourceError(f"empty comparison source; {ACCEPTED_FORMS}")
    return _iter_path(spec, skips)


def read_comparisons(specs: list[str], max_messages: int = 64, max_chars: int = 32000
                     ) -> tuple[list[Comparison], ConversationSkips]:
    """Every usable comparison of the specs, in order, plus what was skipped and why.

    Raises SourceError for a spec that cannot be read (missing file, no `datasets`, offline)
    and ComparisonError for one that gives no usable comparison at all."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise ComparisonError(f"no comparison sources given; {ACCEPTED_FORMS}")
    return parse_all(specs, iter_records,
                     lambda record, where: parse_comparison(record, where, max_messages, max_chars),
                     "comparison", ComparisonError)


# --- the built-in set ---------------------------------------------------------------------------

SEED = "llmos-comparisons-1"
EVASIVE_FRACTION = 0.25  # share of prompts that also get an evasive non-answer as rejected
# Share of prompts that also get the gold answer stuck in a loop as rejected. Small models
# decoding greedily loop ("the height of the height of ..."); without these pairs a reward
# model preferred the looping answer in 15 of 25 held-out calls. A tenth teaches it that and
# leaves the other kinds' accuracy as it was; a quarter cost them about 2 points (docs/LOG.md).
LOOP_FRACTION = 0.1
# How long a loop runs. The evaluation's loops run to its 128 new tokens, but 160-400 characters
# (about 140 tokens, against 20 for the other answers) made the reward stage 33% slower.
LOOP_CHARS = (60, 160)
EVASIVE = (
    "I'm not sure. You could look it up in the documentation.",
    "That's a good question! It depends on many factors.",
    "I can't answer that.",
    "Sorry, I don't know.",
    "It depends on what you need. Could you be more specific?",
    "There are several ways to think about this, and the answer varies.",
)
WRONG_IDENTITY = (
    "I'm ChatGPT, a large language model trained by OpenAI.",
    "I am a human assistant here to help you.",
    "I'm an AI assistant. I can't share details about myself.",
)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _near(rng: random.Random, value: int) -> int:
    """A plausible wrong result: off by a little, by a digit's place, or digits swapped."""
    s = str(abs(value))
    if len(s) >= 2 and rng.random() < 0.3:
        i = rng.randrange(len(s) - 1)
        swapped = int(s[:i] + s[i + 1] + s[i] + s[i + 2:])
        if swapped != abs(value):
            return swapped if value >= 0 else -swapped
    return value + rng.choice((-1, 1)) * rng.choice((1, 2, 10, 11, 100))


def _looping(rng: random.Random, text: str) -> str | None:
    """`text` stuck in a loop partway: a span of one to four words (or, a third of the time, a
    few characters with no space) repeated until the answer runs out of tokens mid-span."""
    words = re.findall(r"\S+\s*", text)
    if len(words) < 2:
        return None
    cut = rng.randrange(1, len(words))
    head = "".join(words[:cut])
    if rng.random() < 1 / 3:
        size = min(rng.randint(2, 6), len(head.rstrip()))
        span = head.rstrip()[-size:]
        head = head.rstrip()
    else:
        n = rng.randint(1, min(4, cut))
        span = "".join(words[cut - n:cut])
        span = span if span.endswith(" ") else span + " "
    if not span.strip():
        return None
    length = rng.randint(*LOOP_CHARS)
    repeats = max(3, (length - len(head)) // len(span) + 1)
    return (head + span * repeats)[:max(length, len(head) + 3 * len(span))]


def _final_text_replaced(c: Conversation, text: str) -> list[dict]:
    """The gold answer's turns after the last user message (tool calls and results kept), its
    final text replaced by `text`."""
    last_user = max(i for i, m in enumerate(c.messages) if m["role"] == "user")
    return [*c.messages[last_user + 1:-1], *_assistant(text)]


def _replace_number(text: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\d.]){re.escape(old)}(?![\d])", new, text)


class _Wrong:
    """Makes the rejected answers of the built-in set; the stdlib API gives other functions'
    docstrings and signatures."""

    def __init__(self):
        from llmos.data.assistant import stdlib_api

        api = stdlib_api()
        self.by_name = {e.name: e for e in api}
        self.by_kind: dict[str, list] = {}
        for e in api:
            self.by_kind.setdefault(e.kind, []).append(e)
        self.with_signature = [e for e in api if e.signature]

    def other(self, rng, pool, name):
        while True:
            e = rng.choice(pool)
            if e.name != name:
                return e

    def docstring(self, rng, c: Conversation) -> list[dict] | None:
        from llmos.data.assistant import describe

        e = self.by_name.get(c.subject)
        if e is None:
            return None
        o = self.other(rng, self.by_kind[e.kind], e.name)
        if o.summary == e.summary:
            return None
        return _assistant(describe(replace(o, name=e.name, module=e.module)))

    def signature(self, rng, text: str, c: Conversation) -> list[dict] | None:
        e = self.by_name.get(c.subject)
        if e is None or not e.signature or e.signature not in text:
            return None
        o = self.other(rng, self.with_signature, e.name)
        wrong = e.name + o.signature[len(o.name):]
        if wrong == e.signature:
            return None
        return _assistant(text.replace(e.signature, wrong))

    def module(self, rng, text: str, c: Conversation) -> list[dict] | None:
        e = self.by_name.get(c.subject)
        if e is None or f"`{e.module}` module" not in text:
            return None
        o = self.other(rng, self.by_kind["module"], e.module)
        return _assistant(text.replace(f"`{e.module}` module", f"`{o.name}` module"))

    def result(self, rng, c: Conversation, skip_tool: bool) -> list[dict] | None:
        """The same question answered with a wrong number: after the tool (a misread result)
        or without calling it (a guess)."""
        final = c.messages[-1]["content"]
        try:
            right = int(c.answer)
        except ValueError:
            return None
        wrong = str(_near(rng, right))
        text = _replace_number(final, c.answer, wrong)
        if text == final:
            return None
        return _assistant(text) if skip_tool else _final_text_replaced(c, text)

    @staticmethod
    def looping(rng, c: Conversation) -> list[dict] | None:
        """The gold answer, tool turns and all, with its final text stuck in a loop."""
        text = _looping(rng, c.messages[-1]["content"])
        return None if text is None else _final_text_replaced(c, text)

    @staticmethod
    def calculator(c: Conversation) -> list[dict]:
        """A problem the user said to do without the calculator, done with it anyway."""
        from llmos.data.assistant import tool_call

        return [tool_call("calculator", {"expression": c.subject}),
                {"role": "tool", "name": "calculator", "content": c.answer},
                *_assistant(f"{c.subject} = {c.answer}.")]

    def rejected(self, rng, c: Conversation) -> tuple[str, list[dict] | None]:
        final = c.messages[-1]["content"]
        if c.task == "docstring":
            return "wrong_docstring", self.docstring(rng, c)
        if c.task in ("signature", "followup") and self.by_name.get(c.subject) and (
                self.by_name[c.subject].signature in final):
            return "wrong_signature", self.signature(rng, final, c)
        if c.task == "followup":
            return "wrong_module", self.module(rng, final, c)
        if c.task == "arithmetic":
            skip = rng.random() < 0.5
            return ("skipped_tool" if skip else "wrong_sum"), self.result(rng, c, skip)
        if c.task == "python":
            return "skipped_tool", self.result(rng, c, True)
        if c.task in ("mental", "mental2"):
            return "used_tool", self.calculator(c)
        if c.task == "identity":
            return "wrong_identity", _assistant(rng.choice(WRONG_IDENTITY))
        return "", None


def _pairs(conversations: list[Conversation], source: str, wrong: _Wrong) -> list[Comparison]:
    rng = random.Random(f"{SEED}:{source}")
    loop_rng = random.Random(f"{SEED}:loop:{source}")  # its own, so the other pairs stay put
    out, mental = [], set()
    for c in conversations:
        if c.task == "mental":
            # Asked several times in different words to teach one-digit facts; one comparison
            # a problem is enough, and more would crowd out the kinds that are hard to judge.
            if c.subject in mental:
                continue
            mental.add(c.subject)
        last_user = max(i for i, m in enumerate(c.messages) if m["role"] == "user")
        prompt, chosen = c.messages[:last_user + 1], c.messages[last_user + 1:]
        kind, rejected = wrong.rejected(rng, c)
        made = [(kind, rejected)] if rejected else []
        if not made or rng.random() < EVASIVE_FRACTION:
            made.append(("evasive", _assistant(rng.choice(EVASIVE))))
        if loop_rng.random() < LOOP_FRACTION and (looped := wrong.looping(loop_rng, c)):
            made.append(("looping", looped))
        for kind, rejected in made:
            out.append(Comparison(prompt, chosen, rejected, source, c.task, c.subject,
                                  c.answer, kind))
    return out


@functools.lru_cache(maxsize=1)
def builtin_comparisons() -> tuple[list[Comparison], list[Comparison]]:
    """(train, heldout) pairs from `builtin:assistant`'s (train, heldout) conversations: the
    gold answer against a plausible wrong one (another function's docstring or signature, the
    wrong module, a wrong sum after the calculator, a guess that skipped the tool it needed,
    the calculator used where the user ruled it out, a wrong identity); for a quarter of
    the prompts (and those with no such wrong answer), an evasive non-answer; and for a tenth,
    the gold answer stuck in a loop. Deterministic for a given Python."""
    from llmos.data.assistant import assistant_dataset

    train, heldout = assistant_dataset()
    wrong = _Wrong()
    return (_pairs(train, BUILTIN_SPECS[0], wrong), _pairs(heldout, BUILTIN_SPECS[1], wrong))


def split_sources(specs: list[str], val_fraction: float
                  ) -> tuple[list[Comparison], list[Comparison], str]:
    """(train, heldout, skip summary). The built-in set keeps builtin:assistant's split; other
    sources are split by a hash of the prompt, so every pair of one prompt lands on one side
    and the split never changes between runs."""
    return split_specs(specs, read_comparisons, BUILTIN_SPECS, lambda c: c.prompt,
                       val_fraction)
