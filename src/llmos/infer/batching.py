"""Continuous batching: one scheduler thread per model decodes every running request together.

Requests join the running batch at the next step boundary (their prompts are prefilled
together, then their KV cache rows are merged into the batch's) and leave it the moment they
finish: a stop token, their token budget, the model's context, or a cancel from the client.
Each request has its own sampling settings and random generator, so a seeded or greedy
request decodes to the same tokens alone or in company.

The batch's KV cache is left-padded: every row's newest token sits in the same column and a
row's keys start at its own padding offset, `pads[b]`. Rows of different lengths therefore
share one cache; when the longest row leaves, the columns that became padding for everyone are
cut off, so the cache never holds more columns than the longest live row.

`Scheduler.stream` is a `TokenStream` (see `llmos.agent.loop`): the agent loop runs unchanged
on top of the batch, in its own thread. `Scheduler.submit` hands a request's tokens to a
callback on the scheduler's thread instead, then calls its `flush` once a step: a server can
turn every row's token into its answer and wake its event loop once for all of them, with no
thread per request to wake for each token.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from llmos.infer.engine import END, STOP, SamplingParams, relay, sample_rows
from llmos.infer.think import mean_logprobs
from llmos.model import KVCache, Transformer, use_decode_layout


@dataclass
class Row:
    prompt: list[int]
    params: SamplingParams
    caller_cancel: threading.Event | None  # the request's, shared by all its rows and rounds
    closed: threading.Event = field(default_factory=threading.Event)  # this row's stream closed
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    gen: torch.Generator | None = None
    generated: int = 0
    budget: int = 0  # tokens this row may produce (max_new_tokens and the context)
    sink: Callable[[object], bool | None] | None = None  # `submit`'s callback, else `out`
    flush: Callable[[], None] | None = None  # called after a step that gave `sink` something

    def put(self, item) -> None:
        """A token id, STOP, END or an exception, to the reader."""
        if self.sink is None:
            self.out.put(item)
            return
        try:
            done = self.sink(item)
        except Exception:  # a broken callback costs its own row, not the batch's thread
            logging.getLogger(__name__).exception("a row's sink failed; the row is dropped")
            self.sink, done = lambda _item: True, True
        if done:  # it wants no more: dropped at the next step
            self.closed.set()

    def cancelled(self) -> bool:
        return self.closed.is_set() or bool(self.caller_cancel and self.caller_cancel.is_set())


@dataclass
class Stats:
    requests: int = 0
    tokens: int = 0  # generated tokens, all requests
    steps: int = 0  # decoding steps
    cancelled: int = 0
    rows_per_step: collections.Counter = field(default_factory=collections.Counter)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "tokens_generated": self.tokens,
                "decode_steps": self.steps, "cancelled": self.cancelled,
                "max_rows": max(self.rows_per_step, default=0),
                "rows_per_step": {str(k): v for k, v in sorted(self.rows_per_step.items())}}


class ContextFull(ValueError):
    """A prompt that leaves no room in the model's context for even one new token."""


class Scheduler:
    def __init__(self, model: Transformer, max_batch: int = 16, gather_s: float = 0.005,
                 name: str = "model"):
        self.model = use_decode_layout(model.eval())
        self.cfg = model.cfg
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_batch, self.gather_s = max_batch, gather_s
        self.stats = Stats()
        self._pending: collections.deque[Row] = collections.deque()
        self._wake = threading.Condition()
        self._rows: list[Row] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"llmos-batch-{name}", daemon=True)
        self._thread.start()

    # ---- the request side (any thread) --------------------------------------------------------

    def stream(self, prompt: list[int], params: SamplingParams,
               cancel: threading.Event | None = None) -> Iterator[int]:
        """Generated ids of one request, STOP last when a stop token ended it. Closing the
        iterator, or setting `cancel`, drops the row from the batch at the next step."""
        row = self._row(prompt, params, cancel)
        if row.budget <= 0:
            return  # no room: the caller sees an ended stream without STOP ("length")
        self._enqueue(row)
        # closing a finished row is a no-op; a running one is dropped at the next step
        yield from relay(row.out, row.closed)

    def submit(self, prompt: list[int], params: SamplingParams,
               sink: Callable[[object], bool | None], flush: Callable[[], None],
               cancel: threading.Event | None = None) -> None:
        """`stream`'s items handed to `sink(item)` on the scheduler's thread (ids, then STOP or
        END, or an exception), `flush()` after each step that gave it any. `sink` must be quick
        and must not block: the whole batch waits for it. When it returns True the row is
        dropped at the next step (and its sink gets END)."""
        row = self._row(prompt, params, cancel)
        row.sink, row.flush = sink, flush
        if row.budget <= 0:
            sink(END)
            flush()
        else:
            self._enqueue(row)

    def _row(self, prompt: list[int], params: SamplingParams,
             cancel: threading.Event | None) -> Row:
        if not prompt:
            raise ValueError("every prompt needs at least one token")
        row = Row(list(prompt), params, cancel)
        if params.temperature > 0:
            row.gen = torch.Generator(device=self.device)
            if params.seed is not None:
                row.gen.manual_seed(params.seed)
            else:
                row.gen.seed()
        row.budget = min(params.max_new_tokens, self.cfg.max_seq_len - len(prompt))
        return row

    def _enqueue(self, row: Row) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the scheduler is shut down")
            self._pending.append(row)
            self.stats.requests += 1
            self._wake.notify()

    def mean_logprobs(self, prompt, continuations) -> list[float]:
        """infer/think.py's mean_logprobs on this scheduler's model (a vote's tie-break)."""
        return mean_logprobs(self.model, prompt, continuations)

    def load(self) -> dict:
        """Live counts for /health: rows decoding now and requests waiting to join."""
        with self._wake:
            return {"active": len(self._rows), "queued": len(self._pending),
                    **self.stats.to_dict()}

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    # ---- the scheduler thread -----------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._pending and not self._rows and not self._closed:
                        self._wake.wait()
                    if self._closed:
                        break
                    idle = not self._rows
                if idle and self.gather_s:
                    time.sleep(self.gather_s)  # let requests sent together start together
                try:
                    self._step()
                except Exception as e:  # fail the live requests, keep serving the next ones
                    for row in self._rows:
                        row.put(e)
                    _flush(self._rows)
                    self._rows, self._cache, self._logits = [], None, None
        for row in self._rows + list(self._pending):
            row.put(END)
        _flush(self._rows + list(self._pending))

    def _admit(self) -> list[Row]:
        with self._wake:
            room = self.max_batch - len(self._rows)
            new, gone = [], []
            while self._pending and len(new) < room:
                row = self._pending.popleft()
                if row.cancelled():
                    self.stats.cancelled += 1
                    row.put(END)
                    gone.append(row)
                else:
                    new.append(row)
        _flush(gone)
        return new

    def _step(self) -> None:
        new = self._admit()
        if new:
            try:
                self._join(new)
            except Exception as e:  # e.g. out of memory in their prefill: the batch is intact
                for row in new:
                    row.put(e)
                _flush(new)
        self._drop([i for i, r in enumerate(self._rows) if r.cancelled()], cancelled=True)
        if not self._rows:
            return
        B = len(self._rows)
        logits = self._logits
        for i, row in enumerate(self._rows):
            if row.generated < row.params.min_new_tokens and row.params.stop_tokens:
                logits[i, list(row.params.stop_tokens)] = float("-inf")
        tokens = sample_rows(logits, [r.params for r in self._rows], [r.gen for r in self._rows])
        self.stats.steps += 1
        self.stats.rows_per_step[B] += 1
        finished = []
        for i, (row, t) in enumerate(zip(self._rows, tokens.tolist())):
            if t in row.params.stop_tokens:
                row.put(STOP)
                finished.append(i)
                continue
            row.put(t)
            row.generated += 1
            self.stats.tokens += 1
            if row.generated >= row.budget:
                row.put(END)
                finished.append(i)
        _flush(self._rows)
        keep = [i for i in range(B) if i not in set(finished)]
        tokens = tokens[keep]
        self._drop(finished)
        if self._rows:
            self._forward(tokens)

    # ---- the batch's KV cache -----------------------------------------------------------------

    def _prefill(self, prompts: list[list[int]]):
        """Left-padded prefill of the joining rows alone: (cache, pads, last logits)."""
        B, L = len(prompts), max(len(x) for x in prompts)
        cache = KVCache(self.cfg, B, L, self.dtype, self.device)
        pads = torch.tensor([L - len(x) for x in prompts], device=self.device)
        idx = torch.tensor([[0] * (L - len(x)) + x for x in prompts], device=self.device)
        if bool((pads == 0).all()):
            return cache, pads, self.model(idx, cache=cache)[:, -1]
        cols = torch.arange(L, device=self.device)
        positions = (cols[None] - pads[:, None]).clamp(min=0)
        causal = cols[None, :] <= cols[:, None]
        mask = causal[None] & (cols[None, None, :] >= pads[:, None, None])
        mask |= torch.eye(L, dtype=torch.bool, device=self.device)[None]  # pads see themselves
        logits = self.model(idx, cache=cache, positions=positions, mask=mask[:, None])
        return cache, pads, logits[:, -1]

    def _cache_like(self, rows: int, columns: int) -> KVCache:
        """An empty cache with room for `columns` and some to grow: preallocating the whole
        context for every row would cost memory and, on each join, a copy of all of it."""
        capacity = min(self.cfg.max_seq_len, max(columns + 1, 2 * columns, 64))
        return KVCache(self.cfg, rows, capacity, self.dtype, self.device)

    def _join(self, rows: list[Row]) -> None:
        cache, pads, logits = self._prefill([r.prompt for r in rows])
        if not self._rows:
            self._rows, self._cache, self._pads, self._logits = rows, cache, pads, logits
            return
        old, n_old = self._cache, len(self._rows)
        L = max(old.length, cache.length)  # right-align both groups in L columns
        merged = self._cache_like(n_old + len(rows), L)
        for dst, a, b in ((merged.k, old.k, cache.k), (merged.v, old.v, cache.v)):
            dst[:, :n_old, :, L - old.length:L] = a[:, :, :, :old.length]
            dst[:, n_old:, :, L - cache.length:L] = b[:, :, :, :cache.length]
        merged.length = L
        self._pads = torch.cat([self._pads + (L - old.length), pads + (L - cache.length)])
        self._cache, self._rows = merged, self._rows + rows
        self._logits = torch.cat([self._logits, logits])

    def _drop(self, indices: list[int], cancelled: bool = False) -> None:
        if not indices:
            return
        for i in indices:
            if cancelled:
                self._rows[i].put(END)
                self.stats.cancelled += 1
        if cancelled:
            _flush([self._rows[i] for i in indices])
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._logits = None
            return
        sel = torch.tensor(keep, device=self.device)
        self._pads, self._logits = self._pads[sel], self._logits[sel]
        cut = int(self._pads.min())  # columns that are padding in every remaining row
        old = self._cache
        self._cache = self._cache_like(len(keep), old.length - cut)
        self._cache.length = old.length - cut
        for dst, src in ((self._cache.k, old.k), (self._cache.v, old.v)):
            dst[:, :, :, :old.length - cut] = src[:, sel, :, cut:old.length]
        self._pads -= cut

    def _forward(self, tokens: torch.Tensor) -> None:
        c = self._cache
        if c.length + 1 > c.k.shape[3]:  # full: move to a cache twice the size
            grown = self._cache_like(len(self._rows), c.length)
            grown.k[:, :, :, :c.length] = c.k[:, :, :, :c.length]
            grown.v[:, :, :, :c.length] = c.v[:, :, :, :c.length]
            grown.length, self._cache, c = c.length, grown, grown
        positions = c.length - self._pads  # each row's own rotary position of the new token
        mask = None
        if bool((self._pads > 0).any()):
            cols = torch.arange(c.length + 1, device=self.device)
            mask = (cols[None, :] >= self._pads[:, None])[:, None, None, :]
        self._logits = self.model(tokens[:, None], cache=c, positions=positions[:, None],
                                  mask=mask)[:, -1]


def _flush(rows: list[Row]) -> None:
    """Each distinct `flush` of these rows, once (a server's rows share one)."""
    for flush in dict.fromkeys(r.flush for r in rows if r.flush is not None):
        flush()


def map_concurrently(model: Transformer, work, items: list, concurrent: int,
                     name: str = "batch") -> list:
    """`work(stream, item)` for every item, each in its own thread, all on one scheduler over
    `model`, so their decoding steps share forward passes (an agent loop per item, tool calls
    and all); the results in the items' order."""
    scheduler = Scheduler(model, max_batch=concurrent, name=name)
    try:
        with ThreadPoolExecutor(max(1, min(concurrent, len(items)))) as pool:
            return list(pool.map(lambda item: work(scheduler.stream, item), items))
    finally:
        scheduler.close()
