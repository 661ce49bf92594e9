"""Environments: the verifiers that score answers (RL, evaluation, judges) and the prompt
sources RL practises on."""

from __future__ import annotations

import json

import pytest

from llmos.envs import prompts, verifiers
from llmos.envs.verifiers import exact_number, true_equation_numbers


def test_the_verifier_wants_the_result_and_no_other_new_number():
    q = "What is 416 - 50?"
    assert exact_number("366", q, "416 - 50 = 366.") == 1.0
    assert exact_number("366", q, "416 - 50 = 367.") == 0.0
    assert exact_number("366", q, "366 or 367") == 0.0  # listing guesses earns nothing
    assert exact_number("366", q, "It is 1,366.") == 0.0
    # working shown digit by digit counts when every step holds
    q = "What is 48 + 7? Answer without the calculator."
    assert exact_number("55", q, "8 + 7 = 15, carry 1: 4 + 1 = 5, so 48 + 7 = 55.") == 1.0
    assert exact_number("55", q, "8 + 7 = 14, carry 1: 4 + 1 = 5, so 48 + 7 = 55.") == 0.0
    assert exact_number("55", q, "8 + 7 = 15, so 48 + 7 = 55 or 56.") == 0.0
    # a step of three numbers (the tens with the carry or borrow) holds or not as a whole
    q = "What is 48 + 37? Answer without the calculator."
    assert exact_number("85", q, "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 85.") == 1.0
    assert exact_number("85", q, "8 + 7 = 15, carry 1: 4 + 3 + 1 = 9, so 48 + 37 = 85.") == 0.0
    assert exact_number("85", q, "8 + 7 = 15, carry 1: 4 + 3 = 8, so 48 + 37 = 85.") == 0.0
    q = "What is 48 - 29? Answer without the calculator."
    assert exact_number("19", q, "18 - 9 = 9, borrow 1: 4 - 1 - 2 = 1, so 48 - 29 = 19.") == 1.0
    assert true_equation_numbers("-3 + 5 = 2, 10 - 2 * 3 = 4, 6 / 0 = 1") == {-3, 5, 2, 10, 3, 4}
    p = prompts.Prompt([{"role": "user", "content": "Write f(x) returning 2x."}],
                       tests="assert f(2) == 4", task="python")
    assert prompts.verify(p, "```python\ndef f(x):\n    return 2 * x\n```") == 1.0
    assert prompts.verify(p, "```python\ndef f(x):\n    return x\n```") == 0.0


def test_prompt_file_rows_and_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "What is 2 + 2?", "answer": "4"}),
        json.dumps({"prompt": [{"role": "user", "content": "f?"}], "tests": "assert f(1)"}),
        json.dumps({"prompt": "Say hi", "answer": "hi"}),
        json.dumps({"answer": "no prompt"}),
        "not json",
    ]))
    train, held, skipped = prompts.read_prompt_file(path, val_fraction=0.0)
    assert skipped == 2 and not held
    assert [p.task for p in train] == ["arithmetic", "python", "text"]


def test_a_missing_prompt_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file .* not found"):
        prompts.read_prompt_file(tmp_path / "nope.jsonl", 0.1)


@pytest.mark.parametrize("task,value,right", [
    ("arithmetic", 1.0, True), ("arithmetic", 0.0, False), ("docstring", 0.5, True),
    ("docstring", 0.49, False), ("chat", 0.6, True), ("signature", 0.99, False)])
def test_passed_thresholds_free_text_and_wants_exact_elsewhere(task, value, right):
    assert verifiers.passed(task, value) is right


def test_builtin_mental_beside_arithmetic_practises_one_digit_sums_twice():
    from llmos.data.builtin.arithmetic import arithmetic_practice

    alone, held_alone = prompts.load_prompts(["builtin:arithmetic"], 0.1)
    both, held_both = prompts.load_prompts(["builtin:arithmetic", "builtin:mental"], 0.1)
    assert held_both == held_alone  # held out: the two-digit problems, once
    extra = both[len(alone):]
    one_digit = {c.messages[-2]["content"] for c in arithmetic_practice()[0] if c.task == "mental"}
    assert len(extra) == len(one_digit) > 2000
    assert {p.messages[-1]["content"] for p in extra} == one_digit
    assert {p.task for p in extra} == {"arithmetic"}
