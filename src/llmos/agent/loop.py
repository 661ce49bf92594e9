"""Tools in the loop: generate an assistant turn; when it calls a tool, run the tool, append the
result and generate again, up to a limit of rounds.

The loop only needs a token stream (`generate(prompt_ids, params) -> iterator of ids`), so the
same code drives one model in a terminal and many requests batched by the server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from llmos import chat_format
from llmos import tokenizer as tokenizers_
from llmos.agent.context import ContextBudget, fit
from llmos.agent.tools import BUILTIN_TOOLS, Tool, call_tool
from llmos.infer.engine import STOP, SamplingParams, TextStream

# prompt ids, sampling -> generated ids; the last item is STOP when a stop token ended it
# (the stop token itself is not part of the answer).
TokenStream = Callable[[list[int], SamplingParams], Iterator[int]]


@dataclass
class Event:
    """One thing that happened while answering, in order. kind is one of:
    "text" (a piece of assistant text), "tool_call" (data: the call), "tool_result" (data: the
    tool message), "error" (a malformed call, told to the model), "turn" (data: the finished
    assistant message), "done" (data: {"finish_reason", "messages"})."""

    kind: str
    text: str = ""
    data: dict = field(default_factory=dict)


def stop_ids(tok) -> list[int]:
    """The model's end tokens (its config's eos first, then the usual names)."""
    return tokenizers_.end_ids(tok)


def forced_call(name: str) -> str:
    """The start of an assistant turn that can only go on as a tool call: to `name`, or to any
    tool when `name` is "" (OpenAI's tool_choice "required" and a named tool_choice)."""
    # Each ends on a colon, where the tokenizer splits the text of a whole call too: a prompt
    # ending in a space or a quote would be cut where the model never saw a cut.
    start = f'{chat_format.TOOL_CALL}\n{{"name":'
    return start if not name else f'{start} {json.dumps(name)}, "arguments":'


def respond(generate: TokenStream, tok, messages: list[dict], params: SamplingParams,
            tools: dict[str, Tool] | None = None, declared: list[dict] | None = None,
            max_rounds: int = 4, force: str | None = None, window: ContextBudget | None = None,
            summarize=None, confirm: frozenset[str] = frozenset()) -> Iterator[Event]:
    """Answer the conversation. `tools` run here (built-in); `declared` are OpenAI function
    schemas the caller runs itself: a call to one of them ends the loop with finish_reason
    "tool_calls". Generated tokens count against params.max_new_tokens across all rounds.
    `force` ("" for any tool, else a name) starts the first turn as a tool call. With a
    `window` budget, each round's prompt is fitted to the context window (agent/context.py) and what
    gave way is told in a "context" event. A call to a tool named in `confirm` is not run: it
    ends the loop as a declared function's call does, for the user to allow (or not) first."""
    tools = BUILTIN_TOOLS if tools is None else tools
    # Only the caller's functions are described in the prompt. The built-in ones are part of
    # what the assistant learned in finetuning: their schemas would fill most of a small
    # model's context (about 200 of cpu-tiny's 256 tokens).
    schemas = list(declared or [])
    declared_names = {d.get("function", d).get("name") for d in declared or []}
    history = [dict(m) for m in messages]
    budget = params.max_new_tokens
    params = replace(params, stop_tokens=list(params.stop_tokens) + stop_ids(tok))
    finish = "stop"
    told: list[str] = []
    for _round in range(max_rounds):
        shown = history
        if window is not None:
            fitted = fit(tok, history, window, summarize, schemas or None)
            shown = fitted.messages
            if fitted.notes and fitted.notes != told:
                told = fitted.notes
                yield Event("context", "; ".join(fitted.notes),
                            data={"notes": fitted.notes, "tokens": fitted.tokens})
        prompt = chat_format.render(tok, shown, schemas or None, add_generation_prompt=True).ids
        text, stream, used, stopped = "", TextStream(tok), 0, False
        if force is not None and _round == 0:
            text = forced_call(force)  # written for the model, which goes on from there
            prompt = prompt + tok.encode(text, add_special_tokens=False).ids
            yield Event("text", text)
        for token in generate(prompt, replace(params, max_new_tokens=budget)):
            if token == STOP:
                stopped = True
                break
            used += 1
            delta = stream.push(token)
            text += delta
            if delta:
                yield Event("text", delta)
        budget -= used
        turn = chat_format.parse_assistant(text)
        message = turn.message()
        history.append(message)
        yield Event("turn", data=message)
        if not stopped:  # out of tokens (max_new_tokens or the context) mid-turn
            finish = "length"
            break
        if not turn.tool_calls and not turn.errors:
            break
        for error in turn.errors:
            yield Event("error", error)
            history.append({"role": "tool", "name": "error", "content": f"error: {error}"})
        client_calls = [c for c in turn.tool_calls
                        if c["function"]["name"] in declared_names | confirm]
        for call in turn.tool_calls:
            yield Event("tool_call", data=call)
        if client_calls:
            finish = "tool_calls"
            break
        if _round == max_rounds - 1:  # results the model would never read: do not run them
            finish = "tool_rounds"
            break
        for call in turn.tool_calls:
            fn = call["function"]
            result = call_tool(fn["name"], fn["arguments"], tools)
            tool_message = {"role": "tool", "name": fn["name"], "tool_call_id": call["id"],
                            "content": result}
            history.append(tool_message)
            yield Event("tool_result", result, data=tool_message)
        if budget <= 0:
            finish = "length"
            break
    yield Event("done", data={"finish_reason": finish, "messages": history[len(messages):]})


def model_summarizer(generate: TokenStream, tok, context: int):
    """A `summarize` for agent/context.py: the model itself, asked greedily for one sentence
    about the turns that give way (their newest part, when all of them would not fit)."""
    from llmos.agent.context import SUMMARY_TOKENS

    def summarize(older: list[dict]) -> str:
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in older
                 if m["role"] in ("user", "assistant") and m.get("content")]
        ids = tok.encode("\n".join(lines), add_special_tokens=False).ids
        room = max(8, context - SUMMARY_TOKENS - 48)  # the request's own words and format
        ask = [{"role": "user", "content": "Summarize this conversation in one sentence:\n"
                + tok.decode(ids[-room:])}]
        prompt = chat_format.render(tok, ask, add_generation_prompt=True).ids
        params = SamplingParams(max_new_tokens=SUMMARY_TOKENS, temperature=0.0,
                                stop_tokens=stop_ids(tok))
        stream, text = TextStream(tok), ""
        for token in generate(prompt, params):
            if token == STOP:
                break
            text += stream.push(token)
        return chat_format.parse_assistant(text).message().get("content", "") or text

    return summarize


def engine_stream(engine) -> TokenStream:
    """A TokenStream over one `Engine` (one conversation at a time: the terminal chat)."""

    def generate(prompt: list[int], params: SamplingParams) -> Iterator[int]:
        for step in engine.stream([prompt], params):
            if step[0] is None:  # the engine hides the stop token it sampled
                yield STOP
                return
            yield step[0]

    return generate


def final_text(events: list[Event]) -> str:
    """The last assistant message's content (what a user reads as the answer)."""
    turns = [e.data for e in events if e.kind == "turn"]
    return turns[-1].get("content", "") if turns else ""


def describe_call(call: dict) -> str:
    fn = call["function"]
    return f"{fn['name']}({json.dumps(fn['arguments'], ensure_ascii=False)})"
