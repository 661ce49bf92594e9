"""The `think` field of /v1/chat/completions: a System-2 strategy answers through the server's
batching scheduler, so a vote's k samples decode as k rows of the running batch (beside other
requests), not one after another.

    {"model": "sft", "messages": [...], "think": {"strategy": "vote", "n": 16}}

The answer is one choice; the response's `think` says what was spent (samples, tokens,
seconds) and what was weighed (answers and their votes or scores).
"""

from __future__ import annotations

import threading
from dataclasses import replace

from llmos.agent.loop import STOP
from llmos.envs.verifiers import judge_working
from llmos.infer.engine import SamplingParams, TextStream
from llmos.infer.sampling import Completion, cut
from llmos.infer.strategies import think
from llmos.infer.think import Think, mean_logprobs, prompt_ids
from llmos.serve.openai_schema import APIError, Limits, ThinkRequest
from llmos.serve.served import ServedModel
from llmos.serve.workers import Emit, PromptTooLong


class ScheduledModel:
    """A `LanguageModel` (infer/think.py) over a served model's scheduler: each row of a batch
    of completions is one request of the running batch, on its own thread."""

    def __init__(self, served: ServedModel, cancel: threading.Event):
        self.served, self.tok, self.cancel = served, served.tok, cancel

    def complete(self, prompts, params: SamplingParams, stops=(), keep_stop=False
                 ) -> list[Completion]:
        out: list[Completion | None] = [None] * len(prompts)
        errors: list[BaseException] = []

        def row(i: int) -> None:
            # Rows of one seeded request draw differently (seed + i), as n choices do.
            p = params if params.seed is None else replace(params, seed=params.seed + i)
            stream, text, ids, finish = TextStream(self.tok), "", [], "length"
            tokens = self.served.scheduler.stream(list(prompts[i]), p, self.cancel)
            try:
                for t in tokens:
                    if t == STOP:
                        finish = "stop"
                        break
                    ids.append(t)
                    text += stream.push(t)
                    if stops and cut(text, stops)[1]:
                        finish = "stop"
                        break
            except BaseException as e:  # noqa: BLE001 - handed to the request's thread
                errors.append(e)
            finally:
                tokens.close()
            text, stop = cut(text, stops, keep_stop)
            out[i] = Completion(text, ids, finish, stop)

        threads = [threading.Thread(target=row, args=(i,), daemon=True)
                   for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    def mean_logprobs(self, prompt, continuations) -> list[float]:
        return mean_logprobs(self.served.scheduler.model, prompt, continuations)


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
    thought = think(ScheduledModel(served, cancel), messages, cfg)
    if thought.text:
        emit(("delta", {"content": thought.text}))
    emit(("think", {**thought.spent(), "answer": thought.answer,
                    "candidates": thought.candidates[:16]}))
    emit(("finish", thought.finish, {"prompt_tokens": len(prompt),
                                     "completion_tokens": thought.tokens,
                                     "total_tokens": len(prompt) + thought.tokens}))
