"""llama.cpp as a decoding backend: `llmos serve --backend llamacpp`, `llmos chat --backend
llamacpp`.

The checkpoint is exported to GGUF on first use (`CKPT/gguf/model-TYPE.gguf`, rebuilt when its
config, tokenizer or weights change) and decoded by llama-cpp-python. Everything above the
tokens stays llmos's: the prompt is rendered with the checkpoint's own tokenizer and chat
template, llama.cpp gets those ids and hands back ids, and the stop tokens are checked here. The
GGUF carries the same vocabulary with the same ids, so chat format, tool calls, streaming and
the API are the native engine's, and greedy decoding gives the native engine's tokens at F32.

One llama.cpp context decodes one sequence at a time (single-stream speed is what it is for; the
native engine batches): requests wait their turn on a lock. Its own prefix cache keeps the KV
rows of the previous request's prompt, so the rounds of one tool-using answer re-read only what
is new.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmos.export.gguf import export_gguf
from llmos.infer.engine import END, STOP, SamplingParams, relay

INSTALL = ("the llama.cpp backend needs llama-cpp-python: pip install 'llmos[llamacpp]' (it "
           "compiles llama.cpp, about 7 minutes on 2 cores; CMAKE_ARGS=-DGGML_NATIVE=OFF makes a "
           "build that runs on other CPUs too)")
GGUF_TYPES = ("f32", "f16", "q8_0")
# What a GGUF is made from: a change to any of these rebuilds it.
SOURCES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
           "chat_template.jinja")


def installed() -> bool:
    """Both halves of the extra: llama-cpp-python decodes, `gguf` writes what it reads."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "gguf"))


def llama_cpp_module():
    try:
        import gguf  # noqa: F401 - the export to GGUF needs it
        import llama_cpp
    except ImportError as e:
        raise ValueError(f"{INSTALL}; missing: {e.name}") from e
    return llama_cpp


@dataclass(frozen=True)
class LlamaCppOptions:
    gguf_type: str = "f16"
    threads: int | None = None  # None: as many as torch uses (the native engine's), less spare
    # Cores left to the server's own Python when threads is None: `llmos serve` leaves one,
    # or its event loop and llama.cpp's threads take turns on the same cores (docs/serving.md).
    spare: int = 0

    def __post_init__(self):
        if self.gguf_type not in GGUF_TYPES:
            raise ValueError(f"unknown GGUF type {self.gguf_type!r}: choose one of "
                             + ", ".join(GGUF_TYPES))


# ---- the GGUF next to the checkpoint ----------------------------------------------------------


def _quick_key(ckpt: Path) -> list:
    """Sizes and modification times: equal means unchanged without reading the weights."""
    return [[name, (ckpt / name).stat().st_size, (ckpt / name).stat().st_mtime_ns]
            for name in SOURCES if (ckpt / name).exists()]


def _content_key(ckpt: Path) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        if (ckpt / name).exists():
            h.update(name.encode())
            with open(ckpt / name, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def gguf_for(ckpt_dir: str | Path, gguf_type: str = "f16", log=print) -> Path:
    """CKPT/gguf/model-TYPE.gguf, exported now unless one made from these very files is there.
    A stamp beside it records what it was made from (sizes and times, then a hash of the
    contents when those moved: a copied checkpoint keeps its GGUF)."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / "model.safetensors").exists():
        raise FileNotFoundError(f"{ckpt} is not a checkpoint directory (no model.safetensors)")
    path = ckpt / "gguf" / f"model-{gguf_type}.gguf"
    stamp_path = path.with_suffix(".json")
    quick = _quick_key(ckpt)
    try:  # a missing or damaged stamp means: make the GGUF again
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    if path.exists() and stamp.get("quick") == quick:
        return path
    content = _content_key(ckpt)
    if path.exists() and stamp.get("content") == content:
        write_stamp(stamp_path, {**stamp, "quick": quick})
        return path
    log(f"llama.cpp: exporting {ckpt} to GGUF ({gguf_type}) -> {path}")
    tmp = path.parent / f".export-{os.getpid()}-{threading.get_ident()}"
    try:
        result = export_gguf(ckpt, tmp, gguf_type)
        path.parent.mkdir(exist_ok=True)
        os.replace(result["gguf"], path)  # whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_stamp(stamp_path, {"quick": quick, "content": content, "type": gguf_type})
    return path


def write_stamp(path: Path, stamp: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(stamp))
    os.replace(tmp, path)  # whole or not at all


# ---- decoding ---------------------------------------------------------------------------------


class _ToSink:
    """A queue's `put` for `submit`: each item to the sink, then its flush."""

    def __init__(self, sink, flush):
        self.sink, self.flush = sink, flush
        self.closed = threading.Event()  # set to end the answer at the next token

    def put(self, item) -> None:
        if self.sink(item):
            self.closed.set()
        self.flush()


class LlamaCppDecoder:
    """The scheduler interface of infer/batching.py (`stream`, `submit`, `load`, `close`,
    `mean_logprobs`) over one llama.cpp context.

    Every llama.cpp call runs on one thread of the decoder's own, whichever thread asks: a
    llama.cpp context is not for several threads at once, and OpenMP keeps one team of threads
    for it instead of one per request thread (docs/serving.md: OpenMP slows down when it counts
    more threads than cores)."""

    backend = "llamacpp"

    def __init__(self, ckpt_dir: str | Path, options: LlamaCppOptions | None = None,
                 name: str = "model", log=print):
        llama_cpp = llama_cpp_module()
        import torch

        self.options = options or LlamaCppOptions()
        self.path = Path(ckpt_dir).resolve()
        self.name = name
        self.context = json.loads((self.path / "config.json").read_text())[
            "max_position_embeddings"]
        self.gguf = gguf_for(self.path, self.options.gguf_type, log)
        self.threads = self.options.threads or max(1, torch.get_num_threads()
                                                   - self.options.spare)
        self._settings = dict(model_path=str(self.gguf), n_ctx=self.context,
                              n_threads=self.threads, n_threads_batch=self.threads,
                              verbose=False)
        if self.options.gguf_type == "f32":  # F32 throughout: the KV cache too (default F16)
            self._settings.update(type_k=0, type_v=0)  # GGML_TYPE_F32
        self._busy = self._closed = False
        self._count = threading.Lock()  # the counters below, changed from several threads
        self._waiting = 0
        self.requests = self.tokens = 0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run_jobs, name=f"llmos-llamacpp-{name}",
                                        daemon=True)
        self._thread.start()
        self._llama = llama_cpp.Llama
        self.llm = self._scorer = None  # the scorer keeps every position's logits, made on use
        try:
            self.llm = self._call(lambda: self._llama(**self._settings))
        except BaseException:
            self.close()
            raise

    # ---- the decoding thread ------------------------------------------------------------------

    def _run_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, out = job
            with self._count:
                self._waiting -= 1
            self._busy = True
            try:
                work(out)
            except BaseException as e:  # noqa: BLE001 - handed to the asking thread
                out.put(e)
            finally:
                self._busy = False
        while True:  # closed: whoever still waits hears so
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job[1].put(RuntimeError("the llama.cpp decoder is shut down"))

    def _submit(self, work, out=None) -> queue.SimpleQueue:
        """Queue work(out) for the decoding thread; `out` (a queue unless given) gets what it
        puts, or its exception."""
        if self._closed:
            raise RuntimeError("the llama.cpp decoder is shut down")
        out = queue.SimpleQueue() if out is None else out
        with self._count:
            self._waiting += 1
        self._jobs.put((work, out))
        return out

    def _call(self, fn):
        """fn() on the decoding thread; its result here."""
        result = self._submit(lambda out: out.put((fn(),))).get()
        if isinstance(result, BaseException):
            raise result
        return result[0]

    # ---- the scheduler interface --------------------------------------------------------------

    def stream(self, prompt: list[int], params: SamplingParams,
               cancel: threading.Event | None = None) -> Iterator[int]:
        """Generated ids, STOP last when a stop token ended the answer (Scheduler.stream).
        Closing the iterator, or setting `cancel`, ends the decoding at the next token."""
        started = self._start(prompt, params, cancel)
        if started is not None:
            yield from relay(*started)

    def submit(self, prompt: list[int], params: SamplingParams,
               sink: Callable[[object], bool | None], flush: Callable[[], None],
               cancel: threading.Event | None = None) -> None:
        """Scheduler.submit: the answer's items to `sink` on the decoding thread, `flush()`
        after each; a sink that returns True ends the answer at the next token."""
        if self._start(prompt, params, cancel, _ToSink(sink, flush)) is None:
            sink(END)
            flush()

    def _start(self, prompt: list[int], params: SamplingParams,
               cancel: threading.Event | None, out=None):
        """Queue an answer for the decoding thread: (where its items go, its `closed` event),
        or None when the prompt leaves no room in the context."""
        if not prompt:
            raise ValueError("every prompt needs at least one token")
        budget = min(params.max_new_tokens, self.context - len(prompt))
        if budget <= 0:
            return None
        closed = out.closed if out is not None else threading.Event()
        out = self._submit(lambda o: self._decode(o, list(prompt), params, budget, closed,
                                                  cancel), out)
        return out, closed

    def _decode(self, out, prompt, params, budget, closed, cancel) -> None:
        """Runs on the decoding thread: tokens onto `out`, then STOP or END. An error goes
        to `out` instead of END (by _run_jobs), so the reader raises it."""
        if closed.is_set() or (cancel is not None and cancel.is_set()):
            out.put(END)  # given up while it waited: not even the prompt is read
            return
        with self._count:
            self.requests += 1
        stops = list(params.stop_tokens)
        generated = 0
        sampled = params.temperature > 0

        def shape(_ids, scores):
            # The engine's order: temperature first, then top-k and top-p on the tempered
            # distribution (llama.cpp's own chain applies the temperature after them, so it
            # is given 1.0); stop tokens masked until min_new_tokens.
            if sampled and params.temperature != 1.0:
                scores = scores / params.temperature
            if generated < params.min_new_tokens and stops:
                scores[stops] = -np.inf
            return scores

        if sampled:  # llama.cpp's own sampler: seeded, not the engine's draws
            self.llm.set_seed(params.seed if params.seed is not None
                              else int.from_bytes(os.urandom(4), "little"))
        needed = (sampled and params.temperature != 1.0) or (params.min_new_tokens and stops)
        tokens = self.llm.generate(
            prompt, temp=1.0 if sampled else 0.0, top_k=params.top_k, top_p=params.top_p,
            min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
            logits_processor=[shape] if needed else None)  # a copy of the logits a token
        try:
            for t in tokens:
                if closed.is_set() or (cancel is not None and cancel.is_set()):
                    break
                if t in stops:
                    out.put(STOP)
                    break
                out.put(t)
                generated += 1
                with self._count:
                    self.tokens += 1
                if generated >= budget:
                    break
        finally:
            tokens.close()
        out.put(END)  # only when nothing failed: an exception goes to `out` instead

    def mean_logprobs(self, prompt, continuations) -> list[float]:
        """infer/think.py's mean_logprobs (a vote's tie-break) from llama.cpp's logits."""
        return self._call(lambda: self._score(list(prompt), continuations))

    def _score(self, prompt, continuations) -> list[float]:
        if self._scorer is None:
            self._scorer = self._llama(**self._settings, logits_all=True)
        out = []
        for cont in continuations:
            if not cont:
                out.append(float("-inf"))
                continue
            ids = prompt + list(cont)
            self._scorer.reset()
            self._scorer.eval(ids)
            scores = np.asarray(self._scorer.scores[len(prompt) - 1:len(ids) - 1],
                                dtype=np.float64)
            top = scores.max(-1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(scores - top).sum(-1))
            picked = scores[np.arange(len(cont)), cont]
            out.append(float((picked - logz).mean()))
        return out

    def load(self) -> dict:
        """Live counts for /health."""
        return {"backend": "llamacpp", "gguf": str(self.gguf), "threads": self.threads,
                "active": int(self._busy), "queued": self._waiting,
                "requests": self.requests, "tokens_generated": self.tokens}

    def close(self) -> None:
        """Release llama.cpp once the request decoding now has finished; later requests (and
        any still queued) fail with "shut down" instead of waiting."""
        if self._closed:
            return
        self._closed = True

        def release(_out):
            for llm in (self.llm, self._scorer):
                if llm is not None:
                    llm.close()

        with self._count:
            self._waiting += 1
        self._jobs.put((release, queue.SimpleQueue()))
        self._jobs.put(None)
        self._thread.join(timeout=30)
