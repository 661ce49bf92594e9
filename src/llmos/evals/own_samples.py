"""The policy's own samples of held-out prompts, for the behaviour measures (evals/behaviour.py):
several answers per prompt, sampled as `llmos chat` samples, the built-in tools offered to every
prompt, each answer through the agent loop (agent/loop.py) with its tool calls run.

Every sample's agent loop runs in its own thread on one continuous-batching scheduler
(infer/batching.py): the k samples of a prompt are sent together and prefilled in one batch, and
the decoding steps of all live samples, first turns and tool-call continuations alike, share one
forward pass. A sample's seed comes from the run's seed, its prompt and its number, and each
row samples with its own generator, so a sample is the same whichever company it decodes in
and whatever --limit chose around it.
"""

from __future__ import annotations

import json
import zlib

from llmos import chat_format
from llmos.agent.loop import respond
from llmos.agent.tools import BUILTIN_TOOLS
from llmos.data.records import Conversation, prompt_of
from llmos.infer.batching import map_concurrently
from llmos.infer.engine import STOP, SamplingParams

# Sampled as `llmos chat` samples (cli/model_commands.py, CHAT_SAMPLING).
TEMPERATURE, TOP_P = 0.7, 0.95
# As the assistant eval answers: a loop runs to the end of these, a right answer takes 20-40.
MAX_NEW_TOKENS = 128
# Rows decoded together: 396 samples of cpu-tiny's sft took 37 s at 64, 39 s at 128 and 42 s at
# 400 on 2 cores (busy with other work), the same samples each time.
CONCURRENT = 64


def sample_seed(seed: int, messages: list[dict], sample: int) -> int:
    """A sample's own seed: the run's seed, the prompt and the sample's number."""
    key = json.dumps([seed, messages, sample], sort_keys=True, ensure_ascii=False)
    return zlib.crc32(key.encode("utf-8"))


def answer(generate, tok, messages: list[dict], params: SamplingParams, tools=None) -> dict:
    """One answer to `messages` through the agent loop: its final text, every assistant turn's
    content, the transcript (turns and tool results), the tool calls that parsed, and the calls
    that failed: did not parse (a call cut off by the token budget included) or were refused
    (unknown tool, rejected arguments, a tool error; a Python program that raises is a valid
    call, as in evals/assistant_tasks.py)."""
    tools = BUILTIN_TOOLS if tools is None else tools
    events = list(respond(generate, tok, messages, params, tools=tools))
    raw, text = [], ""
    for e in events:  # each turn's raw text: what parse_assistant read, cut-off calls included
        if e.kind == "text":
            text += e.text
        elif e.kind == "turn":
            raw.append(text)
            text = ""
    unparsed = [err for r in raw for err in chat_format.parse_assistant(r).errors]
    refused = [e.text for e in events if e.kind == "tool_result" and e.text.startswith("error: ")]
    turns = [e.data for e in events if e.kind == "turn"]
    calls = [e.data["function"]["name"] for e in events if e.kind == "tool_call"]
    return {
        "answer": turns[-1].get("content", "") if turns else "",
        "texts": [t.get("content") or "" for t in turns],
        "transcript": [e.data for e in events if e.kind in ("turn", "tool_result")],
        "finish": events[-1].data["finish_reason"],
        "calls": calls, "attempted_calls": len(calls) + len(unparsed),
        "failed_calls": len(unparsed) + len(refused), "errors": unparsed + refused,
    }


def recording(generate, rounds: list[dict]):
    """`generate` (a TokenStream), appending to `rounds` each generation it makes: {"prompt":
    its prompt ids, "ids": the ids generated, "stopped": ended by a stop token} (the stop token
    itself the engine does not show). What another model's likelihood of an answer is
    computed on: the tokens sampled, not a re-encoding of the text."""

    def generate_recorded(prompt: list[int], params: SamplingParams):
        record = {"prompt": list(prompt), "ids": [], "stopped": False}
        rounds.append(record)  # before the first token: the loop stops reading at STOP
        for token in generate(prompt, params):
            if token == STOP:
                record["stopped"] = True
            else:
                record["ids"].append(token)
            yield token

    return generate_recorded


def sample(model, tok, conversations: list[Conversation], samples: int, seed: int = 0,
           max_new_tokens: int = MAX_NEW_TOKENS, concurrent: int = CONCURRENT,
           temperature: float = TEMPERATURE, top_p: float = TOP_P,
           tokens: bool = False) -> list[dict]:
    """`samples` answers to each conversation's prompt, in order (prompt by prompt): a record
    per sample with its prompt id, sample number and seed, and `answer`'s fields; with
    `tokens`, also `rounds`, every generation of its agent loop (`recording`)."""
    jobs = [(i, j) for i in range(len(conversations)) for j in range(samples)]

    def one(stream, job: tuple[int, int]) -> dict:
        i, j = job
        messages = prompt_of(conversations[i])
        s = sample_seed(seed, messages, j)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, seed=s)
        rounds: list[dict] = []
        generate = recording(stream, rounds) if tokens else stream
        record = {"prompt_id": i, "sample": j, "seed": s, "prompt": messages,
                  **answer(generate, tok, messages, params)}
        return record | ({"rounds": rounds} if tokens else {})

    return map_concurrently(model, one, jobs, concurrent, name="behaviour")
