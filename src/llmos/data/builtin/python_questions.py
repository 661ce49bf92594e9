"""Questions ``builtin:assistant`` answers by running a snippet with the ``python`` tool. The
tool output is what the snippet really prints: it is run here, in-process (it is our own code).
"""

from __future__ import annotations

import contextlib
import io
import random

from llmos.data.builtin.turns import SEED, assistant, conversation, tool_call, user
from llmos.data.records import Conversation

WORDS = ("banana", "python", "mississippi", "library", "keyboard", "elephant", "notebook",
         "umbrella", "giraffe", "sandwich", "volcano", "lantern", "quartz", "rhythm", "cabbage",
         "avocado", "bookkeeper", "strawberry", "teapot", "level", "racecar", "kayak", "noon",
         "abracadabra", "pepper", "success", "balloon", "coffee", "tomato", "alphabet")
SENTENCES = ("the quick brown fox jumps over the lazy dog", "to be or not to be",
             "hello world from python", "small models learn fast", "read the docs first",
             "simple is better than complex", "now is better than never",
             "errors should never pass silently", "beautiful is better than ugly",
             "flat is better than nested")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
EXPR_QUESTIONS = ("What does `{e}` return?", "What is the value of `{e}`?",
                  "What does `{e}` evaluate to in Python?", "Run `{e}` and tell me the result.")
EXPR_ANSWERS = ("`{e}` returns `{out}`.", "It evaluates to `{out}`.", "The result is `{out}`.")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(1950, 2050), rng.randint(1, 12), rng.randint(1, 28)


def _yes_no(yes: str, no: str):
    # The answer quotes the output, so "contains the output" scores yes/no answers too.
    return lambda out: f"It prints {out}, so " + (yes if out == "True" else no)


# Expression templates: rng -> a Python expression; the question and answer are generic.
EXPRESSIONS = (
    lambda r: f"sorted({r.choice(WORDS)!r})",
    lambda r: f"{r.choice(WORDS)!r}.upper()",
    lambda r: f"{r.choice(WORDS)!r}.capitalize()",
    lambda r: f"{r.choice(SENTENCES)!r}.split()",
    lambda r: f"{r.choice(SENTENCES)!r}.title()",
    lambda r: f"{r.choice('-_/,')!r}.join({r.sample(WORDS, r.randint(2, 4))!r})",
    lambda r: (lambda w: f"{w!r}.replace({w[0]!r}, {w[0].upper()!r})")(r.choice(WORDS)),
    lambda r: (lambda w: f"{w!r}.find({r.choice(w)!r})")(r.choice(WORDS)),
    lambda r: f"{r.choice(WORDS)!r}.center({r.randint(12, 20)}, '*')",
    lambda r: f"{r.choice(WORDS)[:4]!r} * {r.randint(2, 4)}",
    lambda r: f"str({r.randint(1, 999)}).zfill({r.randint(4, 7)})",
    lambda r: f"list(enumerate({r.choice(WORDS)[:3]!r}))",
    lambda r: f"sorted({r.sample(range(1, 100), r.randint(3, 6))!r}, reverse=True)",
    lambda r: f"divmod({r.randint(100, 999)}, {r.randint(3, 40)})",
    lambda r: f"{r.choice(WORDS)!r}[{r.randint(1, 3)}:{r.randint(4, 6)}]",
    lambda r: f"list(range({r.randint(0, 5)}, {r.randint(10, 30)}, {r.randint(2, 5)}))",
    lambda r: f"round({r.randint(1, 999)} / {r.randint(3, 97)}, {r.randint(1, 4)})",
    lambda r: f"max({r.sample(range(-50, 200), r.randint(4, 7))!r})",
    lambda r: f"{r.randint(10, 500)} % {r.randint(3, 20)}",
)


def _python_question(r: random.Random):
    """(question, code, final answer: a format string with {out} or a function of out)."""
    k = r.randrange(len(EXPRESSIONS) + 24)
    if k < len(EXPRESSIONS):
        e = EXPRESSIONS[k](r)
        return r.choice(EXPR_QUESTIONS).format(e=e), f"print(repr({e}))", r.choice(
            EXPR_ANSWERS).replace("{e}", e)
    k -= len(EXPRESSIONS)
    use = r.choice(("", " Use Python.", " Please check with Python."))
    w, s, n = r.choice(WORDS), r.choice(SENTENCES), r.randint(10, 500)
    y, m, d = _date(r)
    y2, m2, d2 = _date(r)
    a, b = r.randint(12, 999), r.randint(12, 999)
    iso, iso2 = f"{y}-{m:02d}-{d:02d}", f"{y2}-{m2:02d}-{d2:02d}"
    templates = (
        (f"How many characters are in '{w}'?{use}", f"print(len({w!r}))",
         f"'{w}' has {{out}} characters."),
        (f"How many times does '{w[1]}' appear in '{w}'?{use}", f"print({w!r}.count({w[1]!r}))",
         f"'{w[1]}' appears {{out}} times in '{w}'."),
        (f"What is '{w}' spelled backwards?{use}", f"print({w!r}[::-1])",
         f"'{w}' backwards is '{{out}}'."),
        (f"How many words are in the sentence '{s}'?{use}", f"print(len({s!r}.split()))",
         "The sentence has {out} words."),
        (f"How many vowels are in '{w}'?{use}", f"print(sum(ch in 'aeiou' for ch in {w!r}))",
         f"'{w}' has {{out}} vowels."),
        (f"Is '{w}' a palindrome?{use}", f"print({w!r} == {w!r}[::-1])",
         _yes_no(f"yes, '{w}' reads the same backwards.", f"no, '{w}' is not a palindrome.")),
        (f"What is the sum of the integers from 1 to {n}?{use}", f"print(sum(range(1, {n + 1})))",
         f"The sum of the integers from 1 to {n} is {{out}}."),
        (f"What is the sum of the squares of 1 to {n % 60 + 5}?{use}",
         f"print(sum(k * k for k in range(1, {n % 60 + 6})))",
         f"The sum of the squares of 1 to {n % 60 + 5} is {{out}}."),
        (f"How many days are in {MONTHS[m - 1]} {y}?{use}",
         f"import calendar\nprint(calendar.monthrange({y}, {m})[1])",
         f"{MONTHS[m - 1]} {y} has {{out}} days."),
        (f"What day of the week is {iso}?{use}",
         f"import datetime\nprint(datetime.date({y}, {m}, {d}).strftime('%A'))",
         f"{iso} is a {{out}}."),
        (f"Is {y} a leap year?{use}", f"import calendar\nprint(calendar.isleap({y}))",
         _yes_no(f"yes, {y} is a leap year.", f"no, {y} is not a leap year.")),
        (f"How many days are there from {iso} to {iso2}?{use}",
         f"from datetime import date\nprint((date({y2}, {m2}, {d2}) - date({y}, {m}, {d})).days)",
         f"From {iso} to {iso2} is {{out}} days."),
        (f"What date is {n} days after {iso}?{use}",
         f"from datetime import date, timedelta\nprint(date({y}, {m}, {d}) + timedelta(days={n}))",
         f"{n} days after {iso} is {{out}}."),
        (f"What is the square root of {n}?{use}", f"import math\nprint(math.sqrt({n}))",
         f"The square root of {n} is {{out}}."),
        (f"What is {n % 20 + 5} factorial?{use}",
         f"import math\nprint(math.factorial({n % 20 + 5}))",
         f"{n % 20 + 5}! = {{out}}."),
        (f"What is the greatest common divisor of {a} and {b}?{use}",
         f"import math\nprint(math.gcd({a}, {b}))", f"The GCD of {a} and {b} is {{out}}."),
        (f"What is the least common multiple of {a % 90 + 4} and {b % 90 + 4}?{use}",
         f"import math\nprint(math.lcm({a % 90 + 4}, {b % 90 + 4}))",
         f"The LCM of {a % 90 + 4} and {b % 90 + 4} is {{out}}."),
        (f"How many ways can you choose {n % 6 + 2} items from {n % 30 + 10}?{use}",
         f"import math\nprint(math.comb({n % 30 + 10}, {n % 6 + 2}))",
         f"There are {{out}} ways to choose {n % 6 + 2} items from {n % 30 + 10}."),
        (f"What is 2 to the power of {n % 60 + 10}?{use}", f"print(2 ** {n % 60 + 10})",
         f"2 ** {n % 60 + 10} = {{out}}."),
        (f"What is {a} in hexadecimal?{use}", f"print(hex({a}))",
         f"{a} in hexadecimal is {{out}}."),
        (f"What is {a} in binary?{use}", f"print(bin({a}))", f"{a} in binary is {{out}}."),
        (f"Is {a} a prime number?{use}",
         f"n = {a}\nprint(n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1)))",
         _yes_no(f"yes, {a} is prime.", f"no, {a} is not prime.")),
        (f"What is the {_ordinal(n % 60 + 5)} Fibonacci number?{use}",
         f"a, b = 0, 1\nfor _ in range({n % 60 + 5}):\n    a, b = b, a + b\nprint(a)",
         f"The {_ordinal(n % 60 + 5)} Fibonacci number is {{out}}."),
        (f"What is the sum of the digits of {a * b}?{use}",
         f"print(sum(int(c) for c in str({a * b})))",
         f"The digits of {a * b} add up to {{out}}."),
    )
    return templates[k]


def run_snippet(code: str) -> str:
    """What the snippet prints, as the python tool reports it (final newlines dropped)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code, {"__name__": "__llmos_snippet__"})  # our own generated code, see above
    return buffer.getvalue().rstrip("\n")


def python_items(n: int) -> list[Conversation]:
    rng = random.Random(f"{SEED}:python")
    out, seen = [], set()
    for _ in range(50 * n):  # templates with few values run out of new questions; stop then
        if len(out) >= n:
            break
        question, code, final = _python_question(rng)
        if question in seen:
            continue
        seen.add(question)
        output = run_snippet(code)
        answer = final(output) if callable(final) else final.replace("{out}", output)
        turns = [user(question), tool_call("python", {"code": code}),
                 {"role": "tool", "name": "python", "content": output}, assistant(answer)]
        out.append(conversation(rng, "python", code, output, turns))
    return out
