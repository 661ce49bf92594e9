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
and `ignore_eos` (as vLLM does), and `llmos_confirm` (serve/tool_calls.py: a profile's tools with
side effects come back as `tool_calls` for the user to allow).
"""

from __future__ import annotations

import contextlib
import hmac
import json
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos import db
from llmos.agent.context import ContextBudget
from llmos.agent.output_guard import Guard
from llmos.agent.peers import parse_peers
from llmos.agent.policy import load_policy
from llmos.agent.profile_store import ProfileStore
from llmos.agent.profiles import ProfileError
from llmos.agent.profiles import resolve as resolve_profile
from llmos.serve.arena import mount_arena
from llmos.serve.labeling import mount_labeling
from llmos.serve.memory_pages import memory_store, mount_memory
from llmos.serve.openai_schema import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Limits,
    NamedChoice,
    ThinkRequest,
    check_sampling,
    choice_params,
    error_response,
    lone_surrogate,
    validation_error,
)
from llmos.serve.posting import posted_completions
from llmos.serve.profile_pages import ProfileHost, mount_profiles
from llmos.serve.responses import answer
from llmos.serve.served import ServedModel, add_profiles, load_models, model_card, schedulers
from llmos.serve.thinking import run_think, think_config
from llmos.serve.tool_calls import held_tools, mount_tool_calls
from llmos.serve.workers import Choices, Job, guarded, run_chat

STATIC = Path(__file__).parent / "static"


class BodyLimit:
    """ASGI middleware: read a request body up to `limit` bytes, answer 413 past it (whatever
    Content-Length claims), answer 400 to JSON holding a string that is no text (a lone
    surrogate), then replay the body to the app."""

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
        where = _not_text(body, headers.get(b"content-type", b""))
        if where:
            return await error_response(
                400, f"{where} holds a lone UTF-16 surrogate, which is not text.",
                param=where, code="invalid_text")(scope, receive, send)

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _not_text(body: bytes, content_type: bytes) -> str | None:
    """Where a JSON body holds a lone surrogate; invalid JSON is left to the route to refuse."""
    if b"json" not in content_type.lower() or b"\\u" not in body.lower():
        return None  # a lone surrogate in JSON is always written as an escape
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return lone_surrogate(parsed)


# ---- the app ----------------------------------------------------------------------------------


def profile_sampling(req, sampling: dict, max_tokens: int | None):
    """The request with the profile's sampling where the request gave none."""
    fill = {k: v for k, v in sampling.items() if k in ("temperature", "top_p")
            and getattr(req, k) is None}
    if max_tokens is None and "max_tokens" in sampling:
        max_tokens = int(sampling["max_tokens"])
    return (req.model_copy(update=fill) if fill else req), max_tokens


def output_guard(policy, messages: list[dict]) -> Guard:
    """The guard of one chat request: it knows the system messages (the profile's instructions
    among them) and the policy's markers and image hosts."""
    system = "\n".join(m["content"] for m in messages
                       if m.get("role") == "system" and isinstance(m.get("content"), str))
    return Guard(system, allowed_hosts=list(policy.allowed_image_hosts),
                 markers=policy.markers())


def create_app(models: dict[str, ServedModel], api_keys: list[str] | None = None,
               limits: Limits | None = None, builtin_tools: dict | None = None,
               database=None, contestants: list | None = None, device: str = "cpu",
               max_batch: int = 16, guard_policy=None, llamacpp=None) -> FastAPI:
    """The FastAPI app. `builtin_tools` run server-side (default: llmos.agent.tools'
    BUILTIN_TOOLS; {} for none). `database` (a URL or an Engine from db.py) serves the
    profiles stored there and adds their editor (serve/profile_pages.py; new ones load their
    checkpoints on `device`), the arena pages (serve/arena.py): the served models plus
    `contestants` (agent/peers.py), and the labeling pages (serve/labeling.py). With a
    `guard_policy` (agent/policy.py) every chat answer passes the output guard
    (agent/output_guard.py) before it is sent. `llamacpp` (infer/llamacpp.py's options): the
    profiles stored in the database decode with llama.cpp, as the served checkpoints do."""
    limits = limits or Limits()
    keys = set(api_keys or [])
    host = None
    if database is not None:
        database = db.open_database(database) if isinstance(database, (str, Path)) \
            else database
        url = database.url.render_as_string(hide_password=False)
        host = ProfileHost(models, ProfileStore(database), url, device, max_batch,
                           tools=builtin_tools != {}, llamacpp=llamacpp)
        host.start()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for scheduler in schedulers(models):
            scheduler.close()

    app = FastAPI(title="llmos", description=__doc__.split("\n")[0], lifespan=lifespan)
    app.state.models = models

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        return validation_error(exc)

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
        return {"status": "ok", "models": {n: m.scheduler.load()
                                           for n, m in list(models.items())}}

    @app.get("/v1/models", dependencies=auth)
    def list_models():
        # list(): the profile editor may add or remove a model meanwhile
        return {"object": "list", "data": [model_card(m) for m in list(models.values())]}

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
        if served.profile is not None:  # what the request leaves out, the profile says
            req, max_tokens = profile_sampling(req, served.profile.sampling, max_tokens)
        params, stop = check_sampling(req, limits, served, max_tokens)
        if (served.profile is not None and served.profile.think and req.think is None
                and not req.tools and req.tool_choice is None and req.n == 1 and not stop):
            req = req.model_copy(update={"think": ThinkRequest(**served.profile.think)})
        messages = [m.to_chat() for m in req.messages]
        if served.profile is not None:  # a custom GPT: its instructions come first
            messages = served.profile.messages(messages)
        guard = None if guard_policy is None else output_guard(guard_policy, messages)
        declared = [t.model_dump(exclude_none=True) for t in req.tools or []] or None
        tools = builtin_tools if served.tools is None else served.tools
        if served.memory is not None and req.user:  # memories are kept for a named user only
            tools, messages = await run_in_threadpool(
                served.profile.with_user, tools, messages, served.memory, req.user)
        force = None  # "required" and a named function: the answer starts as that call
        if req.tool_choice == "none":
            declared, tools = None, {}
        elif req.tool_choice == "required":
            if not declared:
                raise APIError(400, "tool_choice is \"required\" but the request lists no "
                               "tools to call.", "tool_choice")
            force = ""
        elif isinstance(req.tool_choice, NamedChoice):
            wanted = req.tool_choice.function.name
            declared = [d for d in declared or [] if d["function"]["name"] == wanted]
            if not declared:
                raise APIError(400, f"tool_choice names function {wanted!r}, which is not in "
                               "tools.", "tool_choice")
            force = wanted
        if force is not None:
            tools = {}  # the call forced is one of the request's own functions
        # The web chat asks the user before a tool with side effects runs (serve/tool_calls.py).
        confirm = held_tools(served, tools) if req.llmos_confirm else frozenset()
        if req.think is not None:
            if req.n != 1:
                raise APIError(400, "think answers with one choice: n must be 1.", "n")
            if req.tools or force is not None:
                raise APIError(400, "think answers without tools: leave tools and "
                               "tool_choice out.", "think")
            if stop:
                raise APIError(400, "think answers whole turns: leave stop out.", "stop")
            cfg = think_config(req.think, params, limits, req.ignore_eos)
            return await answer(request, req, served, Choices([
                lambda emit, cancel: run_think(served, messages, cfg, guarded(emit, guard),
                                               cancel)]), chat_api=True)
        # A custom GPT is an llmos front end: its chats outgrow the window gracefully (the
        # LLM OS's RAM); a plain model keeps OpenAI's behaviour, a 400 for a prompt too long.
        window = None
        if served.profile is not None:
            window = ContextBudget(served.context, min(params.max_new_tokens,
                                                       served.context // 4))
        workers = [lambda emit, cancel, i=i: run_chat(
            Job(served, choice_params(params, i), stop, req.ignore_eos), messages, tools,
            declared, limits.tool_rounds, guarded(emit, guard), cancel, force, window,
            confirm)
            for i in range(req.n)]
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
        jobs = [(Job(served, choice_params(params, k % req.n), stop, req.ignore_eos),
                 ids[k // req.n]) for k in range(len(ids) * req.n)]
        choices = posted_completions(jobs, req.n)  # no thread per request (serve/posting.py)
        echo = [served.tok.decode(x) if req.echo else "" for x in ids for _ in range(req.n)]
        return await answer(request, req, served, choices, chat_api=False, echo=echo)

    mount_memory(app, memory_store(models, database), auth)
    mount_tool_calls(app, find, builtin_tools, auth)
    mount_profiles(app, host, models, auth)
    if database is not None:
        mount_arena(app, database, models, contestants, builtin_tools)
        mount_labeling(app, database, models)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    return app


# ---- the command ------------------------------------------------------------------------------


def profile_files(specs: list[str], database: str | None) -> list[str]:
    """The --profile specs to load: files and shipped names; a name stored in the database is
    left to the profile editor's host, which serves every stored profile."""
    out = []
    for spec in specs:
        try:
            resolve_profile(spec)
        except ProfileError:
            if database and ProfileStore.open(database, must_exist=True).get(spec):
                continue
            raise
        out.append(spec)
    return out


def serve(specs: list[str], host: str = "127.0.0.1", port: int = 8000,
          api_keys: list[str] | None = None, max_tokens: int = 2048, max_batch: int = 16,
          device: str = "auto", tools: bool = True, database: str | None = None,
          arena_contestants: list[str] | None = None, profiles: list[str] | None = None,
          guard: str | None = None, llamacpp=None) -> None:
    """`guard`: a policy name or file; every chat answer then passes the output guard.
    `llamacpp` (infer/llamacpp.py's options): decode with llama.cpp instead of the engine."""
    import torch
    import uvicorn

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if arena_contestants and not database:
        raise ValueError("--arena-contestant needs --db (the arena stores its votes there)")
    guard_policy = load_policy(guard) if guard else None  # a bad file fails before loading
    models = load_models(specs, device, max_batch, llamacpp)
    add_profiles(models, profile_files(profiles or [], database), device, max_batch, database,
                 llamacpp)
    if not models and not database:
        raise ValueError("nothing to serve: give checkpoints, --profile, or --db (the profiles "
                         "stored there)")
    builtin = None if tools else {}
    if not tools:  # --no-tools holds for the profiles too
        for m in models.values():
            if m.profile is not None:
                m.tools, m.memory = {}, None
    extra = None
    if arena_contestants:
        extra = parse_peers(arena_contestants, device, noun="contestant")
    app = create_app(models, api_keys, Limits(max_tokens=max_tokens), builtin, database, extra,
                     device, max_batch, guard_policy, llamacpp)
    for name, m in models.items():
        engine = (f"llama.cpp, {m.scheduler.gguf.name}, {m.scheduler.threads} threads"
                  if llamacpp else "the engine, batched")
        print(f"serving {name} (context {m.context}; {engine}) on http://{host}:{port}/v1")
    if guard_policy is not None:
        print(f"output guard: on, policy {guard_policy.name!r} (answers are sent whole, once "
              "checked)")
    print(f"web chat: http://{host}:{port}/")
    if database:
        print(f"arena: http://{host}:{port}/arena (votes in {database})")
        print(f"labeling: http://{host}:{port}/label")
        print(f"profiles: http://{host}:{port}/profiles (stored in {database})")
    uvicorn.run(app, host=host, port=port, log_level="info")
