"""The context window as RAM: what a turn's prompt may hold, and what gives way when the
conversation outgrows it, visibly.

    budget = ContextBudget(context=256, reserve=64)
    fitted = fit(tok, messages, budget, summarize=None)
    fitted.messages        # what the model is shown this turn
    fitted.notes           # what was dropped or summarised, for the user to see

The policy, in order, until the prompt fits `context - reserve` tokens:
1. the oldest tool outputs are replaced by a one-line stub (the call stays: the model still sees
   it asked);
2. the oldest turns (never the system message, never the last user message) are summarised by
   the model itself when a `summarize` function is given, else dropped, into one system note;
then, only while fewer than `min_answer` tokens are left for the answer (what the model read
this turn is what it answers from: a short answer from it beats a long one without it):
3. this turn's own tool outputs (a long page or passage read just now);
4. the last user message keeps its end.
The conversation itself is never changed: each turn is fitted anew from all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llmos import chat_format

STUB = "[tool output dropped to fit the context window]"
SUMMARY_TOKENS = 48  # room kept for a summary of the turns that give way


@dataclass(frozen=True)
class ContextBudget:
    context: int  # the model's window, prompt and answer together
    reserve: int = 64  # tokens kept free for the answer
    min_answer: int = 16  # ... of which this turn's own messages give way only for these

    @property
    def prompt(self) -> int:
        return max(16, self.context - self.reserve)

    @property
    def hard_prompt(self) -> int:
        return max(self.prompt, self.context - min(self.min_answer, self.reserve))


@dataclass
class Fitted:
    messages: list[dict]
    tokens: int
    notes: list[str] = field(default_factory=list)


def fit(tok, messages: list[dict], budget: ContextBudget,
        summarize: Callable[[list[dict]], str] | None = None,
        tools: list[dict] | None = None) -> Fitted:
    """The messages as they fit the budget (with `tools`, the function schemas the prompt
    lists), and notes on what gave way."""
    def count(m: list[dict]) -> int:
        return len(chat_format.render(tok, m, tools, add_generation_prompt=True).ids)

    msgs = [dict(m) for m in messages]
    n = count(msgs)
    if n <= budget.prompt:
        return Fitted(msgs, n)
    notes = []
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs))
    # 1. tool outputs, oldest first (those after the last user message are the turn's own)
    stubbed = 0
    for i, m in enumerate(msgs):
        if n <= budget.prompt or i >= last_user:
            break
        if m["role"] == "tool" and m.get("content") != STUB:
            m["content"] = STUB
            stubbed += 1
            n = count(msgs)
    if stubbed:
        notes.append(f"dropped {stubbed} old tool output{'s' * (stubbed > 1)}")
    # 2. whole turns, oldest first, into one note: how many is decided with the counted note
    # and room for a summary, so the model summarises once
    head = 1 if msgs and msgs[0]["role"] == "system" else 0
    room = SUMMARY_TOKENS if summarize else 0
    older, keep = [], msgs[head:]
    while n + room > budget.prompt and keep and 0 < _first_turn_end(keep) <= _last_user(keep):
        end = _first_turn_end(keep)
        older, keep = older + keep[:end], keep[end:]
        n = count(_merge_system(msgs[:head] + [_note_message(older, None)] + keep))
    if older:
        turns = sum(m["role"] == "user" for m in older)
        how = "summarised" if summarize else "dropped"
        notes.append(f"{how} the {turns} oldest turn{'s' * (turns != 1)} "
                     f"({len(older)} messages)")
        msgs = _merge_system(msgs[:head] + [_note_message(older, summarize)] + keep)
        n = count(msgs)
    # 3. this turn's own tool outputs, when they alone overflow (a long page, a long passage)
    limit = budget.hard_prompt
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs))
    turn_tools = [i for i in range(last_user + 1, len(msgs))
                  if msgs[i]["role"] == "tool" and msgs[i].get("content") != STUB]
    if n > limit and turn_tools:
        for i in turn_tools:
            msgs[i] = {**msgs[i], "content": STUB}
        n = count(msgs)
        notes.append(f"dropped {len(turn_tools)} tool output{'s' * (len(turn_tools) > 1)} "
                     "of this turn")
    # 4. the newest messages alone are too long: keep the end of the last user message
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if n > limit and users and isinstance(msgs[users[-1]].get("content"), str):
        i = users[-1]
        text = msgs[i]["content"]
        ids = tok.encode(text, add_special_tokens=False).ids
        cut = max(1, len(ids) - (n - limit))
        msgs[i]["content"] = tok.decode(ids[-cut:])
        n = count(msgs)
        notes.append(f"kept the last {cut} of {len(ids)} tokens of the message")
    return Fitted(msgs, n, notes)


def _first_turn_end(msgs: list[dict]) -> int:
    """Index after the first turn: a user message and everything up to the next user one."""
    for i in range(1, len(msgs)):
        if msgs[i]["role"] == "user":
            return i
    return len(msgs)


def _last_user(msgs: list[dict]) -> int:
    return max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=0)


def _note_message(older: list[dict], summarize) -> dict:
    if summarize is None:
        users = sum(m["role"] == "user" for m in older)
        text = f"({users} earlier turn{'s' * (users != 1)} left out to fit the context window.)"
    else:
        text = f"Summary of the earlier conversation: {summarize(older).strip()}"
    return {"role": "system", "content": text}


def _merge_system(msgs: list[dict]) -> list[dict]:
    """The chat format has one system message, first: fold a note into it."""
    if len(msgs) > 1 and msgs[0]["role"] == "system" and msgs[1]["role"] == "system":
        first = {**msgs[0], "content": f"{msgs[0]['content']}\n\n{msgs[1]['content']}"}
        return [first, *msgs[2:]]
    return msgs
