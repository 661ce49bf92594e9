"""DPO: the answer-only mask, the loss variants, log 2 at the start, a growing margin, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import pretrained_tiny, write_jsonl

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.cli import main
from llmos.data.records import Comparison
from llmos.evals import versus
from llmos.train import dpo


def toy_pairs(n: int) -> list[dict]:
    return [{"prompt": f"What does alpha_{i} return?",
             "chosen": f"It returns the beta of gamma after {i} steps.",
             "rejected": f"It returns the delta of {i} windows."} for i in range(n)]



@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir):
    return pretrained_tiny(tmp_path_factory, corpus_dir, "dpobase")


def small_dpo_config(cfg, data, **train):
    cfg.dpo.sources = [str(data)]
    cfg.dpo.val_fraction = 0.25
    settings = dict(max_steps=20, batch_size=4, seq_len=64, warmup_steps=2, lr=3e-3,
                    log_every=1, dtype="fp32", eval_every=10) | train
    for k, v in settings.items():
        setattr(cfg.dpo.train, k, v)
    return cfg


def test_only_the_answer_tokens_are_trained(base):
    _, ckpt = base
    tok = tokenizers_.load(ckpt)
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there."},
              {"role": "user", "content": "and then?"}]
    ids, mask = dpo.answer_tokens(tok, prompt, [{"role": "assistant", "content": "Then more."}],
                                  64)
    trained = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert trained.startswith("Then more.") and "Hello" not in trained
    x, y = dpo.collate([(ids, mask)], tokenizers_.pad_id(tok))
    assert x.shape == y.shape and int((y != -100).sum()) == sum(mask[1:])


def test_loss_variants():
    policy = torch.tensor([[-1.0, -3.0]])
    ref = torch.tensor([[-2.0, -2.0]])  # h = (1) - (-1) = 2
    beta = 0.5
    loss, stats = dpo.dpo_loss(policy, ref, beta, "sigmoid")
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert stats["reward_chosen"] == pytest.approx(0.5) and stats["margin"] == pytest.approx(1)
    assert stats["accuracy"] == 1
    assert float(dpo.dpo_loss(policy, ref, beta, "ipo")[0]) == pytest.approx((2 - 1) ** 2)
    assert float(dpo.dpo_loss(policy, ref, beta, "hinge")[0]) == pytest.approx(0.0)
    robust = float(dpo.dpo_loss(policy, ref, beta, "robust", 0.1)[0])
    expected = 0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1))
    assert robust == pytest.approx(expected)
    with pytest.raises(ValueError, match="dpo.loss"):
        dpo.dpo_loss(policy, ref, beta, "nope")


def test_loss_is_log_2_when_the_policy_is_the_reference(base):
    _, ckpt = base
    tok = tokenizers_.load(ckpt)
    model = checkpoint.load_model(ckpt)
    pairs = [Comparison([{"role": "user", "content": r["prompt"]}],
                        [{"role": "assistant", "content": r["chosen"]}],
                        [{"role": "assistant", "content": r["rejected"]}], "t")
             for r in toy_pairs(6)]
    ref = dpo.reference_logps(model, tok, pairs, 64, "cpu", batch_size=4)
    x, y = dpo.pair_batch(tok, pairs, 64, "cpu")  # other batching
    with torch.no_grad():
        lp = dpo.sequence_logps(model.train(), x, y)
    loss, stats = dpo.dpo_loss(torch.stack(lp.chunk(2), dim=1), ref, 0.1)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-5)
    assert abs(stats["margin"]) < 1e-4


def test_dpo_run_widens_the_margin(base, tmp_path):
    cfg, ckpt = base
    data = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(40))
    small_dpo_config(cfg, data)
    cfg.name = "dpo"
    out = dpo.run(cfg, ckpt, tmp_path / "dpo")
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["stage"] == "dpo" and "loss" in r]
    evals = [r for r in records if r["stage"] == "dpo" and "val_margin" in r]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert {"reward_chosen", "reward_rejected", "margin", "accuracy"} <= set(train[0])
    assert train[-1]["margin"] > 1.0 and evals[-1]["val_margin"] > evals[0]["val_margin"] > 0
    assert evals[-1]["val_accuracy"] == 1.0
    info = checkpoint.read_info(out)
    assert info["stage"] == "dpo" and info["parent"] == str(ckpt) and info["final"]
    checkpoint.load_model(out)  # an ordinary causal LM checkpoint


def test_versus_decides_by_verifier_then_reward():
    right = {"task": "arithmetic", "score": 1.0, "transcript": [{"content": "4"}]}
    wrong = {"task": "arithmetic", "score": 0.0, "transcript": [{"content": "5"}]}
    other = {"task": "arithmetic", "score": 0.0, "transcript": [{"content": "6"}]}
    assert versus.decide(right, wrong) == ("win", "verifier")
    assert versus.decide(wrong, right, (9.0, 0.0)) == ("loss", "verifier")
    assert versus.decide(wrong, other) == ("tie", "undecided")
    assert versus.decide(wrong, other, (1.0, 2.0)) == ("loss", "reward")
    assert versus.decide(wrong, dict(wrong)) == ("tie", "same")
    # rewards that differ only by the float rounding of batched scoring do not decide
    assert versus.decide(wrong, other, (3.4745349, 3.4745352)) == ("tie", "undecided")


def test_versus_summary_splits_reward_calls_by_both_right_or_both_wrong(capsys):
    def pair(outcome, by, child_correct):
        return {"outcome": outcome, "by": by, "child_correct": child_correct,
                "parent_correct": child_correct if by == "reward" else not child_correct}

    pairs = [pair("win", "verifier", True), pair("loss", "verifier", False),
             pair("win", "reward", False), pair("win", "reward", False),
             pair("loss", "reward", False), pair("loss", "reward", True),
             {"outcome": "tie", "by": "same", "child_correct": True, "parent_correct": True}]
    s = versus._summary(pairs, {}, {})
    assert (s["wins"], s["losses"], s["ties"], s["decided"]) == (3, 3, 1, 6)
    assert s["decided_by"]["verifier"] == {"wins": 1, "losses": 1}
    assert s["decided_by"]["reward"] == {"wins": 2, "losses": 2,
                                         "both_wrong": {"wins": 2, "losses": 1}}
    versus._print(s)
    assert ("verifier 1-1, reward model 2-2, of which 2-1 between two wrong answers"
            in capsys.readouterr().out)


def test_cli_dpo_end_to_end(base, tmp_path, capsys):
    _, ckpt = base
    data = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(16))
    main(["dpo", "--model", str(ckpt), "--data", str(data), "--runs-dir", str(tmp_path),
          "--name", "cli", "--beta", "0.2", "--loss", "ipo", "--set", "dpo.train.max_steps=3",
          "--set", "dpo.train.batch_size=4", "--set", "dpo.train.dtype=fp32", "--set",
          "dpo.val_fraction=0.25"])
    out = capsys.readouterr().out
    assert "loss ipo, beta 0.2" in out and "held-out pairs: accuracy" in out
    info = checkpoint.read_info(tmp_path / "cli" / "dpo")
    assert info["config"]["dpo"]["loss"] == "ipo" and info["config"]["dpo"]["beta"] == 0.2


def test_rpo_term_is_the_chosen_answers_mean_token_nll():
    logps = torch.tensor([-4.0, -6.0, -1.0, -1.0])  # two chosen rows, then two rejected
    y = torch.full((4, 5), -100)
    y[0, :2] = 1  # 2 answer tokens
    y[1, :3] = 1  # 3 answer tokens
    assert float(dpo.chosen_nll(logps, y)) == pytest.approx((4 / 2 + 6 / 3) / 2)


def test_versus_judges_each_answer_after_its_own_prompt(base, tmp_path):
    """compare_to_parent with a reward model as judge: every answer is scored after the prompt
    it answered, also where two held-out items share a subject (one identity question asked
    with and without a system prompt)."""
    from llmos import reward_model
    from llmos.data.records import Conversation

    _, ckpt = base
    torch.manual_seed(0)
    rm = reward_model.RewardModel(checkpoint.load_model(ckpt))
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    reward_model.save_reward_model(tmp_path / "rm", rm.eval(), ckpt, {})
    child = checkpoint.load_model(ckpt)
    with torch.no_grad():
        child.lm_head.weight.mul_(1.5)  # answers differ from the parent's, so the judge is asked
    checkpoint.save(tmp_path / "child", child, ckpt, {"stage": "dpo"})
    user = {"role": "user", "content": "Who are you?"}
    gold = {"role": "assistant", "content": "I'm llmos."}
    heldout = [Conversation([user, gold], "t", "identity", "Who are you?", "llmos"),
               Conversation([{"role": "system", "content": "Answer in one word."}, user, gold],
                            "t", "identity", "Who are you?", "llmos")]
    versus.compare_to_parent(tmp_path / "child", ckpt, limit=10, judge=tmp_path / "rm",
                             heldout=heldout)
    pairs = json.loads((tmp_path / "child" / "compare_parent.json").read_text())["pairs"]
    items = json.loads((tmp_path / "child" / "eval_assistant.json").read_text())["items"]
    assert len(pairs) == len(items) == 2
    model, tok = reward_model.load_reward_model(tmp_path / "rm")
    for conv, item, pair in zip(heldout, items, pairs):
        expected = reward_model.score(model, tok, [conv.messages[:-1] + item["transcript"]])[0]
        assert pair["rewards"][0] == pytest.approx(expected, abs=1e-5)
