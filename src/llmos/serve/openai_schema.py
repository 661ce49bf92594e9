"""What an OpenAI-compatible request may say, and errors in OpenAI's shape.

The pydantic models of /v1/chat/completions and /v1/completions bodies, the server's limits,
the check that turns a request's sampling fields into `SamplingParams`, and the error body
(`{"error": {"message", "type", "param", "code"}}`) every failure is answered with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llmos.infer.engine import SamplingParams
from llmos.serve.served import ServedModel


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_tokens: int = 2048  # the most a request may ask for (max_tokens, all rounds)
    max_n: int = 8
    max_stop: int = 4
    max_think: int = 32  # the largest System-2 budget a request may ask for
    tool_rounds: int = 4  # built-in tool calls answered per request before it ends


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


def validation_error(exc: RequestValidationError) -> JSONResponse:
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


def lone_surrogate(value, path: str = "") -> str | None:
    """Where a parsed JSON body holds a string with a lone UTF-16 surrogate ("\\ud800" is valid
    JSON, but no text: it cannot be encoded, tokenized or stored), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "the body"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate(key, path or "the body") if isinstance(key, str) else None
            found = found or lone_surrogate(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{path}[{i}]")
            if found:
                return found
    return None


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


class ThinkRequest(BaseModel):
    """llmos's own field: answer with a System-2 strategy (docs/system2.md)."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["greedy", "vote", "best-of", "search"] = "vote"
    n: int = Field(8, ge=1)  # samples (search: rows per step)
    answer_kind: Literal["number", "choice", "code", "text"] = "number"
    judge: Literal["verifier"] = "verifier"  # best-of, search: checks worked arithmetic


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None
    think: ThinkRequest | None = None
    user: str | None = Field(None, min_length=1, max_length=128)  # whose memories a profile uses
    # True: a profile's tools with side effects are not run but returned as tool_calls, for the
    # user to confirm (the web chat; serve/tool_calls.py).
    llmos_confirm: bool = False


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int]
    echo: bool = False


# ---- sampling ---------------------------------------------------------------------------------


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
