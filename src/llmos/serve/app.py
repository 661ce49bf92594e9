"""`llmos serve`: an OpenAI-compatible HTTP API and a web chat over batched decoding.

    POST /v1/chat/completions   chat (streaming or not), tools: the client's functions come back
                                as `tool_calls`; the built-in ones (calculator, python) run here
    POST /v1/completions        plain text continuation, no chat template
    GET  /v1/models             the served checkpoints
    GET  /health                live rows and queued requests per model
    GET  /                      the web chat (static/index.html)

Every request becomes one or more rows of the model's `Scheduler` batch (one per choice), so
concurrent requests decode together. A request's answer is produced in a worker thread that
runs `llmos.agent.loop.respond` over the scheduler's token stream and hands OpenAI-shaped
deltas to the event loop; a client that goes away cancels its rows.

Extensions that OpenAI clients ignore: `message.llmos_tool_events` (and the same field on a
chunk's delta) lists built-in tool calls and results; requests accept `top_k`, `min_tokens`
and `ignore_eos` (as vLLM does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos import chat
from llmos.agent.loop import STOP, respond
from llmos.infer.engine import SamplingParams, TextStream
from llmos.serve.batching import Scheduler

STATIC = Path(__file__).parent / "static"


# ---- what is served ---------------------------------------------------------------------------


@dataclass
class ServedModel:
    name: str
    tok: Any  # tokenizers.Tokenizer
    scheduler: Scheduler
    context: int  # max_seq_len: prompt + answer
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_tokens: int = 2048  # the most a request may ask for (max_tokens, all rounds)
    max_n: int = 8
    max_stop: int = 4
    tool_rounds: int = 4  # built-in tool calls answered per request before it ends


def model_names(specs: list[str]) -> dict[str, Path]:
    """`DIR` or `NAME=DIR` -> {name: dir}. A bare folder is named after itself ("sft"), with
    as many parent folders as it takes to tell it apart from the others ("runA/sft")."""
    named: dict[str, Path] = {}
    bare: list[Path] = []
    for spec in specs:
        name, eq, path = spec.partition("=")
        if eq and name and not Path(spec).exists():
            if name in named:
                raise ValueError(f"two models are named {name!r}")
            named[name] = Path(path)
        else:
            bare.append(Path(spec))
    parts = [p.resolve().parts for p in bare]
    if len(set(parts)) < len(parts):
        raise ValueError("a checkpoint is listed twice; give the copies names with NAME=DIR")
    for depth in range(1, max(map(len, parts), default=0) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        for i, name in enumerate(names):
            if bare[i] is not None and names.count(name) == 1 and name not in named:
                named[name], bare[i] = bare[i], None
    return named


def load_models(specs: list[str], device: str = "cpu", max_batch: int = 16
                ) -> dict[str, ServedModel]:
    from llmos import checkpoint
    from llmos import tokenizer as tk

    served = {}
    for name, path in model_names(specs).items():
        model = checkpoint.load_model(path, device)
        sched = Scheduler(model, max_batch=max_batch, name=name)
        served[name] = ServedModel(name, tk.load(path), sched, model.cfg.max_seq_len)
    return served


# ---- errors in OpenAI's shape -----------------------------------------------------------------


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return error_response(400, f"The request body is not valid JSON: {detail} (at character "
                              f"{loc[0] if loc else '?'})", code="invalid_json")
    param = ".".join(loc) or None
    message = err.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    if len(exc.errors()) > 1:
        message += f" (and {len(exc.errors()) - 1} more problems)"
    return error_response(400, message, param=param, code="invalid_value")


class BodyLimit:
    """ASGI middleware: read a request body up to `limit` bytes, answer 413 past it (whatever
    Content-Length claims), then replay the body to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = error_response(413, f"The request body is larger than {self.limit} bytes.",
                                 code="request_too_large")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_big(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ---- requests ---------------------------------------------------------------------------------

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict = "{}"


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def to_chat(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        m: dict = {"role": "system" if self.role == "developer" else self.role,
                   "content": content or ""}
        if self.tool_calls:
            m["tool_calls"] = [c.model_dump(exclude_none=True) for c in self.tool_calls]
        for key in ("name", "tool_call_id", "reasoning_content"):
            if getattr(self, key):
                m[key] = getattr(self, key)
        return m


class FunctionSpec(BaseModel):
    name: Name
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: str


class NamedChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """Fields /v1/chat/completions and /v1/completions share."""

    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1024)  # choice i uses seed + i
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    logprobs: bool | int | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int]
    echo: bool = False


# ---- from request to jobs ---------------------------------------------------------------------


@dataclass
class Job:
    """What one choice needs: the model, the sampling, and how to end."""

    served: ServedModel
    params: SamplingParams
    stop: list[str]
    ignore_eos: bool


def check_sampling(req: Sampling, limits: Limits, served: ServedModel, max_tokens: int | None
                   ) -> tuple[SamplingParams, list[str]]:
    if req.logprobs:
        raise APIError(400, "logprobs are not supported by this server.", "logprobs")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}, above this server's limit of "
                       f"{limits.max_tokens}.", "max_tokens", "max_tokens_too_large")
    if req.n > limits.max_n:
        raise APIError(400, f"n is {req.n}, above this server's limit of {limits.max_n}.", "n")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop:
        raise APIError(400, f"at most {limits.max_stop} stop sequences are allowed.", "stop")
    if req.stream_options and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true.",
                       "stream_options")
    params = SamplingParams(
        max_new_tokens=min(max_tokens or limits.max_tokens, served.context),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_k=req.top_k or 0, top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
        min_new_tokens=req.min_tokens)
    return params, [s for s in stop if s]


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice i of n samples with seed + i, so n seeded choices differ yet repeat."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=params.seed + index)


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


# ---- text post-processing: visible content, stop strings --------------------------------------


class TurnText:
    """Raw text of one assistant turn, as it streams -> ("content" | "reasoning_content", text)
    pieces. Tool call markup is hidden, tags split across pieces are held back, and each field
    is stripped as `chat.parse_assistant` strips it, so the pieces add up to its result."""

    def __init__(self):
        self.buf, self.mode = "", "start"  # start | think | content | call
        self.started = {"content": False, "reasoning_content": False}
        self.ws = {"content": "", "reasoning_content": ""}
        self.out: list[tuple[str, str]] = []

    def _emit(self, key: str, text: str) -> None:
        if not self.started[key]:
            text = text.lstrip()
            if not text:
                return
            self.started[key] = True
        body = text.rstrip()
        if body:
            self.out.append((key, self.ws[key] + body))
            self.ws[key] = text[len(body):]
        else:
            self.ws[key] += text

    def _until(self, tag: str, key: str | None) -> bool:
        """Emit buf up to `tag` (True: found, buf is past it); else emit what cannot start it."""
        i = self.buf.find(tag)
        if i >= 0:
            if key:
                self._emit(key, self.buf[:i])
            self.buf = self.buf[i + len(tag):]
            return True
        keep = next((n for n in range(min(len(tag) - 1, len(self.buf)), 0, -1)
                     if tag.startswith(self.buf[-n:])), 0)
        if key:
            self._emit(key, self.buf[:len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def push(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        while True:
            if self.mode == "start":
                s = self.buf.lstrip()
                if not s or (chat.THINK.startswith(s) and s != chat.THINK):
                    break  # not yet known whether the turn opens with a think block
                self.mode = "think" if s.startswith(chat.THINK) else "content"
                self.buf = s[len(chat.THINK):] if self.mode == "think" else s
            elif self.mode == "think":
                if not self._until(chat.THINK_END, "reasoning_content"):
                    break
                self.mode = "content"
            elif self.mode == "content":
                if not self._until(chat.TOOL_CALL, "content"):
                    break
                self.mode = "call"
            else:
                if not self._until(chat.TOOL_CALL_END, None):
                    break
                self.mode = "content"
        out, self.out = self.out, []
        return out

    def finish(self) -> list[tuple[str, str]]:
        if self.mode in ("think", "content") and self.buf:
            self._emit("reasoning_content" if self.mode == "think" else "content", self.buf)
        self.buf = ""
        out, self.out = self.out, []
        return out


class StopText:
    """Finds stop sequences in streamed text, holding back a tail that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops, self.held = stops, ""

    def push(self, text: str) -> tuple[str, bool]:
        text = self.held + text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if s.startswith(text[-n:])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


# ---- workers: one thread per choice, deltas out through `emit` --------------------------------

Emit = Callable[[tuple], None]  # ("delta", {...}) | ("finish", reason, usage) | ("error", exc)


def finish_reason(loop_reason: str) -> str:
    # The tool-round limit ends an answer early, as a token limit does.
    return {"tool_rounds": "length"}.get(loop_reason, loop_reason)


def run_chat(job: Job, messages: list[dict], tools: dict | None, declared: list[dict] | None,
             max_rounds: int, emit: Emit, cancel: threading.Event) -> None:
    counted = Counted(job, emit, cancel)
    declared_names = {d["function"]["name"] for d in declared or []}
    events = respond(counted, job.served.tok, messages, job.params, tools=tools,
                     declared=declared, max_rounds=max_rounds)
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
        for ev in events:
            if cancel.is_set():
                return
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


def run_completion(job: Job, prompt: list[int], emit: Emit, cancel: threading.Event) -> None:
    counted = Counted(job, emit, cancel)
    tokens = counted(prompt, job.params)
    text, stops, reason = TextStream(job.served.tok), StopText(job.stop), "length"
    try:
        for t in tokens:
            if t == STOP:
                reason = "stop"
                break
            visible, hit = stops.push(text.push(t))
            if visible:
                emit(("delta", {"text": visible}))
            if hit:
                reason = "stop"
                break
        else:
            if held := stops.flush():
                emit(("delta", {"text": held}))
        emit(("finish", reason, counted.usage()))
    finally:
        tokens.close()


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

    def _run(self, index: int, work) -> None:
        def emit(item):
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, item))
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
    if isinstance(e, (PromptTooLong, chat.ChatFormatError)):
        return APIError(400, str(e), "messages", "context_length_exceeded"
                        if isinstance(e, PromptTooLong) else "invalid_messages")
    return APIError(500, f"generation failed: {e}", type="server_error")


class Stream(StreamingResponse):
    """An SSE response whose body generator is always closed, which cancels its rows."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ---- the app ----------------------------------------------------------------------------------


def create_app(models: dict[str, ServedModel], api_keys: list[str] | None = None,
               limits: Limits | None = None, builtin_tools: dict | None = None,
               database=None, contestants: list | None = None) -> FastAPI:
    """The FastAPI app. `builtin_tools` run server-side (default: llmos.agent.tools'
    BUILTIN_TOOLS; {} for none). `database` (a URL or an Engine from serve/db.py) adds the
    arena pages (serve/arena.py): the served models plus `contestants` (evals/contestants.py),
    and the labeling pages (serve/labeling.py)."""
    limits = limits or Limits()
    keys = set(api_keys or [])

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for m in models.values():
            m.scheduler.close()

    app = FastAPI(title="llmos", description=__doc__.split("\n")[0], lifespan=lifespan)
    app.state.models = models

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), code=None)

    def authorize(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not any(
                hmac.compare_digest(key.encode(), k.encode()) for k in keys):
            what = "no API key was provided" if not header else "the API key is not valid"
            raise APIError(401, f"Unauthorized: {what}. Send `Authorization: Bearer KEY`.",
                           code="invalid_api_key")

    def find(name: str) -> ServedModel:
        if name not in models:
            raise APIError(404, f"The model `{name}` does not exist. Served: "
                           f"{', '.join(models)}.", "model", "model_not_found")
        return models[name]

    auth = [Depends(authorize)]

    @app.get("/health")
    def health():
        return {"status": "ok", "models": {n: m.scheduler.load() for n, m in models.items()}}

    @app.get("/v1/models", dependencies=auth)
    def list_models():
        return {"object": "list", "data": [model_card(m) for m in models.values()]}

    @app.get("/v1/models/{name:path}", dependencies=auth)
    def get_model(name: str):
        return model_card(find(name))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: ChatRequest, request: Request):
        served = find(req.model)
        if len(req.messages) > limits.max_messages:
            raise APIError(400, f"{len(req.messages)} messages, above this server's limit of "
                           f"{limits.max_messages}.", "messages")
        max_tokens = req.max_completion_tokens or req.max_tokens
        params, stop = check_sampling(req, limits, served, max_tokens)
        messages = [m.to_chat() for m in req.messages]
        declared = [t.model_dump(exclude_none=True) for t in req.tools or []] or None
        tools = builtin_tools
        if req.tool_choice == "none":
            declared, tools = None, {}
        elif isinstance(req.tool_choice, NamedChoice):
            wanted = req.tool_choice.function.name
            declared = [d for d in declared or [] if d["function"]["name"] == wanted]
            if not declared:
                raise APIError(400, f"tool_choice names function {wanted!r}, which is not in "
                               "tools.", "tool_choice")
        workers = [lambda emit, cancel, i=i: run_chat(
            Job(served, choice_params(params, i), stop, req.ignore_eos), messages, tools,
            declared, limits.tool_rounds, emit, cancel) for i in range(req.n)]
        return await answer(request, req, served, Choices(workers, req.n), chat_api=True)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest, request: Request):
        served = find(req.model)
        params, stop = check_sampling(req, limits, served, req.max_tokens)
        eot = served.tok.token_to_id("<|endoftext|>")
        if eot is not None and not req.ignore_eos:
            params.stop_tokens = [eot]
        prompts = req.prompt if isinstance(req.prompt, list) else [req.prompt]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        if not prompts:
            raise APIError(400, "prompt is an empty list.", "prompt")
        if len(prompts) * req.n > limits.max_n:
            raise APIError(400, f"{len(prompts)} prompts x n={req.n} choices is above this "
                           f"server's limit of {limits.max_n}.", "prompt")
        ids = []
        for p in prompts:
            x = list(p) if isinstance(p, list) else served.tok.encode(
                p, add_special_tokens=False).ids
            if any(not 0 <= t < served.tok.get_vocab_size() for t in x):
                raise APIError(400, "prompt token ids must be in the vocabulary.", "prompt")
            if len(x) >= served.context:
                raise APIError(400, f"The prompt is {len(x)} tokens but model {served.name!r} "
                               f"has a context of {served.context} tokens.", "prompt",
                               "context_length_exceeded")
            ids.append(x or [eot if eot is not None else 0])
        workers = [lambda emit, cancel, k=k: run_completion(
            Job(served, choice_params(params, k % req.n), stop, req.ignore_eos),
            ids[k // req.n], emit, cancel) for k in range(len(ids) * req.n)]
        echo = [served.tok.decode(x) if req.echo else "" for x in ids for _ in range(req.n)]
        return await answer(request, req, served, Choices(workers, req.n), chat_api=False,
                            echo=echo)

    if database is not None:
        from llmos.serve.arena import mount_arena
        from llmos.serve.labeling import mount_labeling

        mount_arena(app, database, models, contestants, builtin_tools)
        mount_labeling(app, app.state.database, models)  # the engine the arena opened

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    return app


def model_card(m: ServedModel) -> dict:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": "llmos",
            "max_model_len": m.context}


async def answer(request: Request, req: Sampling, served: ServedModel, choices: Choices,
                 chat_api: bool, echo: list[str] | None = None):
    """Turn the choices' items into one JSON response or an SSE stream."""
    try:
        await choices.start()
    except BaseException:
        choices.cancel.set()
        raise
    head = {"id": f"{'chatcmpl' if chat_api else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if chat_api else "text_completion",
            "created": int(time.time()), "model": served.name, "system_fingerprint": None}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Stream(stream_chunks(choices, head, chat_api, include_usage, echo),
                      media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await collect(request, choices, head, chat_api, echo)


def _zero_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def stream_chunks(choices: Choices, head: dict, chat_api: bool, include_usage: bool,
                        echo: list[str] | None):
    usage, extra = _zero_usage(), {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, reason: str | None = None) -> str:
        if chat_api:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": delta.get("text", ""), "logprobs": None,
                      "finish_reason": reason}
        return sse({**head, "choices": [choice], **extra})

    try:
        for i in range(choices.count):
            if chat_api:
                yield chunk(i, {"role": "assistant", "content": ""})
            elif echo and echo[i]:
                yield chunk(i, {"text": echo[i]})
        while (got := await choices.next()) is not None:
            index, item = got
            if item[0] == "delta":
                yield chunk(index, item[1])
            elif item[0] == "finish":
                yield chunk(index, {}, item[1])
                choices.add_usage(usage, index, item[2])
            elif item[0] == "error":
                yield sse({"error": {"message": f"generation failed: {item[1]}",
                                     "type": "server_error", "param": None, "code": None}})
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
    finally:
        choices.cancel.set()  # the client left, or we are done: stop every row


async def collect(request: Request, choices: Choices, head: dict, chat_api: bool,
                  echo: list[str] | None) -> dict:
    out = [{"content": "", "reasoning_content": "", "tool_calls": [], "llmos_tool_events": [],
            "text": echo[i] if echo else "", "finish_reason": None}
           for i in range(choices.count)]
    usage = _zero_usage()
    checked = time.monotonic()
    try:
        while True:
            try:
                got = await choices.next(timeout=0.25)
            except TimeoutError:
                got = ()
            if time.monotonic() - checked > 0.25:  # a client that gave up stops its rows
                if await request.is_disconnected():
                    return {}  # nobody reads it; the finally cancels the rows
                checked = time.monotonic()
            if got is None:
                break
            if not got:
                continue
            index, item = got
            if item[0] == "delta":
                for key, value in item[1].items():
                    out[index][key] += value
            elif item[0] == "finish":
                out[index]["finish_reason"] = item[1]
                choices.add_usage(usage, index, item[2])
            elif item[0] == "error":
                raise as_api_error(item[1])
    finally:
        choices.cancel.set()
    head = {**head, "object": "chat.completion" if chat_api else "text_completion"}
    if not chat_api:
        texts = [{"index": i, "text": o["text"], "logprobs": None,
                  "finish_reason": o["finish_reason"]} for i, o in enumerate(out)]
        return {**head, "choices": texts, "usage": usage}
    return {**head, "choices": [chat_choice(i, o) for i, o in enumerate(out)], "usage": usage}


def chat_choice(index: int, o: dict) -> dict:
    message: dict = {"role": "assistant", "content": o["content"] or None, "refusal": None}
    if o["tool_calls"]:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                                 for c in o["tool_calls"]]
    elif message["content"] is None:
        message["content"] = ""
    if o["reasoning_content"]:
        message["reasoning_content"] = o["reasoning_content"]
    if o["llmos_tool_events"]:
        message["llmos_tool_events"] = o["llmos_tool_events"]
    return {"index": index, "message": message, "logprobs": None,
            "finish_reason": o["finish_reason"]}


# ---- the command ------------------------------------------------------------------------------


def serve(specs: list[str], host: str = "127.0.0.1", port: int = 8000,
          api_keys: list[str] | None = None, max_tokens: int = 2048, max_batch: int = 16,
          device: str = "auto", tools: bool = True, database: str | None = None,
          arena_contestants: list[str] | None = None) -> None:
    import torch
    import uvicorn

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if arena_contestants and not database:
        raise ValueError("--arena-contestant needs --db (the arena stores its votes there)")
    models = load_models(specs, device, max_batch)
    builtin = None if tools else {}
    extra = None
    if arena_contestants:
        from llmos.evals.contestants import parse_contestants

        extra = parse_contestants(arena_contestants, device)
    app = create_app(models, api_keys, Limits(max_tokens=max_tokens), builtin, database, extra)
    for name, m in models.items():
        print(f"serving {name} (context {m.context}) on http://{host}:{port}/v1")
    print(f"web chat: http://{host}:{port}/")
    if database:
        print(f"arena: http://{host}:{port}/arena (votes in {database})")
        print(f"labeling: http://{host}:{port}/label")
    uvicorn.run(app, host=host, port=port, log_level="info")
