"""Completions without a thread per request: the scheduler hands each row's token to a
`CompletionSink` on its own thread, which turns it into the answer's text (stop sequences and
all) and posts what it says to a `Mailbox`, which wakes the event loop once a step for every row.

With a worker thread per request (workers.py), each token of each row woke that thread, which
woke the event loop: with 8 clients, 16 thread switches a step, all under one interpreter lock
that the decoding step itself needs between its PyTorch operations. Chat answers keep their
worker threads (the agent loop runs tools there); plain completions need none, on either
backend (infer/llamacpp.py has the same `submit`).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from dataclasses import replace

from llmos.chat_format import StopText
from llmos.infer.engine import END, STOP, TextStream
from llmos.serve.workers import Choices, Job


class Mailbox:
    """Calls posted from other threads, run on one event loop: `post` queues one, `wake` has the
    loop run everything queued so far, in one go (one wake-up a decoding step, not a row)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.calls: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.waking = False

    def post(self, fn, *args) -> None:
        self.calls.append((fn, args))  # deque.append is atomic: no lock needed

    def wake(self) -> None:
        with self.lock:
            if self.waking or not self.calls:
                return
            self.waking = True
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    def _run(self) -> None:
        with self.lock:
            self.waking = False
        while self.calls:
            fn, args = self.calls.popleft()
            fn(*args)


_mailboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mailbox() -> Mailbox:
    """The running event loop's mailbox."""
    loop = asyncio.get_running_loop()
    if loop not in _mailboxes:
        _mailboxes[loop] = Mailbox(loop)
    return _mailboxes[loop]


class CompletionSink:
    """One choice of a completion, on the decoding thread (the engine's scheduler or llama.cpp's
    decoder): its tokens become text, a stop sequence ends it, and what it says reaches
    `choices` as a worker's items would (workers.py)."""

    def __init__(self, job: Job, prompt_tokens: int, index: int, choices: Choices,
                 box: Mailbox):
        self.text, self.stops = TextStream(job.served.tok), StopText(job.stop)
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.index, self.choices, self.box = index, choices, box
        self.done = False

    def say(self, item: tuple) -> None:
        self.box.post(self.choices.put, self.index, item)

    def __call__(self, item) -> bool:
        """Takes one of the row's items; True once the answer is over (a stop sequence)."""
        if self.done:
            return True  # a row dropped after its stop sequence still gets its END
        try:
            self.take(item)
        except Exception as e:  # e.g. a token the tokenizer cannot decode: the client hears
            self.say(("error", e))
            self.end()
        return self.done

    def take(self, item) -> None:
        if isinstance(item, BaseException):
            self.say(("error", item))
            self.end()
        elif item is END:
            if held := self.stops.flush():
                self.say(("delta", {"text": held}))
            self.finish("length")
        elif item == STOP:
            self.finish("stop")
        else:
            self.completion_tokens += 1
            visible, hit = self.stops.push(self.text.push(item))
            if visible:
                self.say(("delta", {"text": visible}))
            if hit:
                self.finish("stop")

    def finish(self, reason: str) -> None:
        self.say(("finish", reason, {
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens}))
        self.end()

    def end(self) -> None:
        self.done = True
        self.say(("end",))


def posted_completions(jobs: list[tuple[Job, list[int]]], n: int) -> Choices:
    """Every (job, prompt) decoded on its scheduler with a sink: the Choices to answer from.
    The prompts fit the context (the route checked)."""
    choices, box = Choices.posted(len(jobs), n), mailbox()
    for index, (job, prompt) in enumerate(jobs):
        sink = CompletionSink(job, len(prompt), index, choices, box)
        params = replace(job.params, stop_tokens=()) if job.ignore_eos else job.params
        choices.put(index, ("started",))
        job.served.scheduler.submit(prompt, params, sink, box.wake, choices.cancel)
    return choices
