"""The `think` field of /v1/chat/completions: a System-2 strategy answers through the server's
batching scheduler, so a vote's k samples decode as k rows of the running batch (beside other
requests), not one after another.

    {"model": "sft", "messages": [...], "think": {"strategy": "vote", "n": 16}}

The answer is one choice; the response's `think` says what was spent (samples, tokens,
seconds) and what was weighed (answers and their votes or scores).
"""

from __future__ import annotations

import threading

from llmos.envs.verifiers import judge_working
from llmos.infer.engine import SamplingParams
from llmos.infer.strategies import think
from llmos.infer.streamed import StreamedModel
from llmos.infer.think import Think, prompt_ids
from llmos.serve.openai_schema import APIError, Limits, ThinkRequest
from llmos.serve.served import ServedModel
from llmos.serve.workers import Emit, PromptTooLong


def think_config(req: ThinkRequest, params: SamplingParams, limits: Limits,
                 ignore_eos: bool = False) -> Think:
    """The request's `think` as strategy settings; a budget over the server's limit is a 400."""
    if req.n > limits.max_think:
        raise APIError(400, f"think.n is {req.n}, above this server's limit of "
                       f"{limits.max_think}.", "think.n")
    return Think(req.strategy, req.n, req.answer_kind, temperature=params.temperature or 0.8,
                 top_k=params.top_k, top_p=params.top_p, max_new_tokens=params.max_new_tokens,
                 seed=params.seed, min_new_tokens=params.min_new_tokens, ignore_eos=ignore_eos,
                 judge=judge_working)


def run_think(served: ServedModel, messages: list[dict], cfg: Think, emit: Emit,
              cancel: threading.Event) -> None:
    """A worker (serve/workers.py): the strategy's answer as one delta, then what it spent."""
    prompt = prompt_ids(served.tok, messages)
    if len(prompt) >= served.context:
        raise PromptTooLong(f"The prompt is {len(prompt)} tokens but model {served.name!r} has "
                            f"a context of {served.context} tokens; shorten the conversation.")
    emit(("started",))
    thought = think(StreamedModel(served.scheduler, served.tok, cancel), messages, cfg)
    if thought.text:
        emit(("delta", {"content": thought.text}))
    emit(("think", {**thought.spent(), "answer": thought.answer,
                    "candidates": thought.candidates[:16]}))
    emit(("finish", thought.finish, {"prompt_tokens": len(prompt),
                                     "completion_tokens": thought.tokens,
                                     "total_tokens": len(prompt) + thought.tokens}))
