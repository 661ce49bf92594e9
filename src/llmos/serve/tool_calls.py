"""Tool calls the user confirms: a chat request with `"llmos_confirm": true` (the web chat sends
it) does not run a profile's tools that have side effects (agent/tools.py SIDE_EFFECTS: saving a
memory, fetching a page, asking another model). The call comes back as `tool_calls`, the page
asks the user, and an allowed call runs here:

    POST /v1/llmos/tool_calls  {"model": "stdlib-helper", "user": "ada",
                                "name": "remember", "arguments": "{\\"text\\": \\"...\\"}"}
        -> {"name": "remember", "content": "saved memory 3: ..."}

The page then sends the call and its result back in the conversation, as any OpenAI client's
tool loop does; a declined call goes back as a tool message saying so.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from llmos.agent.tools import Tool, call_tool
from llmos.serve.openai_schema import APIError


class ToolCallRequest(BaseModel):
    model: str
    name: str = Field(min_length=1, max_length=64)
    arguments: str | dict = "{}"
    user: str | None = Field(None, min_length=1, max_length=128)


def held_tools(served, tools: dict[str, Tool] | None) -> frozenset[str]:
    """The tools of a served model whose calls wait for the user: those with side effects that
    its profile grants (an ungranted one is refused when called, with nothing to confirm)."""
    if served.profile is None or not tools:
        return frozenset()
    return frozenset(n for n, t in tools.items()
                     if t.side_effects and n in served.profile.tools)


def mount_tool_calls(app: FastAPI, find, builtin_tools, auth: list) -> None:
    @app.post("/v1/llmos/tool_calls", dependencies=auth)
    async def run_tool_call(req: ToolCallRequest):
        served = find(req.model)
        tools = builtin_tools if served.tools is None else served.tools
        if served.memory is not None and req.user:
            tools, _ = await run_in_threadpool(served.profile.with_user, tools, [],
                                               served.memory, req.user)
        if req.name not in held_tools(served, tools):
            raise APIError(400, f"{req.name!r} is not a tool of model {req.model!r} that waits "
                           "for confirmation; the model runs its other tools itself.", "name",
                           "not_confirmable")
        content = await run_in_threadpool(call_tool, req.name, req.arguments, tools)
        return {"name": req.name, "content": content}
