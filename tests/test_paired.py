"""Paired changes between two evaluations of the same questions: known cases."""

from __future__ import annotations

import pytest

from llmos.evals import paired


def items(task: str, scores: list[float]) -> list[dict]:
    return [{"task": task, "subject": f"q{i}", "expected": str(i), "score": s}
            for i, s in enumerate(scores)]


def test_the_same_answers_change_nothing():
    before = items("mental", [1.0, 0.0, 1.0, 1.0])
    ch = paired.task_changes(before, before)["mental"]
    assert ch == {"before": 0.75, "after": 0.75, "change": 0.0, "ci": [0.0, 0.0], "n": 4}
    assert paired.worst_fall({"mental": ch}) is None


def test_a_fall_on_the_same_questions_is_resolved_where_two_accuracies_are_not():
    # 400 questions, 80% right before; 40 of the right ones turn wrong, 8 wrong ones right.
    before = items("python", [1.0] * 320 + [0.0] * 80)
    after = items("python", [0.0] * 40 + [1.0] * 280 + [1.0] * 8 + [0.0] * 72)
    ch = paired.task_changes(before, after)["python"]
    assert ch["change"] == pytest.approx(-0.08)
    # The normal approximation: sd of the differences sqrt(48/400 - 0.08^2) = 0.337, so
    # -0.08 +- 1.96 * 0.337 / 20 = [-0.113, -0.047]; it excludes 0, while the accuracies'
    # own intervals (0.80 and 0.72, each +-4 points) overlap.
    lo, hi = ch["ci"]
    assert lo == pytest.approx(-0.113, abs=0.01) and hi == pytest.approx(-0.047, abs=0.01)
    assert paired.worst_fall({"python": ch}) == ("python", pytest.approx(-0.08))


def test_only_questions_both_answered_pair_and_pass_marks_apply():
    before = items("mental", [1.0, 1.0]) + items("docstring", [0.2])
    after = items("mental", [1.0, 0.0, 1.0]) + items("docstring", [0.9])
    changes = paired.task_changes(before, after)
    assert changes["mental"]["n"] == 2 and changes["mental"]["change"] == -0.5
    # docstring answers pass at an F1 mark, not at any score above 0
    assert changes["docstring"]["before"] == 0.0 and changes["docstring"]["after"] == 1.0
    assert paired.worst_fall(changes, skip=("mental",)) is None
    assert "mental 1.000 -> 0.500 (-50.0" in paired.describe(changes)


def test_wordings_of_one_subject_pair_by_question_and_old_files_by_order():
    # Identity questions share a subject and an answer; each wording is its own question.
    before = [{"task": "identity", "subject": "who", "expected": "llmos", "question": q,
               "score": s} for q, s in (("Who are you?", 1.0), ("Your name?", 0.0))]
    after = [dict(b, score=1.0 - b["score"]) for b in reversed(before)]
    ch = paired.task_changes(before, after)["identity"]
    assert ch["n"] == 2 and ch["change"] == 0.0 and ch["ci"] == [-1.0, 1.0]  # one up, one down
    # A file written before records kept their question pairs with a new one in order.
    old = [{k: v for k, v in b.items() if k != "question"} for b in before]
    assert paired.task_changes(old, before)["identity"]["ci"] == [0.0, 0.0]


def test_files_pair_each_task_apart_and_leave_out_what_has_no_right_answer():
    def result(docstring: float, knowledge: float) -> dict:
        return {"model": "m", "results": {
            "assistant": {"kind": "assistant", "primary": "acc",
                          "items": items("docstring", [docstring])},
            "knowledge": {"kind": "knowledge", "primary": "acc",
                          "items": items("docstring", [knowledge])},
            "bpb": {"kind": "bpb", "primary": "bpb", "items": [{"bpb": 1.4}]}}}

    changes = paired.result_changes(result(0.0, 1.0), result(1.0, 1.0))
    assert set(changes) == {"docstring", "knowledge:docstring"}
    assert changes["docstring"]["change"] == 1.0 and changes["knowledge:docstring"]["change"] == 0
    assert "no question in common" in paired.format_table({}, "sft")
    assert paired.headline(changes, ()).startswith("the other tasks: none fell")


def test_one_assistant_task_pairs_with_a_whole_assistant_eval():
    whole = {"results": {"assistant": {"kind": "assistant", "primary": "acc",
                                       "items": items("mental", [1.0, 0.0]) + items(
                                           "docstring", [1.0])}}}
    one = {"results": {"assistant:mental": {"kind": "assistant", "primary": "acc",
                                            "items": items("mental", [1.0, 1.0])}}}
    changes = paired.result_changes(whole, one)
    assert set(changes) == {"mental"} and changes["mental"]["change"] == 0.5
