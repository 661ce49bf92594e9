"""Environments for `llmos improve`: problems to practise on, problems held out, and checks.

An environment is where a reward can be computed, so the model can improve on its own answers
(AlphaGo's setting; the talk's "sandbox with a clear reward"):

- ``arithmetic``: two-digit sums and differences without the calculator, worked digit by digit
  (`builtin:arithmetic`). Training keeps an answer only if its working is true
  (`verifiers.exact_number`); the held-out check is a different one, the final number equals
  the reference, so an answer that games the training check is not counted right by design.
- ``countdown``: make a target from 3 numbers with + - * / (envs/countdown.py). The check is
  complete, every line a true equation on numbers at hand and the last one the target with all
  numbers used, so a passing answer *is* a solution; training and held-out use it alike. The
  held-out puzzles are `llmos eval --tasks countdown`'s, so System-2 strategies can be compared
  on the improved model.

A hint (for rationalization: asked again with the answer given away, a problem no sample
solved) is the reference number for arithmetic and a solver's solution for countdown. A
demonstration is a solver's whole answer (`improve --demos N`): a model that has never seen the
task's format (cpu-tiny calls the calculator for every countdown puzzle, hint or not) learns it
from a few, as AlphaGo's policy first learned from expert games before it played itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from llmos.data.builtin.arithmetic import mental_working
from llmos.envs import countdown
from llmos.envs.prompts import BUILTIN_ARITHMETIC, Prompt, builtin_task, verify
from llmos.infer.answers import extract_number

COUNTDOWN_TRAIN = 6000


@dataclass(frozen=True)
class Environment:
    name: str
    problems: Callable[[], tuple[list[Prompt], list[Prompt]]]  # (train, held out)
    hint: Callable[[Prompt], str]  # what a hinted question adds: the answer, given away
    heldout_right: Callable[[Prompt, str], bool]  # the held-out check of an answer's text
    demonstrate: Callable[[Prompt], str]  # an expert's answer (a solver's), for --demos


def arithmetic_problems() -> tuple[list[Prompt], list[Prompt]]:
    return builtin_task(BUILTIN_ARITHMETIC)


def arithmetic_demonstration(p: Prompt) -> str:
    a, op, b = re.search(r"(\d+) ?([-+]|plus|minus) ?(\d+)", p.messages[-1]["content"]).groups()
    return mental_working(int(a), {"plus": "+", "minus": "-"}.get(op, op), int(b))


def countdown_prompt(p: countdown.Puzzle) -> Prompt:
    return Prompt([{"role": "user", "content": p.question()}], str(p.target), task="countdown")


def countdown_problems() -> tuple[list[Prompt], list[Prompt]]:
    """Training puzzles from their own seed, none of them a held-out one."""
    held = countdown.puzzles(countdown.HELDOUT_SIZE, seed=countdown.HELDOUT_SEED)
    seen = {countdown.same_puzzle(p) for p in held}  # (2, 3, 4) -> 14 is (4, 3, 2) -> 14
    train = [p for p in countdown.puzzles(COUNTDOWN_TRAIN, seed="countdown:train")
             if countdown.same_puzzle(p) not in seen]
    return [countdown_prompt(p) for p in train], [countdown_prompt(p) for p in held]


def countdown_solution(p: Prompt) -> tuple[str, ...]:
    parsed = countdown.parse_question(p.messages[-1]["content"])
    solution = countdown.solve(*parsed) if parsed else None
    if solution is None:
        raise ValueError(f"not a solvable countdown question: {p.messages[-1]['content']!r}")
    return solution


def countdown_hint(p: Prompt) -> str:
    return "one way: " + "; ".join(countdown_solution(p))


def countdown_right(p: Prompt, text: str) -> bool:
    return verify(p, text) >= 1.0


ENVIRONMENTS = {
    "arithmetic": Environment("arithmetic", arithmetic_problems,
                              lambda p: f"the answer is {p.answer}",
                              lambda p, text: extract_number(text) == p.answer,
                              arithmetic_demonstration),
    "countdown": Environment("countdown", countdown_problems, countdown_hint, countdown_right,
                             lambda p: "\n".join(countdown_solution(p))),
}
