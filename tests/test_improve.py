"""`llmos improve`: what a round keeps (verified answers, rationalized ones asked without their
hint, format breaks counted) over a scripted model, and a real run of rounds on a tiny
checkpoint that picks up at the next round when run again."""

from __future__ import annotations

import json

import pytest
from conftest import random_checkpoint

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.config import load_config
from llmos.envs.prompts import Prompt
from llmos.infer.sampling import Completion
from llmos.train import improve


class Scripted:
    """Answers each prompt with the given texts in turn; a hinted prompt gets `with_hint`."""

    def __init__(self, tok, plain: list[str], with_hint: list[str]):
        self.tok, self.plain, self.with_hint = tok, plain, with_hint

    def complete(self, prompts, params, stops=(), keep_stop=False):
        text = self.tok.decode(list(prompts[0]), skip_special_tokens=False)
        answers = self.with_hint if "Hint: the answer is" in text else self.plain
        return [Completion(a, [1] * 5, "length" if a.endswith("...") else "stop")
                for a in answers[:len(prompts)]]


@pytest.fixture(scope="module")
def tok():
    return tk.train_bpe(["What is 48 + 37? 8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 85.\n" * 50],
                        300)


QUESTION = Prompt([{"role": "user", "content": "What is 48 + 37? No calculator."}], "85")
RIGHT = "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 85."


def test_a_round_keeps_verified_answers_and_counts_format_breaks(tok):
    opts = improve.ImproveOptions(samples=4, keep=2)
    lm = Scripted(tok, [RIGHT, RIGHT, "8 + 7 = 15, so 48 + 37 = 86.", "so 48 + 37 = ..."], [])
    kept, counts = improve.collect(lm, [QUESTION], opts)
    assert counts == {"problems": 1, "solved": 1, "rationalized": 0, "format_rejected": 1,
                      "kept": 1}  # the same right text twice is kept once; the cut one broke
    assert kept[0]["messages"][-1] == {"role": "assistant", "content": RIGHT}


def test_an_unsolved_problem_is_rationalized_without_its_hint(tok):
    opts = improve.ImproveOptions(samples=2)
    lm = Scripted(tok, ["so 48 + 37 = 86.", '<tool_call>\n{"name": "calculator"}'], [RIGHT])
    kept, counts = improve.collect(lm, [QUESTION], opts)
    assert counts["rationalized"] == 1 and counts["solved"] == 0
    assert counts["format_rejected"] == 1  # the tool call
    assert "Hint" not in json.dumps(kept)  # trained on the question as it will be asked
    assert kept[0]["messages"][0]["content"] == QUESTION.messages[0]["content"]


class ByQuestion:
    """Answers each prompt in a batch by its own question: `plain[q]` or, hinted, `hinted[q]`
    (a question missing there answers with a tool call)."""

    def __init__(self, tok, plain: dict, hinted: dict):
        self.tok, self.plain, self.hinted = tok, plain, hinted

    def complete(self, prompts, params, stops=(), keep_stop=False):
        out = []
        for ids in prompts:
            text = self.tok.decode(list(ids), skip_special_tokens=False)
            table = self.hinted if "Hint: the answer is" in text else self.plain
            answer = next((a for q, a in table.items() if q in text), '<tool_call>\n{}')
            out.append(Completion(answer, [1] * 5, "stop"))
        return out


def test_a_batch_of_problems_keeps_each_answer_with_its_own_question(tok):
    def ask(a, b):
        return Prompt([{"role": "user", "content": f"What is {a} + {b}? No calculator."}],
                      str(a + b))

    first, second, third = ask(48, 37), ask(26, 15), ask(19, 19)
    right = {"48 + 37": RIGHT, "26 + 15": "6 + 5 = 11, carry 1: 2 + 1 + 1 = 4, so 26 + 15 = 41."}
    lm = ByQuestion(tok, plain={"48 + 37": RIGHT}, hinted={"26 + 15": right["26 + 15"]})
    kept, counts = improve.collect(lm, [first, second, third], improve.ImproveOptions(samples=3))
    assert counts["solved"] == 1 and counts["rationalized"] == 1 and counts["kept"] == 2
    assert counts["format_rejected"] == 3 * 2 + 3  # tool calls: 2 problems, then the third again
    for conv in kept:
        asked = conv["messages"][0]["content"]
        assert conv["messages"][-1]["content"] == right[asked.split("is ")[1].split("?")[0]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = ["Without a calculator, what is 92 + 78? 2 + 8 = 10, carry 1: 9 + 7 + 1 = 17, so "
             "92 + 78 = 170.\n" * 30]
    return random_checkpoint(tmp_path_factory.mktemp("improve"), texts, 400, 256)


def test_rounds_write_checkpoints_and_rows_and_pick_up_where_they_stopped(tiny, tmp_path,
                                                                        monkeypatch):
    # A random model solves nothing: its samples are replaced by the worked answers (what a
    # round keeps is tested above); the finetuning, evaluation, files and resuming are real.
    from llmos.data.builtin.arithmetic import mental_working

    def solved(lm, problems, opts):
        kept = [{"messages": p.messages + [{"role": "assistant", "content": mental_working(
            *worked(p))}]} for p in problems]
        return kept, {"problems": len(problems), "solved": len(problems), "rationalized": 0,
                      "format_rejected": 0, "kept": len(kept)}

    monkeypatch.setattr(improve, "collect", solved)
    cfg = load_config("cpu-tiny", ["sft.train.batch_size=2", "sft.train.compile=false",
                                   "sft.train.eval_tokens=256"])
    cfg.runs_dir = str(tmp_path / "preset-runs")  # where the preset's run would be
    opts = improve.ImproveOptions(rounds=1, samples=2, problems=3, steps=2, heldout=3,
                                  greedy_heldout=5, assistant_items=8)
    out = tmp_path / "improve"
    rows = improve.run(cfg, tiny, out, opts, log=lambda m: None)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["problems"] == 3 and rows[1]["checkpoint"] == str(out / "round-1")
    for key in ("env_greedy", "env_pass@1", "env_pass@2", "env_n", "tasks"):
        assert key in rows[1]
    assert rows[1]["env_n"] == 5 and rows[1]["env_pass_n"] == 3
    assert 0 <= rows[1]["env_greedy_ci"][0] <= rows[1]["env_greedy"]
    # the environment's change from round 0, paired on the same 5 problems
    before, after = (json.loads((out / f"round-{r}-env.json").read_text()) for r in (0, 1))
    assert [g["question"] for g in before] == [g["question"] for g in after]
    assert rows[1]["env_change_n"] == 5 and "env_change" not in rows[0]
    assert rows[1]["env_change"] == pytest.approx(
        sum(a["right"] - b["right"] for a, b in zip(after, before)) / 5)
    lo, hi = rows[1]["env_change_ci"]
    assert lo <= rows[1]["env_change"] <= hi
    assert checkpoint.read_info(out / "round-1")["final"]
    # the rounds' finetuning logs into OUT, never into the preset's run directory
    assert [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()][
        -1] == "sft"
    assert not cfg.run_dir.exists()
    # every task's change from round 0, on the same questions (answers kept per round)
    assert (out / "round-0-assistant.json").exists() and (out / "round-1-assistant.json").exists()
    assert rows[1]["changes"] and all(c["n"] >= 1 for c in rows[1]["changes"].values())
    trained = (out / "round-1.jsonl").read_text().splitlines()
    assert len(trained) == rows[1]["kept"] + max(0, int(rows[1]["kept"] * opts.replay))
    # Stopped after round 1 (as a Ctrl-C between rounds leaves it): asked for 2 rounds, it
    # keeps round 1 and trains only round 2.
    said = []
    two = improve.ImproveOptions(**{**opts.__dict__, "rounds": 2})
    rows = improve.run(cfg, tiny, out, two, log=said.append)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert any("round 1 is done" in m for m in said)
    assert [json.loads(x)["round"] for x in (out / "rounds.jsonl").read_text().splitlines()] == [
        0, 1, 2]
    # Stopped while round 2 was being evaluated: its checkpoint is final but its row missing.
    # Run again, it evaluates round 2 without training it again.
    lines = (out / "rounds.jsonl").read_text().splitlines()
    (out / "rounds.jsonl").write_text("\n".join(lines[:2]) + "\n")
    trained = (out / "round-2" / "model.safetensors").stat().st_mtime_ns
    rows = improve.run(cfg, tiny, out, two, log=lambda m: None)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert (out / "round-2" / "model.safetensors").stat().st_mtime_ns == trained


def worked(p: Prompt) -> tuple[int, str, int]:
    """(a, op, b) of a builtin:arithmetic question."""
    import re

    a, op, b = re.search(r"(\d+) ?([-+]|plus|minus) ?(\d+)", p.messages[-1]["content"]).groups()
    return int(a), {"plus": "+", "minus": "-"}.get(op, op), int(b)


def test_bad_options_are_refused():
    cfg = load_config("cpu-tiny")
    with pytest.raises(ValueError, match="unknown environment 'chess'"):
        improve.run(cfg, "x", "y", improve.ImproveOptions(env="chess"))
    with pytest.raises(ValueError, match=">= 1"):
        improve.run(cfg, "x", "y", improve.ImproveOptions(rounds=0))
    with pytest.raises(ValueError, match="--epochs must be >= 0"):
        improve.run(cfg, "x", "y", improve.ImproveOptions(epochs=-1))


def test_every_round_mixes_in_the_starting_models_pretraining_text(tmp_path_factory,
                                                                  corpus_dir):
    from conftest import pretrained_tiny

    cfg, base = pretrained_tiny(tmp_path_factory, corpus_dir, "improve-text", max_steps=1)
    cfg.sft.text_rows = 2
    assert improve.pretraining_text(cfg, base) == str(base.parent / "data")
    assert (base.parent / "data" / "manifest.json").exists()
    cfg.sft.text_rows = 0  # not asked for
    assert improve.pretraining_text(cfg, base) == ""
    cfg.sft.text_rows = 2  # a model with no shards beside it: nothing named (a round says so)
    alone = random_checkpoint(tmp_path_factory.mktemp("alone"), ["a b c " * 50], 300, 64)
    assert improve.pretraining_text(cfg, alone) == ""


def test_demonstrations_start_a_model_that_solves_nothing(tiny, tmp_path, monkeypatch):
    # cpu-tiny calls the calculator for every countdown puzzle: no sample is kept, and without
    # demonstrations the rounds would stop at once.
    monkeypatch.setattr(improve, "collect", lambda lm, problems, opts: (
        [], {"problems": len(problems), "solved": 0, "rationalized": 0, "format_rejected": 0,
             "kept": 0}))
    cfg = load_config("cpu-tiny", ["sft.train.batch_size=2", "sft.train.compile=false",
                                   "sft.train.eval_tokens=256", "sft.text_rows=0"])
    cfg.runs_dir = str(tmp_path / "preset-runs")
    opts = improve.ImproveOptions(env="countdown", rounds=1, samples=2, problems=3, steps=1,
                                  heldout=2, assistant_items=4, replay=1.0)
    said = []
    rows = improve.run(cfg, tiny, tmp_path / "none", opts, log=said.append)
    assert [r["round"] for r in rows] == [0] and "--demos N" in said[-1]
    demos = improve.ImproveOptions(**{**opts.__dict__, "demos": 3})
    rows = improve.run(cfg, tiny, tmp_path / "demos", demos, log=lambda m: None)
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["demonstrations"] == 3
    lines = [json.loads(x) for x in (tmp_path / "demos" / "round-1.jsonl").read_text().splitlines()]
    shown = [x for x in lines if x.get("task") == "demonstration"]
    assert len(shown) == 3 and len(lines) == 6  # and as many replayed conversations
    assert all(x["messages"][-1]["content"].count(" = ") == 2 for x in shown)  # 3 numbers: 2 steps


def test_steps_follow_the_rounds_data_when_epochs_are_asked(tiny, tmp_path):
    cfg = load_config("cpu-tiny", ["sft.train.batch_size=2"])

    def data(n: int):
        path = tmp_path / f"{n}.jsonl"
        path.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"What is {i % 90 + 10} + 7?"},
            {"role": "assistant", "content": f"{i % 90 + 10} + 7 = {i % 90 + 17}."}]}) + "\n"
            for i in range(n)))
        return path

    def steps(n: int, epochs: float) -> int:
        opts = improve.ImproveOptions(steps=7, epochs=epochs)
        return improve.round_steps(cfg, tiny, data(n), opts)

    assert steps(200, 0) == 7  # off: --steps as given
    one, three, four_times_data = steps(200, 1), steps(200, 3), steps(800, 1)
    assert one >= 2 and 3 * one - 2 <= three <= 3 * one
    assert 3 * one <= four_times_data <= 4 * one + 1
