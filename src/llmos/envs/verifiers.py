"""Verifiers: programmatic checks of an answer against a reference, for every part of llmos that
needs to know whether an answer is right. Held-out evaluation, the arena's verifier judge,
online RL's rewards, and the System-2 strategies read the same functions.

    score("arithmetic", "55", "8 + 7 = 15, carry 1: 4 + 1 = 5, so 48 + 7 = 55.")   # 1.0
    exact_number("55", "What is 48 + 7?", "48 + 7 = 56.")                          # 0.0
    passes_tests("def f(x):\n    return 2 * x", "assert f(2) == 4")               # 1.0 (sandboxed)
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter

from llmos.agent.sandbox import PythonLimits, run_python
from llmos.data.builtin.lookup import strip_citations

F1_THRESHOLD = 0.5
# Scored by word F1, passed at F1_THRESHOLD.
FREE_TEXT_TASKS = ("docstring", "followup", "lookup", "chat")


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def word_f1(produced: str, expected: str) -> float:
    p, e = words(produced), words(expected)
    common = sum((Counter(p) & Counter(e)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(e)
    return 2 * precision * recall / (precision + recall)


NUMBER = re.compile(r"-?\d+(\.\d+)?")


def contains_number(text: str, number: str) -> bool:
    """`number` appears as a whole number: 31 is not found in 2031, 123 not in -123 or 1.23."""
    pattern = rf"(?<![\d.\-]){re.escape(number)}(?![\d]|\.\d)"
    return re.search(pattern, text.replace(",", "")) is not None


def score(task: str, expected: str, answer: str) -> float:
    """1.0 / 0.0 for exact tasks; the F1 for free-text ones (thresholded by the caller)."""
    expected = expected.strip()
    numeric = task in ("arithmetic", "mental", "mental2", "session")
    if numeric or (task == "python" and NUMBER.fullmatch(expected)):
        return float(contains_number(answer, expected))
    if task in ("python", "signature"):
        return float(expected in answer)
    if task == "identity":
        return float("llmos" in answer.lower())
    if task == "lookup":  # the citation is checked on its own (evals/knowledge_qa.py)
        answer = strip_citations(answer)
    return word_f1(answer, expected)


def passed(task: str, value: float) -> bool:
    """Whether a `score` is a right answer: F1 >= F1_THRESHOLD for free text, else exact."""
    return value >= F1_THRESHOLD if task in FREE_TEXT_TASKS else value >= 1.0


# ---- arithmetic with its working ---------------------------------------------------------------


NUM = r"-?\d+(?:\.\d+)?"
EQUATION = re.compile(rf"({NUM}(?: ?[-+*/] ?{NUM})+) ?= ?({NUM})")
TERM = re.compile(rf" ?([-+*/])? ?({NUM})")


def _evaluate(terms: list[tuple[str, float]]) -> float:
    """The value of x op y op z ... with * and / before + and - (division by 0 gives nan)."""
    total, product = 0.0, None
    for op, y in terms:
        if op in ("*", "/"):
            product = product * y if op == "*" else (product / y if y else math.nan)
        else:
            total += product if product is not None else 0.0
            product = -y if op == "-" else y
    return total + product


def true_equation_numbers(text: str) -> set[float]:
    """The numbers of the equations a text writes that hold ("8 + 7 = 15" gives 8, 7 and 15,
    "4 + 3 + 1 = 8" gives 4, 3, 1 and 8; "8 + 7 = 14" gives nothing)."""
    out = set()
    for m in EQUATION.finditer(text):
        terms = [(op or "+", float(x)) for op, x in TERM.findall(m[1])]
        if terms[0][0] == "-":  # a leading minus is the first number's sign
            terms[0] = ("+", -terms[0][1])
        z = float(m[2])
        if math.isclose(_evaluate(terms), z, rel_tol=1e-9, abs_tol=1e-9):  # never for nan
            out |= {x for _, x in terms} | {z}
    return out


def exact_number(expected: str, question: str, answer: str) -> float:
    """1.0 when the answer states the result and every other number it writes is from the
    question or from a true equation of its working ("416 - 50 = 366." and "8 + 7 = 15, carry
    1: 4 + 1 = 5, so 48 + 7 = 55." are right; "366 or 367", "416 - 50 = 367." and "8 + 7 =
    14, so 48 + 7 = 55." are not: guesses and wrong working earn nothing)."""
    answer = answer.replace(",", "")
    if not contains_number(answer, expected):
        return 0.0
    allowed = {float(m.group()) for m in NUMBER.finditer(question.replace(",", ""))}
    allowed |= true_equation_numbers(answer) | {float(expected)}
    for m in NUMBER.finditer(answer):
        if float(m.group()) not in allowed:
            return 0.0
    return 1.0


# ---- code --------------------------------------------------------------------------------------


def extract_code(text: str) -> str:
    """The first fenced code block of an answer, else the whole answer."""
    m = re.search(r"```(?:python|py)?\n(.*?)```", text, re.S)
    return m.group(1) if m else text


def passes_tests(code: str, tests: str) -> float:
    result = run_python(code + "\n\n" + tests, PythonLimits(cpu_seconds=2, wall_seconds=5))
    return float(result.exit_code == 0)


def working_value(question: str, answer: str, final: bool) -> float:
    """A check of worked arithmetic that needs no reference answer (a process verifier, as a
    calculator would check the work): 0.0 as soon as an equation the answer writes is false; a
    final answer must also write an equation, and every number in it must come from the
    question or from one of its true equations ("carry 1" is judged once the "4 + 1 = 5" that
    uses the 1 is written). Else 1.0."""
    answer = answer.replace(",", "")
    equations = [m.group() for m in EQUATION.finditer(answer)]
    if any(not true_equation_numbers(e) for e in equations):
        return 0.0
    if not final:
        return 1.0
    if not equations:
        return 0.0
    allowed = {float(m.group()) for m in NUMBER.finditer(question.replace(",", ""))}
    allowed |= true_equation_numbers(answer)
    return float(all(float(m.group()) in allowed for m in NUMBER.finditer(answer)))


def judge_working(messages: list[dict], texts: list[str], final: bool) -> list[float]:
    """`working_value` of each answer to the conversation's last question: a System-2 judge
    (llmos.infer.think.Judge)."""
    question = messages[-1]["content"] if messages else ""
    return [working_value(question, t, final) for t in texts]


def function_program(head: str, answer: str) -> str:
    """The program an answer to "complete this function" stands for: its code block, after the
    function's own head (signature and docstring) when the block does not define it again."""
    code = extract_code(answer)
    name = re.findall(r"^def (\w+)\(", head, re.M)
    if name and re.search(rf"^def {re.escape(name[-1])}\(", code, re.M):
        return code
    return head + code


def docstring(code: str) -> str:
    """The docstring of the last function `code` defines ("" when it does not parse)."""
    try:
        functions = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        return ""
    return (ast.get_docstring(functions[-1]) or "") if functions else ""


def doctest_value(question: str, answer: str, final: bool) -> float:
    """Whether a completed function passes the examples its own docstring shows (the public
    tests, as `>>>` lines; the graded tests stay hidden), run in the Python sandbox: 1.0 it
    does, 0.0 it fails or does not run, 0.5 it runs but the docstring has no examples to check
    (half of HumanEval's write them as prose). A partial answer is not judged (1.0). The
    question holds the function in a ```python block."""
    if not final:
        return 1.0
    head = extract_code(question)
    program = (function_program(head, answer) + "\n\nimport doctest, sys\n"
               f"_test = doctest.DocTestParser().get_doctest({docstring(head)!r}, globals(), "
               "'examples', None, 0)\n"
               "if not _test.examples:\n    sys.exit(3)\n"
               "sys.exit(1 if doctest.DocTestRunner(verbose=False).run(_test).failed else 0)\n")
    code = run_python(program, PythonLimits(cpu_seconds=2, wall_seconds=5)).exit_code
    return {0: 1.0, 3: 0.5}.get(code, 0.0)
