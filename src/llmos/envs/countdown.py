"""Countdown puzzles, Game-of-24 style: make a target from a few numbers with + - * /, each
number used exactly once, one operation per line:

    Use 3, 5 and 7 to make 22 (each number once; + - * /).
    3 * 5 = 15
    15 + 7 = 22

Every puzzle is made by a solver, so it has a solution; and any answer is checked without one:
each line must be a true equation on two numbers still at hand (the puzzle's, or results of
earlier lines), and the last result must be the target with every number used. A partial
answer is checked line by line (`check(..., final=False)`), which is what lets a step-level
search drop a wrong line the moment it is written.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass

STEP = re.compile(r"(-?\d+) ?([-+*/×÷]) ?(-?\d+) ?= ?(-?\d+)")
QUESTION = re.compile(r"Use ([\d, and]+?) to make (\d+)")
HELDOUT_SEED, HELDOUT_SIZE = "countdown:heldout", 300  # `llmos eval --tasks countdown`'s
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
       "/": lambda a, b: a // b if b and a % b == 0 else None}


@dataclass(frozen=True)
class Puzzle:
    numbers: tuple[int, ...]
    target: int
    solution: tuple[str, ...]  # one line per operation

    def question(self) -> str:
        *rest, last = map(str, self.numbers)
        return (f"Use {', '.join(rest)} and {last} to make {self.target} "
                "(each number once; + - * /).")

    def worked(self) -> str:
        return "\n".join(self.solution)


def solve(numbers: tuple[int, ...], target: int) -> tuple[str, ...] | None:
    """A solution with whole non-negative numbers at every step (lines "a op b = c"), or None."""
    if len(numbers) == 1:
        return () if numbers[0] == target else None
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        rest = tuple(n for k, n in enumerate(numbers) if k not in (i, j))
        for op, fn in OPS.items():
            if op in "+*" and i > j:
                continue  # the same step as (j, i)
            c = fn(a, b)
            if c is None or c < 0:
                continue
            found = solve(rest + (c,), target)
            if found is not None:
                return (f"{a} {op} {b} = {c}",) + found
    return None


def puzzles(count: int, seed: str = "countdown", size: int = 3, high: int = 9) -> list[Puzzle]:
    """`count` distinct solvable puzzles of `size` numbers from 1..high, each target made by
    combining all of them at random (then solved again, so the stored solution is the solver's)."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < count:
        numbers = tuple(rng.randint(1, high) for _ in range(size))
        pool = list(numbers)
        while len(pool) > 1:
            a, b = rng.sample(pool, 2)
            pool.remove(a)
            pool.remove(b)
            c = OPS[rng.choice("+-*/")](max(a, b), min(a, b))
            pool.append(c if c is not None else a + b)
        target = pool[0]
        if (numbers, target) in seen or target < 1 or target > 10 * high:
            continue
        solution = solve(numbers, target)
        if solution is not None:
            seen.add((numbers, target))
            out.append(Puzzle(numbers, target, solution))
    return out


def parse_question(text: str) -> tuple[tuple[int, ...], int] | None:
    """(numbers, target) from a question `Puzzle.question` wrote, or None."""
    m = QUESTION.search(text)
    if not m:
        return None
    return tuple(int(x) for x in re.findall(r"\d+", m.group(1))), int(m.group(2))


def check_question(question: str, answer: str, final: bool = True) -> float:
    """`check` of an answer to a question `Puzzle.question` wrote (0.0 if it is not one)."""
    parsed = parse_question(question)
    return check(*parsed, answer, final) if parsed else 0.0


def same_puzzle(p: Puzzle) -> tuple:
    """What makes two puzzles the same: their numbers in any order, and the target."""
    return tuple(sorted(p.numbers)), p.target


def check(numbers: tuple[int, ...], target: int, answer: str, final: bool = True) -> float:
    """1.0 when every operation line is true and uses numbers at hand (and, when final, the
    numbers are all used up into the target); else 0.0. Lines without an equation are prose."""
    pool = Counter(numbers)
    last = None
    for m in STEP.finditer(answer.replace("×", "*").replace("÷", "/")):
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if OPS[op](a, b) != c or pool[a] < 1 or pool[b] < 1 or (a == b and pool[a] < 2):
            return 0.0
        pool[a] -= 1
        pool[b] -= 1
        pool[c] += 1
        last = c
    if not final:
        return 1.0
    return float(last == target and sum(pool.values()) == 1)
