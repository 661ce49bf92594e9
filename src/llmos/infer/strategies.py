"""Run a System-2 strategy by name (infer/think.py says what each one does)."""

from __future__ import annotations

import time
from dataclasses import replace

from llmos.infer.best_of import best_of
from llmos.infer.search import search
from llmos.infer.think import LanguageModel, Think, Thought, answer_of, sample
from llmos.infer.vote import vote


def greedy(lm: LanguageModel, messages: list[dict], cfg: Think) -> Thought:
    _, (c,) = sample(lm, messages, cfg, 1)
    text, answer = answer_of(cfg, c)
    return Thought(text, answer, "greedy", cfg.budget, 1, len(c.ids), finish=c.finish,
                   candidates=[{"answer": answer, "text": text}])


RUN = {"greedy": greedy, "vote": vote, "best-of": best_of, "search": search}


def think(lm: LanguageModel, messages: list[dict], cfg: Think) -> Thought:
    """Answer `messages` with the strategy of `cfg`; budget 1 is the greedy answer, so a
    curve over budgets starts at the baseline."""
    cfg.check()
    t0 = time.perf_counter()
    run = greedy if cfg.budget == 1 else RUN[cfg.strategy]
    thought = run(lm, messages, cfg)
    return replace(thought, strategy=cfg.strategy, budget=cfg.budget,
                   seconds=time.perf_counter() - t0)
