"""Arithmetic for ``builtin:assistant``: problems answered with the calculator tool, and small
problems worked digit by digit without it (``mental``, ``mental2``), plus every two-digit
problem for online RL (``arithmetic_practice``).
"""

from __future__ import annotations

import random

from llmos.data.builtin.turns import SEED, assistant, conversation, is_heldout, tool_call, user
from llmos.data.records import Conversation

# Every mental problem there is (2,430), added on top of the set's shares; each training problem
# is asked this many times in different words, so each one-digit fact is seen often enough to learn.
MENTAL_REPEATS = 3
MENTAL2_ITEMS = 1200  # problems of two 2-digit numbers, each asked once


# --- arithmetic with the calculator ---------------------------------------------------------------

OP_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
ARITHMETIC_QUESTIONS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {w} {b}.",
                        "What's {a} {w} {b}?", "{a} {op} {b} = ?", "Please work out {a} {op} {b}.",
                        "Use the calculator: {a} {op} {b}", "How much is {a} {w} {b}?")
WORD_PROBLEMS = {  # (question, final answer) with {a} {b} {r}; the expression is "a op b"
    "+": (("A library has {a} books and buys {b} more. How many books does it have now?",
           "The library has {r} books now."),
          ("Sam walked {a} meters in the morning and {b} meters in the afternoon. How far did "
           "Sam walk in total?", "Sam walked {r} meters in total.")),
    "-": (("A tank holds {a} liters. After {b} liters are drained, how many liters remain?",
           "{r} liters remain."),
          ("Maya had {a} stickers and gave away {b}. How many stickers does she have left?",
           "Maya has {r} stickers left.")),
    "*": (("A box holds {b} apples. How many apples are in {a} boxes?",
           "There are {r} apples in {a} boxes."),
          ("A ticket costs {b} dollars. How much do {a} tickets cost?",
           "{a} tickets cost {r} dollars.")),
    "/": (("{a} candies are shared equally among {b} children. How many candies does each child "
           "get?", "Each child gets {r} candies."),
          ("A car travels {a} km in {b} hours at a constant speed. What is its speed in km per "
           "hour?", "Its speed is {r} km per hour.")),
}


def _operands(rng: random.Random, op: str) -> tuple[int, int, int]:
    """Operands of 2-3 digits and the exact result; division always comes out even."""
    if op == "/":
        b = rng.randint(10, 99)
        r = rng.randint(2, 999 // b)
        return b * r, b, r
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    if op == "-" and rng.random() < 0.8:
        a, b = max(a, b), min(a, b)  # mostly non-negative, like the problems people ask
    return a, b, {"+": a + b, "-": a - b, "*": a * b}[op]


def calculator_items(n: int) -> list[Conversation]:
    rng = random.Random(f"{SEED}:arithmetic")
    out, seen = [], set()
    while len(out) < n:
        op = rng.choice("+-*/")
        a, b, r = _operands(rng, op)
        expr = f"{a} {op} {b}"
        if expr in seen:
            continue
        seen.add(expr)
        if rng.random() < 0.25 and not (op == "-" and r < 0):
            question, final = rng.choice(WORD_PROBLEMS[op])
            question = question.format(a=a, b=b)
            final = f"{expr} = {r}. " + final.format(a=a, r=r)
        else:
            question = rng.choice(ARITHMETIC_QUESTIONS).format(a=a, b=b, op=op, w=OP_WORDS[op])
            final = f"{expr} = {r}."
        turns = [user(question), tool_call("calculator", {"expression": expr}),
                 {"role": "tool", "name": "calculator", "content": str(r)}, assistant(final)]
        out.append(conversation(rng, "arithmetic", expr, str(r), turns))
    return out


# --- arithmetic without the calculator ----------------------------------------------------------
# Every calculator answer copies the tool's reply, so a model finetuned on those alone never
# learns to compute and never samples a right answer without the tool: online RL then has no
# signal (docs/rl.md). These small problems rule the tool out in the question and are worked
# digit by digit (`mental_working`). `llmos rl` (builtin:arithmetic) practises the two-digit ones.

MENTAL_QUESTIONS = ("What is {a} {op} {b}? Answer without the calculator.",
                    "Without a calculator, what is {a} {op} {b}?",
                    "In your head: {a} {op} {b} = ?", "No tools, please: what's {a} {w} {b}?",
                    "Work out {a} {op} {b} mentally.", "Don't use the calculator: {a} {op} {b}")


def mental_working(a: int, op: str, b: int) -> str:
    """The answer to `a op b` (2-digit numbers, or one of them 1-digit; a >= b for -) worked
    digit by digit, as on paper: the units first, then the tens with the carry or borrow, then
    the result. Each step is a fact of one-digit numbers the model can learn; the whole sum as
    one fact it mostly cannot."""
    (ta, ua), (tb, ub) = divmod(a, 10), divmod(b, 10)
    r = a + b if op == "+" else a - b
    if op == "+":
        carry = ua + ub >= 10
        work = f"{ua} + {ub} = {ua + ub}"
        tens = [t for t in (ta, tb) if t] + ([1] if carry else [])
        if len(tens) > 1:  # 48 + 1 has no tens step: the 4 comes down as it is
            work += (", carry 1: " if carry else ", then ") + (
                " + ".join(map(str, tens)) + f" = {sum(tens)}")
    else:
        borrow = ua < ub
        work = f"{ua + 10 * borrow} - {ub} = {ua + 10 * borrow - ub}"
        tens = [ta] + ([1] if borrow else []) + ([tb] if tb else [])
        if len(tens) > 1:
            work += (", borrow 1: " if borrow else ", then ") + (
                " - ".join(map(str, tens)) + f" = {ta - borrow - tb}")
    return f"{work}, so {a} {op} {b} = {r}."


def mental_problems() -> list[tuple[int, str, int]]:
    """Every (a, op, b): a 2-digit number plus or minus a 1-digit one, the sums in either order."""
    out = []
    for big in range(10, 100):
        for small in range(1, 10):
            out += [(big, "+", small), (small, "+", big), (big, "-", small)]
    return out


def mental_items() -> list[Conversation]:
    rng = random.Random(f"{SEED}:mental")
    out = []
    for a, op, b in mental_problems():
        # Held-out problems are asked once: the eval asks each distinct question once anyway.
        times = 1 if is_heldout(f"{a} {op} {b}") else MENTAL_REPEATS
        phrasings = rng.sample(MENTAL_QUESTIONS, times)
        out += [mental_conversation(rng, "mental", a, op, b, q) for q in phrasings]
    return out


def two_digit_problems() -> list[tuple[int, str, int]]:
    """Every (a, op, b) of two 2-digit numbers, a >= b for - (12,195), in a fixed shuffled order."""
    out = [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-"
           if op == "+" or a >= b]
    random.Random(f"{SEED}:mental2").shuffle(out)
    return out


def mental_conversation(rng: random.Random, task: str, a: int, op: str, b: int,
                        template: str | None = None) -> Conversation:
    """`a op b` asked in `template`'s words (a random one of MENTAL_QUESTIONS if None)."""
    question = (template or rng.choice(MENTAL_QUESTIONS)).format(a=a, b=b, op=op, w=OP_WORDS[op])
    return conversation(rng, task, f"{a} {op} {b}", str(a + b if op == "+" else a - b),
                        [user(question), assistant(mental_working(a, op, b))])


def mental2_items(n: int) -> list[Conversation]:
    """The first `n` two-digit problems, each asked once: a few, so that the finetuned model
    knows the working but not every fact, and online RL has something to practise
    (`arithmetic_practice`)."""
    rng = random.Random(f"{SEED}:mental2")
    return [mental_conversation(rng, "mental2", *p) for p in two_digit_problems()[:n]]


def arithmetic_practice() -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out) questions for online RL, split as `assistant_dataset` splits them. To
    practise: every training-split two-digit problem (`mental2`), most of them never shown
    worked in finetuning, and every training-split 2-digit +- 1-digit one (`mental`), so that
    their own working is practised too (on two-digit problems alone the model began to invent a
    tens digit for the 1-digit number: 91% -> 9% on those; with them 22%, docs/rl.md). Held
    out: the two-digit problems no stage trained on."""
    rng = random.Random(f"{SEED}:practice")
    train, heldout = [], []
    for p in two_digit_problems():
        c = mental_conversation(rng, "mental2", *p)
        (heldout if is_heldout(c.subject) else train).append(c)
    train += [mental_conversation(rng, "mental", *p) for p in mental_problems()
              if not is_heldout(f"{p[0]} {p[1]} {p[2]}")]
    rng.shuffle(train)
    return train, heldout
