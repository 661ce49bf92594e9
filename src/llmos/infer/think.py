"""System 2: spend more inference compute on one question for a better answer. This module
holds what the strategies share (settings, the result, the model they sample through);
infer/strategies.py runs them.

Every strategy answers a conversation under a budget and says what it spent:

    greedy     one answer at temperature 0 (the default, and every strategy's budget 1)
    vote       self-consistency (Wang et al. 2022): k sampled answers, the most common final
               answer wins; ties go to the answer whose best sample is likeliest (mean
               log-probability per token); infer/vote.py
    best-of    k sampled answers, the one a judge scores highest (a reward model or a
               verifier); infer/best_of.py
    search     step-level beam search: partial answers grow a step (a line, or for worked
               arithmetic a clause) at a time, a judge values each partial answer, and the best
               few go on; k rows per step; infer/search.py

The strategies sample through a `LanguageModel`: an in-process model (`LocalModel`) or the
server's batching scheduler (serve/thinking.py). Answers are one assistant turn; tools are not
run inside a strategy (a tool call is text like any other).

    lm = LocalModel(model, tok)
    thought = strategies.think(lm, [{"role": "user", "content": "What is 48 + 37?"}],
                               Think("vote", budget=8, kind="number"))
    thought.text, thought.answer, thought.spent()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llmos import chat_format
from llmos import tokenizer as tokenizers_
from llmos.infer.answers import KINDS, extract
from llmos.infer.engine import Engine, SamplingParams
from llmos.infer.likelihood import Group, score_groups
from llmos.infer.sampling import Completion, complete

STRATEGIES = ("greedy", "vote", "best-of", "search")
NEEDS_JUDGE = ("best-of", "search")

# A judge scores answers to one conversation: (messages, texts, final) -> a score per text,
# higher is better. final=False for the partial answers of a search.
Judge = Callable[[list[dict], list[str], bool], list[float]]


class ThinkError(ValueError):
    """A strategy asked for with settings it cannot run (an unknown name, a bad budget)."""


@dataclass
class Think:
    strategy: str = "greedy"
    budget: int = 1  # vote, best-of: samples; search: rows decoded per step
    kind: str = "number"  # the answer kind a vote compares (infer/answers.py)
    temperature: float = 0.8  # of the sampled answers (greedy, and budget 1, use 0)
    top_k: int = 0
    max_new_tokens: int = 128
    top_p: float = 1.0
    min_new_tokens: int = 0  # end tokens are masked until then (the API's min_tokens)
    ignore_eos: bool = False  # never end on an end token (the API's ignore_eos)
    seed: int | None = None
    judge: Judge | None = None  # best-of and search (search's default: the mean log-probability)
    step_stops: tuple[str, ...] = ("\n",)  # search: what ends a step

    def check(self) -> Think:
        if self.strategy not in STRATEGIES:
            raise ThinkError(f"unknown strategy {self.strategy!r}; one of {', '.join(STRATEGIES)}")
        if self.budget < 1:
            raise ThinkError(f"the budget must be at least 1, not {self.budget}")
        if self.kind not in KINDS:
            raise ThinkError(f"unknown answer kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.strategy == "best-of" and self.budget > 1 and self.judge is None:
            raise ThinkError("best-of needs a judge: a reward model or a verifier")
        return self


@dataclass
class Thought:
    text: str  # the answer chosen
    answer: str | None  # its final answer as the strategy compared it
    strategy: str
    budget: int
    samples: int = 0  # answers sampled (search: partial answers expanded)
    tokens: int = 0  # tokens generated in all
    seconds: float = 0.0
    finish: str = "stop"
    candidates: list[dict] = field(default_factory=list)  # what was weighed, for the audit

    def spent(self) -> dict:
        return {"strategy": self.strategy, "budget": self.budget, "samples": self.samples,
                "tokens": self.tokens, "seconds": round(self.seconds, 3)}


class LanguageModel(Protocol):
    """What a strategy needs of a model: batched completions and likelihoods."""

    tok: object

    def complete(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 stops: Sequence[str] = (), keep_stop: bool = False) -> list[Completion]: ...

    def mean_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]
                      ) -> list[float]: ...


class LocalModel:
    """A model in this process: one batched decode per call (infer/sampling.py)."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.engine = Engine(model)

    def complete(self, prompts, params, stops=(), keep_stop=False) -> list[Completion]:
        return complete(self.engine, self.tok, prompts, params, stops, keep_stop)

    def mean_logprobs(self, prompt, continuations) -> list[float]:
        return mean_logprobs(self.model, prompt, continuations)


def mean_logprobs(model, prompt: Sequence[int], continuations: Sequence[Sequence[int]]
                  ) -> list[float]:
    """The mean log-probability per token of each continuation after the prompt (one forward
    pass for all of them; an empty continuation gets -inf)."""
    kept = [list(c) for c in continuations if c]
    scored = iter(score_groups(model, [Group(list(prompt), kept)])[0].logprobs if kept else [])
    return [next(scored) / len(c) if c else float("-inf") for c in continuations]


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    return chat_format.render(tok, messages, None, add_generation_prompt=True).ids


def sampling(tok, cfg: Think, greedy: bool) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=0.0 if greedy else cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed, min_new_tokens=cfg.min_new_tokens,
        stop_tokens=() if cfg.ignore_eos else tuple(tokenizers_.end_ids(tok)))


def content(text: str) -> str:
    """What a user reads of a generated turn (a think block and the end token left out)."""
    return chat_format.parse_assistant(text).content


def answer_of(cfg: Think, c: Completion) -> tuple[str, str | None]:
    """(the content of a sampled turn, its final answer)."""
    text = content(c.text)
    return text, extract(cfg.kind, text)


def sample(lm: LanguageModel, messages: list[dict], cfg: Think, k: int
           ) -> tuple[list[int], list[Completion]]:
    """(the prompt, k answers to it decoded together; greedy when k is 1)."""
    prompt = prompt_ids(lm.tok, messages)
    return prompt, lm.complete([prompt] * k, sampling(lm.tok, cfg, greedy=k == 1))


def reward_judge(path: str, device: str = "cpu") -> Judge:
    """A reward model checkpoint as a judge: the reward of the conversation ending in each answer
    (partial answers of a search are scored as they stand)."""
    from llmos.reward_model import load_reward_model, score

    model, tok = load_reward_model(path, device)

    def judge(messages: list[dict], texts: list[str], final: bool) -> list[float]:
        return score(model, tok, [messages + [{"role": "assistant", "content": t}]
                                  for t in texts])

    return judge


def parse_judge(spec: str | None, device: str = "cpu") -> Judge | None:
    """--judge: None or "verifier" (the task's own verifier, chosen by the caller) -> None;
    "reward:PATH" -> a reward model judge."""
    if spec in (None, "", "verifier"):
        return None
    if spec.startswith("reward:"):
        return reward_judge(spec.removeprefix("reward:"), device)
    raise ThinkError(f"unknown judge {spec!r}: use verifier or reward:PATH")
