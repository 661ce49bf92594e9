"""Prompt sources with a verifiable reward: what online RL practises on and what its held-out
accuracy is measured on (and, next, self-improvement and the System-2 strategies).

- ``builtin:arithmetic`` - two 2-digit numbers added or subtracted without the calculator
  (``arithmetic_practice``), scored by exact arithmetic with its working (`exact_number`).
- ``builtin:mental`` - the 2-digit +- 1-digit problems of ``builtin:arithmetic`` alone: named
  beside it, they are practised twice as often (no held-out set of their own).
- ``builtin:signature``, ``builtin:identity`` - those tasks of ``builtin:assistant`` (the
  answer must contain the signature / the name llmos).
- a JSONL file, one ``{"prompt": str | messages, "answer": "42"}`` (exact number or substring) or
  ``{"prompt": ..., "tests": "assert f(2) == 4"}`` (the answer's code, then the tests, run in the
  Python sandbox) per line; held out by a hash of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.data.builtin.arithmetic import arithmetic_practice
from llmos.data.builtin.assistant import assistant_dataset
from llmos.data.record_sources import split_bucket
from llmos.data.records import prompt_of
from llmos.data.sources import SkipReport, iter_jsonl
from llmos.envs import countdown
from llmos.envs.verifiers import NUMBER, exact_number, extract_code, passes_tests, score

BUILTIN_ARITHMETIC = "builtin:arithmetic"


@dataclass
class Prompt:
    messages: list[dict]  # the conversation up to the user's question
    answer: str = ""  # the exact result / expected substring ("" when scored by tests or a RM)
    tests: str = ""  # Python asserts run after the answer's code
    task: str = "arithmetic"  # arithmetic | text | python | countdown | reward


# spec -> (the builtin:assistant tasks asked, how answers are scored)
BUILTIN_TASKS = {"builtin:arithmetic": (("mental2", "mental"), "arithmetic"),
                 "builtin:mental": (("mental",), "arithmetic"),
                 "builtin:signature": (("signature",), "text"),
                 "builtin:identity": (("identity",), "text")}


def builtin_task(spec: str) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out) questions of one builtin:assistant task, as the model is asked them."""
    tasks, kind = BUILTIN_TASKS[spec]
    practice = kind == "arithmetic"  # problems shown worked or not, split as RL splits them
    train, heldout = arithmetic_practice() if practice else assistant_dataset()
    pick = lambda cs: [Prompt(prompt_of(c), c.answer, task=kind) for c in cs if c.task in tasks]  # noqa: E731
    return pick(train), pick(heldout)


def read_prompt_file(path: str | Path, val_fraction: float
                     ) -> tuple[list[Prompt], list[Prompt], int]:
    """(train, held-out, skipped lines) from a JSONL prompt file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"prompt file {path} not found")
    train, heldout, skips = [], [], SkipReport()
    for where, row in iter_jsonl(Path(path), str(path), skips):
        try:
            prompt = row["prompt"]
            messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                        else [dict(m) for m in prompt])
            if not messages or messages[-1].get("role") != "user":
                raise ValueError("the prompt must end with a user message")
            answer, tests = str(row.get("answer", "")), str(row.get("tests", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            skips.add("bad_record", where)
            continue
        task = "python" if tests else ("arithmetic" if NUMBER.fullmatch(answer.strip())
                                       else "text" if answer else "reward")
        side = heldout if split_bucket(messages) < val_fraction else train
        side.append(Prompt(messages, answer, tests, task))
    return train, heldout, skips.total


def load_prompts(specs: list[str], val_fraction: float) -> tuple[list[Prompt], list[Prompt]]:
    train, heldout = [], []
    for spec in specs:
        if spec in BUILTIN_TASKS:
            a, b = builtin_task(spec)
        else:
            a, b, skipped = read_prompt_file(spec, val_fraction)
            if skipped:
                print(f"rl: {spec}: skipped {skipped} malformed lines")
        train, heldout = train + a, heldout + b
    if not train:
        raise ValueError(f"rl: no training prompts in {', '.join(specs)}")
    return train, heldout


def verify(p: Prompt, content: str) -> float:
    """The reward of one answer's final text under the prompt's programmatic verifier."""
    if p.task == "arithmetic":
        return exact_number(p.answer, p.messages[-1]["content"], content)
    if p.task == "python":
        return passes_tests(extract_code(content), p.tests)
    if p.task == "countdown":  # the puzzle is in the question; any valid working is right
        return countdown.check_question(p.messages[-1]["content"], content)
    return score("python", p.answer, content)  # contains the expected text
