"""Win rate by judge (evals/judge_spread.py): each judge's decisions on the same pairs, the spread
across judges and over seeds, the intervals, bad input, and a run end to end on tiny checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import pretrained_tiny

from llmos import checkpoint, reward_model
from llmos import tokenizer as tokenizers_
from llmos.cli import main
from llmos.data.records import Conversation
from llmos.evals import assistant_tasks, judge_spread, report
from llmos.evals.judge_spread import VERIFIER
from llmos.infer.engine import SamplingParams

RM = "rm"


def record(right: bool, text: str) -> dict:
    return {"task": "arithmetic", "subject": text, "score": float(right), "answer": text,
            "transcript": [{"role": "assistant", "content": text}]}


# ---- deciding pairs --------------------------------------------------------------------------


def test_the_verifier_alone_ties_what_a_reward_judge_decides():
    mine = [record(True, "4"), record(True, "four"), record(False, "5"), record(False, "7"),
            record(False, "6")]
    theirs = [record(False, "5"), record(True, "4"), record(False, "6"), record(False, "7"),
              record(True, "4")]
    # The reward model's preference never overrules the verifier (q0, q4), decides where both
    # answers are right (q1) or both wrong (q2), and the same answer is a tie for every judge.
    rewards = {RM: [(0.0, 9.0), (1.0, 0.0), (0.0, 2.0), (5.0, 0.0), (9.0, 0.0)]}
    pairs = judge_spread.judge_pairs(mine, theirs, rewards)
    assert [p["outcome"][VERIFIER] for p in pairs] == ["win", "tie", "tie", "tie", "loss"]
    assert [p["outcome"][RM] for p in pairs] == ["win", "win", "loss", "tie", "loss"]
    assert [p["by"][RM] for p in pairs] == ["verifier", "reward", "reward", "same", "verifier"]
    assert pairs[1]["rewards"] == {RM: [1.0, 0.0]} and pairs[2]["child"] == "5"

    v, r = (judge_spread.judge_stats(pairs, j, rounds=200) for j in (VERIFIER, RM))
    assert (v["wins"], v["losses"], v["ties"], v["decided"], v["win_rate"]) == (1, 1, 3, 2, 0.5)
    assert (r["wins"], r["losses"], r["ties"], r["decided"]) == (2, 2, 1, 4)
    assert r["by_reward"] == {"wins": 1, "losses": 1}
    assert r["reward_both_wrong"] == {"wins": 0, "losses": 1}  # q2: two wrong answers
    assert v["by_reward"] == {"wins": 0, "losses": 0}


def test_the_spread_of_the_reward_judges_on_a_known_case():
    s = judge_spread.spread({"a": 0.40, "b": 0.56, "c": 0.62, "undecided": None})
    assert s == pytest.approx({"min": 0.40, "max": 0.62, "spread": 0.22, "lowest": "a",
                               "highest": "c", "n": 3})
    assert judge_spread.spread({"x": None}) is None
    # The verifier is not one of the reward-model judges whose spread is reported.
    pairs = [{"outcome": {VERIFIER: "win", "a": "win", "b": "loss"}, "by": {}, "child_correct":
              True, "parent_correct": False} for _ in range(3)]
    for p in pairs:
        p["by"] = {j: "verifier" for j in p["outcome"]}
    pairs[0]["outcome"]["b"] = "win"
    setting = judge_spread.setting_result(pairs, [VERIFIER, "a", "b"], rounds=50)
    spread = setting["reward_spread"]
    assert spread["min"] == pytest.approx(1 / 3) and spread["max"] == 1.0
    assert spread["spread"] == pytest.approx(2 / 3) and spread["n"] == 2
    assert setting["correct"] == {"questions": 3, "child": 3, "parent": 0}
    # Two reward judges that split the same pairs differently: 3 decided by both, 1 alike.
    for p in pairs:
        p["by"] = {VERIFIER: "undecided", "a": "reward", "b": "reward"}
    assert judge_spread.agreement(pairs, [VERIFIER, "a", "b"]) == {
        "judges": 2, "decided_by_all": 3, "unanimous": 1}


def outcomes(*rows: str) -> list[dict]:
    return [{"outcome": {VERIFIER: o}, "by": {VERIFIER: "verifier"}, "child_correct": o == "win",
             "parent_correct": o == "loss"} for o in rows]


def test_intervals_resample_questions():
    every = judge_spread.judge_stats(outcomes("win", "win", "tie", "win"), VERIFIER)
    assert (every["win_rate"], every["ci"]) == (1.0, [1.0, 1.0])
    none = judge_spread.judge_stats(outcomes("tie", "tie"), VERIFIER)
    assert (none["win_rate"], none["ci"], none["decided"]) == (None, [0.0, 1.0], 0)
    half = judge_spread.judge_stats(outcomes(*["win", "loss"] * 20), VERIFIER)
    assert half["win_rate"] == 0.5 and 0.3 < half["ci"][0] < 0.5 < half["ci"][1] < 0.7
    # Over two seeds every question is won once and lost once: each seed's rate is 0 or 1 (a
    # spread of 100 points), while every resample of whole questions pools to 0.5.
    seeds = {"seed 0": outcomes("win", "loss", "win"), "seed 1": outcomes("loss", "win", "loss")}
    o = judge_spread.over_seeds(seeds, [VERIFIER], rounds=200)[VERIFIER]
    assert o["win_rates"] == {"seed 0": 2 / 3, "seed 1": 1 / 3}
    assert o["spread"]["spread"] == pytest.approx(1 / 3)
    assert o["pooled"] == {"wins": 3, "losses": 3, "decided": 6, "win_rate": 0.5,
                           "ci": [0.5, 0.5]}


# ---- bad input -------------------------------------------------------------------------------


def test_judges_are_parsed_and_checked(tmp_path, base):
    assert judge_spread.parse_judges("a, reward:b,verifier") == [VERIFIER, "a", "b"]
    assert judge_spread.parse_judges("a") == [VERIFIER, "a"]  # the headline is always there
    with pytest.raises(ValueError, match="empty"):
        judge_spread.parse_judges(" , ")
    with pytest.raises(ValueError, match="names a twice"):
        judge_spread.parse_judges("a,reward:a")
    _, ckpt = base
    with pytest.raises(FileNotFoundError, match="judge nowhere: no such directory"):
        judge_spread.load_judges(["nowhere"], ckpt)
    with pytest.raises(ValueError, match=f"judge {ckpt}: .* is not a reward model"):
        judge_spread.load_judges([str(ckpt)], ckpt)  # a policy checkpoint


@pytest.mark.parametrize("argv, message", [
    (["--judges", "verifier"], "--judges and --seeds go with --versus PARENT"),
    (["--seeds", "2"], "--judges and --seeds go with --versus PARENT"),
    (["--versus", "P", "--tasks", "assistant"], "leave out --tasks"),
    (["--versus", "P", "--seeds", "-1"], "--seeds >= 0"),
    ([], "--tasks is required"),
])
def test_cli_says_what_is_wrong(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "MODEL", *argv])
    assert message in capsys.readouterr().err


def test_cli_names_the_judge_that_is_not_a_reward_model(base, tmp_path, capsys):
    _, ckpt = base
    with pytest.raises(SystemExit):
        main(["eval", str(ckpt), "--versus", str(ckpt), "--judges", f"verifier,{ckpt}",
              "--out", str(tmp_path / "j.json")])
    assert f"judge {ckpt}:" in capsys.readouterr().err and not (tmp_path / "j.json").exists()


# ---- end to end on tiny checkpoints ----------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir):
    return pretrained_tiny(tmp_path_factory, corpus_dir, "judgesbase")


@pytest.fixture(scope="module")
def family(base, tmp_path_factory):
    """(child, parent, reward model A, reward model B): the child's answers differ from the
    parent's, so the reward models are asked."""
    _, parent = base
    root = tmp_path_factory.mktemp("family")
    torch.manual_seed(0)
    for name in ("rm_a", "rm_b"):
        rm = reward_model.RewardModel(checkpoint.load_model(parent))
        torch.nn.init.normal_(rm.score.weight, std=0.5)
        reward_model.save_reward_model(root / name, rm.eval(), parent, {})
    child = checkpoint.load_model(parent)
    with torch.no_grad():
        child.lm_head.weight.mul_(1.5)
    checkpoint.save(root / "child", child, parent, {"stage": "dpo", "parent": str(parent)})
    return root / "child", parent, root / "rm_a", root / "rm_b"


def heldout() -> list[Conversation]:
    user = {"role": "user", "content": "Who are you?"}
    gold = {"role": "assistant", "content": "I'm llmos."}
    return [Conversation([user, gold], "t", "identity", "Who are you?", "llmos"),
            Conversation([{"role": "system", "content": "Answer in one word."}, user, gold],
                         "t", "identity", "Who are you?", "llmos"),
            Conversation([{"role": "user", "content": "What is 2 + 3?"},
                          {"role": "assistant", "content": "5"}], "t", "arithmetic", "2+3", "5")]


def test_end_to_end_every_judge_decides_the_same_answers(family, tmp_path):
    child, parent, rm_a, rm_b = family
    judges = [VERIFIER, str(rm_a), str(rm_b)]
    r = judge_spread.evaluate(child, parent, judges, limit=10, seeds=[0, 1], heldout=heldout(),
                              rounds=100, log=lambda _: None)
    assert r["judges"] == judges and r["questions"] == 3
    assert list(r["pairs"]) == ["greedy", "seed 0", "seed 1"] and list(r["per_seed"]) == [
        "seed 0", "seed 1"]
    assert r["tokenizers"] == {str(rm_a): "same as the child's", str(rm_b): "same as the child's"}
    for setting in [r["greedy"], *r["per_seed"].values()]:
        for s in setting["judges"].values():
            assert s["wins"] + s["losses"] + s["ties"] == 3
    assert r["headline"]["judge"] == VERIFIER and "verifier alone" in r["headline"]["about"]
    assert set(r["over_seeds"]) == set(judges)
    # The answers differ, so the reward models are asked; where one decided, the higher won.
    assert any(p["by"][str(rm_a)] == "reward" for ps in r["pairs"].values() for p in ps)
    for pair in r["pairs"]["greedy"] + r["pairs"]["seed 1"]:
        assert pair["outcome"].keys() == set(judges) and len(pair["rewards"]) == 2
        for j in judges[1:]:
            if pair["by"][j] == "reward":
                mine, theirs = pair["rewards"][j]
                assert pair["outcome"][j] == ("win" if mine > theirs else "loss")
            elif pair["by"][j] == "verifier":
                assert pair["outcome"][j] == pair["outcome"][VERIFIER]

    table = judge_spread.format_table(r)
    assert "verifier alone (headline)" in table and f"verifier + {rm_a}" in table
    assert "seed 1" in table and "headline, the verifier alone" in table

    # The report card shows the newest result of each checkpoint.
    run = tmp_path / "run"
    (run / "dpo" / "evals").mkdir(parents=True)
    (run / "dpo" / "llmos.json").write_text(json.dumps({"stage": "dpo"}))
    (run / "dpo" / "evals" / "versus.json").write_text(json.dumps(r, default=str))
    section = report.markdown(run).split("## Win rate by judge")[1].split("\n## ")[0]
    assert "| dpo |" in section and "| verifier alone (headline) |" in section
    assert f"| verifier + {rm_b} |" in section


def test_seeded_answers_do_not_depend_on_their_company(base):
    """A seeded sample is the same alone and decoded with the other questions; greedy stays the
    default."""
    _, ckpt = base
    model, tok = checkpoint.load_model(ckpt).eval(), tokenizers_.load(ckpt)
    items = heldout()
    seeded = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.95, seed=3)
    together = assistant_tasks.run_items(model, tok, items, sampling=seeded)
    alone = assistant_tasks.run_items(model, tok, items, sampling=seeded, concurrent=1)
    assert [r["transcript"] for r in together] == [r["transcript"] for r in alone]
    greedy = assistant_tasks.run_items(model, tok, items, max_new_tokens=12, concurrent=1)
    again = assistant_tasks.run_items(model, tok, items, max_new_tokens=12)
    assert [r["transcript"] for r in greedy] == [r["transcript"] for r in again]
