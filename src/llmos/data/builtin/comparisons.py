"""``builtin:comparisons``: pairs made from ``builtin:assistant``, no download. Each prompt's gold
answer is chosen against a plausible wrong one (another function's docstring or signature, the
wrong module, a wrong sum after the calculator, a guess that skipped the tool it needed, the
calculator used where the user ruled it out, a wrong identity), an evasive non-answer, or the
gold answer stuck in a loop. The held-out pairs have the held-out prompts of
``builtin:assistant:heldout``, so a model tuned on the train pairs never saw them.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import replace

from llmos.data.builtin.assistant import assistant_dataset
from llmos.data.builtin.stdlib_api import describe, stdlib_api
from llmos.data.builtin.turns import tool_call
from llmos.data.records import Comparison, Conversation, prompt_of

SPECS = ("builtin:comparisons", "builtin:comparisons:heldout")
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
    return [*c.messages[len(prompt_of(c)):-1], *_assistant(text)]


def _replace_number(text: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\d.]){re.escape(old)}(?![\d])", new, text)


class _Wrong:
    """Makes the rejected answers of the built-in set; the stdlib API gives other functions'
    docstrings and signatures."""

    def __init__(self):
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
        prompt = prompt_of(c)
        chosen = c.messages[len(prompt):]
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
    train, heldout = assistant_dataset()
    wrong = _Wrong()
    return (_pairs(train, SPECS[0], wrong), _pairs(heldout, SPECS[1], wrong))
