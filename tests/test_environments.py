"""The environments `llmos improve` practises in: their problems, hints and checks."""

from __future__ import annotations

from llmos.envs.environments import ENVIRONMENTS, countdown_problems
from llmos.envs.prompts import verify
from llmos.evals.system2 import countdown_items


def test_countdown_holds_out_evals_puzzles_and_trains_on_others():
    train, held = countdown_problems()
    asked = [p.messages[-1]["content"] for p in held]
    assert asked == [i.messages[-1]["content"] for i in countdown_items()]  # System 2's set
    assert not {p.messages[-1]["content"] for p in train} & set(asked)
    from llmos.envs.countdown import parse_question

    def same(p):  # (2, 3, 4) -> 14 and (4, 3, 2) -> 14 are one puzzle
        numbers, target = parse_question(p.messages[-1]["content"])
        return tuple(sorted(numbers)), target

    assert not {same(p) for p in train} & {same(p) for p in held}
    assert len(train) > 4500 and all(p.task == "countdown" for p in train)


def test_a_countdown_hint_is_a_solution_and_the_check_wants_one():
    env = ENVIRONMENTS["countdown"]
    _, held = countdown_problems()
    p = held[0]
    hint = env.hint(p)
    assert hint.startswith("one way: ") and verify(p, hint) == 1.0 and env.heldout_right(p, hint)
    last = hint.rsplit("= ", 1)[-1]
    assert not env.heldout_right(p, f"The answer is {last}.")  # no working, no solution


def test_arithmetic_checks_the_final_number_held_out_and_the_working_in_training():
    env = ENVIRONMENTS["arithmetic"]
    train, held = env.problems()
    p = next(q for q in held if "+" in q.messages[-1]["content"])
    a, b = (int(x) for x in p.messages[-1]["content"].split("?")[0].split()[-3::2])
    assert int(p.answer) == a + b
    guess = f"Maybe {a + b + 1} or {p.answer}: it is {p.answer}."
    assert env.heldout_right(p, guess) and verify(p, guess) == 0.0  # guesses earn nothing
    assert env.hint(p) == f"the answer is {p.answer}" and len(train) > 10000


def test_demonstrations_pass_their_own_training_check():
    for name in ("arithmetic", "countdown"):
        env = ENVIRONMENTS[name]
        train, _ = env.problems()
        for p in train[:50]:
            assert verify(p, env.demonstrate(p)) == 1.0, (name, p.messages[-1], env.demonstrate(p))
