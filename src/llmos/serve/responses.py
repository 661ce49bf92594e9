"""From the workers' items to the HTTP answer: one JSON body, or a server-sent-event stream of
chunks in OpenAI's shape (`data: {...}` lines, then `data: [DONE]`).
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from llmos.serve.openai_schema import Sampling
from llmos.serve.served import ServedModel
from llmos.serve.workers import Choices, as_api_error


class Stream(StreamingResponse):
    """An SSE response whose body generator is always closed, which cancels its rows."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


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
    thought: dict = {}  # a System-2 answer's spending, sent with its finishing chunk

    def chunk(index: int, delta: dict, reason: str | None = None) -> str:
        if chat_api:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": delta.get("text", ""), "logprobs": None,
                      "finish_reason": reason}
        said = {"think": thought} if thought and reason else {}
        return sse({**head, "choices": [choice], **extra, **said})

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
            elif item[0] == "think":
                thought = item[1]
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
    usage, thought = _zero_usage(), None
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
            elif item[0] == "think":
                thought = item[1]
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
    body = {**head, "choices": [chat_choice(i, o) for i, o in enumerate(out)], "usage": usage}
    return body | ({"think": thought} if thought else {})


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
