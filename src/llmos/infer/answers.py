"""Final answers out of worked text, in a form two answers can be compared in: what a vote
counts, what GSM8K and TriviaQA are scored on.

    extract("number", "8 + 7 = 15, carry 1: 4 + 1 = 5, so 48 + 7 = 55.")   # "55"
    extract("number", "... so the answer is $1,200.")                      # "1200"
    extract("choice", "The answer is (B).")                                 # "B"
    extract("code", "```python\\ndef f(x):  # double\\n    return 2*x\\n```")
                                                  # "def f(x):\\n    return 2 * x"
    extract("text", "The Beatles.")                                        # "beatles"

None means no answer was found (an empty or cut-off answer): a vote never counts it.
"""

from __future__ import annotations

import ast
import re
import string

KINDS = ("number", "choice", "code", "text")
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def clean_number(text: str) -> str:
    """'1,200.' -> '1200', '3.50' -> '3.5', '$7' -> '7'; not a number: the text stripped."""
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value == int(value) else str(value)


def extract_number(output: str) -> str | None:
    """The number after "the answer is" (else after "####", else the last number written)."""
    for marker in (r"answer is\s*\$?", r"####\s*\$?"):
        m = re.search(marker + r"(" + NUMBER.pattern + ")", output, flags=re.IGNORECASE)
        if m:
            return clean_number(m.group(1))
    found = NUMBER.findall(output)
    return clean_number(found[-1]) if found else None


def extract_choice(output: str) -> str | None:
    """A choice letter A-E: after "answer is" (brackets allowed), else a letter that opens the
    answer ("B", "(B) Paris", "B. Paris"), else the last bracketed letter ("... so (C)"). A
    capital that opens a sentence ("A library has ...") is not a choice."""
    m = re.search(r"answer is:?\s*\(?([A-E])\b", output, flags=re.IGNORECASE)
    if m:
        return m.group(1).upper()
    m = re.match(r"\s*(?:\(([A-E])\)|([A-E])(?:[).:]|\s*$))", output)
    if m:
        return m.group(1) or m.group(2)
    bracketed = re.findall(r"\(([A-E])\)", output)
    return bracketed[-1] if bracketed else None


def extract_code(output: str) -> str | None:
    """The first fenced block (else the whole answer) with comments and layout normalized by
    Python's own parser, so two programs that differ only in spacing or comments are one answer
    (a block that does not parse is kept as written, stripped)."""
    m = re.search(r"```(?:python|py)?\n(.*?)```", output, re.S)
    code = (m.group(1) if m else output).strip()
    if not code:
        return None
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError):
        return code


def normalize_answer(text: str) -> str:
    """TriviaQA/SQuAD normalization: lowercase, punctuation and articles out, spaces squeezed."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def extract(kind: str, output: str) -> str | None:
    """The comparable final answer of `output` for an answer kind (see KINDS)."""
    if kind == "number":
        return extract_number(output)
    if kind == "choice":
        return extract_choice(output)
    if kind == "code":
        return extract_code(output)
    if kind == "text":
        return normalize_answer(output) or None
    raise ValueError(f"unknown answer kind {kind!r}; one of {', '.join(KINDS)}")
