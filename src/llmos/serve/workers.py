"""Workers: one thread per choice of a request, running the agent loop over the model's batch.

Each choice becomes a `Job`; its worker runs `llmos.agent.loop.respond` over the scheduler's
token stream (`Counted`), turns what the loop reports into OpenAI-shaped deltas and hands them to
the event loop through `emit`. `Choices` starts the workers and queues what they emit; a client
that goes away sets `cancel`, which takes the rows out of the batch.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from llmos import chat_format
from llmos.agent.loop import STOP, respond
from llmos.chat_format import StopText, TurnText
from llmos.infer.engine import SamplingParams
from llmos.serve.openai_schema import APIError
from llmos.serve.served import ServedModel


@dataclass
@dataclass
class Job:
    """What one choice needs: the model, the sampling, and how to end."""

    served: ServedModel
    params: SamplingParams
    stop: list[str]
    ignore_eos: bool


class PromptTooLong(Exception):
    pass


class Counted:
    """The scheduler's token stream for one choice: counts tokens, refuses a first prompt that
    does not fit the context (a later round's prompt just ends, as "length")."""

    def __init__(self, job: Job, emit: Emit, cancel: threading.Event):
        self.job, self.emit, self.cancel = job, emit, cancel
        self.prompt_tokens = self.completion_tokens = 0
        self.calls = 0

    def __call__(self, prompt: list[int], params: SamplingParams):
        self.calls += 1
        context = self.job.served.context
        if len(prompt) >= context:
            if self.calls == 1:
                raise PromptTooLong(f"The prompt is {len(prompt)} tokens but model "
                                    f"{self.job.served.name!r} has a context of {context} "
                                    "tokens; shorten the conversation.")
            return
        if self.calls == 1:
            self.prompt_tokens = len(prompt)
            self.emit(("started",))
        if self.job.ignore_eos:
            params = replace(params, stop_tokens=())
        for t in self.job.served.scheduler.stream(prompt, params, self.cancel):
            if t != STOP:
                self.completion_tokens += 1
            yield t

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


# ---- workers: one thread per choice, deltas out through `emit` --------------------------------

Emit = Callable[[tuple], None]  # ("delta", {...}) | ("finish", reason, usage) | ("error", exc)


def finish_reason(loop_reason: str) -> str:
    # The tool-round limit ends an answer early, as a token limit does.
    return {"tool_rounds": "length"}.get(loop_reason, loop_reason)


def run_chat(job: Job, messages: list[dict], tools: dict | None, declared: list[dict] | None,
             max_rounds: int, emit: Emit, cancel: threading.Event,
             force: str | None = None, window=None, confirm: frozenset[str] = frozenset()
             ) -> None:
    """One choice of a chat answer. With a `window` (agent/context.py) the conversation is
    fitted to the context instead of refused, and what gave way is a "context" tool event.
    Calls to the tools in `confirm` come back as `tool_calls`, for the user to allow."""
    counted = Counted(job, emit, cancel)
    declared_names = {d["function"]["name"] for d in declared or []} | confirm
    events = respond(counted, job.served.tok, messages, job.params, tools=tools,
                     declared=declared, max_rounds=max_rounds, force=force, window=window,
                     confirm=confirm)
    turn, stops = TurnText(), StopText(job.stop)
    said = said_this_turn = False  # content so far: the answer, this round
    reason, calls = "stop", []

    def pieces(items) -> bool:
        """Emit visible pieces; True when a stop sequence ended the answer."""
        nonlocal said, said_this_turn
        for key, text in items:
            if key == "reasoning_content":
                emit(("delta", {key: text}))
                continue
            if said and not said_this_turn:
                text = "\n\n" + text  # the answer goes on after a built-in tool's result
            said = said_this_turn = True
            visible, hit = stops.push(text)
            if visible:
                emit(("delta", {"content": visible}))
            if hit:
                return True
        return False

    try:
        held_context: list[dict] = []  # told once the prompt is accepted ("started")
        for ev in events:
            if cancel.is_set():
                return
            if held_context and counted.calls and ev.kind != "context":
                emit(("delta", {"llmos_tool_events": held_context}))
                held_context = []
            if ev.kind == "text" and pieces(turn.push(ev.text)):
                break
            elif ev.kind == "turn":
                if pieces(turn.finish()):
                    break
                turn, said_this_turn = TurnText(), False
            elif ev.kind == "tool_call":
                fn = ev.data["function"]
                if fn["name"] in declared_names:
                    calls.append(ev.data)
                else:
                    emit(("delta", {"llmos_tool_events": [
                        {"type": "tool_call", "id": ev.data["id"], "name": fn["name"],
                         "arguments": json.dumps(fn["arguments"], ensure_ascii=False)}]}))
            elif ev.kind == "tool_result":
                emit(("delta", {"llmos_tool_events": [
                    {"type": "tool_result", "tool_call_id": ev.data.get("tool_call_id"),
                     "name": ev.data.get("name"), "content": ev.text}]}))
            elif ev.kind == "error":
                emit(("delta", {"llmos_tool_events": [{"type": "error", "content": ev.text}]}))
            elif ev.kind == "context":
                held_context.append({"type": "context", "content": ev.text})
            elif ev.kind == "done":
                reason = finish_reason(ev.data["finish_reason"])
        else:
            if held := stops.flush():
                emit(("delta", {"content": held}))
        if calls:
            emit(("delta", {"tool_calls": [
                {"index": i, "id": c["id"], "type": "function",
                 "function": {"name": c["function"]["name"],
                              "arguments": json.dumps(c["function"]["arguments"],
                                                      ensure_ascii=False)}}
                for i, c in enumerate(calls)]}))
        emit(("finish", reason, counted.usage()))
    finally:
        events.close()  # closes the token stream: the row leaves the batch


def guarded(emit: Emit, guard) -> Emit:
    """`emit` behind an output guard (agent/output_guard.py; None: `emit` itself): the answer's
    text is held until it is finished, checked, and sent in one piece, as the guard lets it
    through; what the guard changed is told as a "guard" tool event. Everything else passes as
    it comes."""
    if guard is None:
        return emit
    held: list[str] = []

    def wrapped(item: tuple) -> None:
        if item[0] == "delta" and "content" in item[1]:
            held.append(item[1]["content"])
            rest = {k: v for k, v in item[1].items() if k != "content"}
            if rest:
                emit(("delta", rest))
            return
        if item[0] == "finish" and held:
            shown, reasons = guard.check("".join(held))
            held.clear()
            if reasons:
                emit(("delta", {"llmos_tool_events": [
                    {"type": "guard", "content": "; ".join(reasons)}]}))
            emit(("delta", {"content": shown}))
        emit(item)

    return wrapped


class Choices:
    """Runs one worker thread per choice and hands what they emit to the event loop."""

    def __init__(self, workers: list[Callable[[Emit, threading.Event], None]], n: int = 1):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.count = self.live = len(workers)
        self.n = n  # choices per prompt: usage counts each prompt once
        for i, work in enumerate(workers):
            threading.Thread(target=self._run, args=(i, work), daemon=True).start()

    @classmethod
    def posted(cls, count: int, n: int = 1) -> Choices:
        """`count` choices with no worker threads: their items come through `put`, on the
        event loop's thread (serve/posting.py)."""
        choices = cls([], n)
        choices.count = choices.live = count
        return choices

    def put(self, index: int, item: tuple) -> None:
        self.queue.put_nowait((index, item))

    def _run(self, index: int, work) -> None:
        def emit(item):
            try:
                self.loop.call_soon_threadsafe(self.put, index, item)
            except RuntimeError:  # the event loop is gone (shutdown)
                self.cancel.set()

        try:
            work(emit, self.cancel)
        except Exception as e:  # every failure goes back to the client
            emit(("error", e))
        emit(("end",))

    async def start(self) -> None:
        """Wait until every choice's prompt is accepted, so that a prompt error becomes a 400
        before any response is sent."""
        started = 0
        while started < self.live:
            _, item = await self.queue.get()
            if item[0] == "error":
                self.cancel.set()
                raise as_api_error(item[1])
            if item[0] == "end":
                self.live -= 1
            else:  # "started": workers emit nothing before it
                started += 1

    async def next(self, timeout: float | None = None) -> tuple[int, tuple] | None:
        """The next (index, item), or None once every choice has ended."""
        while self.live:
            index, item = await asyncio.wait_for(self.queue.get(), timeout)
            if item[0] == "end":
                self.live -= 1
            else:
                return index, item
        return None

    def add_usage(self, usage: dict, index: int, item: dict) -> None:
        if index % self.n == 0:
            usage["prompt_tokens"] += item["prompt_tokens"]
        usage["completion_tokens"] += item["completion_tokens"]
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]


def as_api_error(e: BaseException) -> APIError:
    if isinstance(e, (PromptTooLong, chat_format.ChatFormatError)):
        return APIError(400, str(e), "messages", "context_length_exceeded"
                        if isinstance(e, PromptTooLong) else "invalid_messages")
    return APIError(500, f"generation failed: {e}", type="server_error")
