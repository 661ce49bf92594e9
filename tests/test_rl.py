"""Online RL: advantages, the clipped objective, the KL estimator, learning a trivial task, the
command end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import pretrained_tiny

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.cli import main
from llmos.train import rl

# ---- the pieces, by hand ------------------------------------------------------------------------


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 3.0])
    a = rl.group_advantages(r, 4, eps=1e-8)
    # group 1: mean 0.5, population std 0.5; group 2: all equal -> no signal; group 3: mean
    # 0.75, std sqrt((3 * 0.75^2 + 2.25^2) / 4) = 1.299
    std3 = math.sqrt((3 * 0.75**2 + 2.25**2) / 4)
    expected = [1, -1, -1, 1, 0, 0, 0, 0, -0.75 / std3, -0.75 / std3, -0.75 / std3, 2.25 / std3]
    assert torch.allclose(a, torch.tensor(expected), atol=1e-5)
    assert torch.equal(rl.group_advantages(torch.ones(8), 4), torch.zeros(8))
    # A reward model's equal scores can differ in the last bit: still no signal.
    noisy = torch.tensor([-2.7912, -2.7912 + 2e-7, -2.7912, -2.7912 - 2e-7])
    assert torch.equal(rl.group_advantages(noisy, 4), torch.zeros(4))


@pytest.mark.parametrize("adv,ratio,clipped", [
    (1.0, 1.1, False),  # inside the trust region: plain policy gradient
    (1.0, 1.5, True),  # already more likely than the clip allows: no push further
    (-1.0, 1.5, False),  # a bad answer made more likely: always corrected
    (-1.0, 0.5, True),  # a bad answer already much less likely: no push further
    (1.0, 0.5, False),  # a good answer made less likely: always corrected
])
def test_clipped_objective_gradient_by_hand(adv, ratio, clipped):
    old = torch.tensor([[math.log(0.2)]])
    logp = (old + math.log(ratio)).clone().requires_grad_(True)
    loss, stats = rl.clipped_loss(logp, old, logp.detach(), torch.tensor([adv]),
                                  torch.ones(1, 1), clip_eps=0.2, kl_coef=0.0)
    loss.backward()
    # d/dlogp of -ratio * A is -ratio * A; the clipped branch is constant.
    expected = 0.0 if clipped else -ratio * adv
    assert logp.grad.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(-min(ratio * adv, min(max(ratio, 0.8), 1.2) * adv))
    assert stats["clip_frac"] == float(clipped)


def test_ratio_one_is_reinforce_with_a_baseline():
    logp = torch.log(torch.tensor([[0.3, 0.6], [0.5, 0.1]])).requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, _ = rl.clipped_loss(logp, logp.detach(), logp.detach(), adv, mask, 0.2, 0.0)
    loss.backward()
    assert torch.allclose(logp.grad, -adv[:, None] * mask / 3)


def test_kl_estimator_is_zero_at_the_reference_and_unbiased():
    lp = torch.log_softmax(torch.randn(5, 7), -1)
    assert torch.equal(rl.kl_k3(lp, lp), torch.zeros(5, 7))
    # Sampled from p, the k3 estimates average to KL(p || q), and each one is >= 0.
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), -1)
    q = torch.softmax(torch.randn(6, generator=g), -1)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k3 = rl.kl_k3(p.log()[x], q.log()[x])
    assert bool((k3 >= 0).all())
    assert k3.mean().item() == pytest.approx(float((p * (p / q).log()).sum()), rel=0.03)


# ---- a tiny model learns "always answer 7" ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, corpus_dir):
    return pretrained_tiny(tmp_path_factory, corpus_dir, "rlbase", max_steps=2)


def seven_prompts(tmp_path, n=16):
    path = tmp_path / "seven.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say a number, {chr(97 + i % 26)}.",
                                        "answer": "7"}) + "\n" for i in range(n)))
    return path


def tiny_rl(cfg, prompts, steps):
    cfg.rl.prompts = [str(prompts)]
    cfg.rl.val_fraction = 0.0
    cfg.rl.group_size, cfg.rl.prompts_per_step = 16, 4
    cfg.rl.max_new_tokens, cfg.rl.eval_items = 3, 0
    cfg.rl.replay_rows = 0  # the preset replays 256-token SFT rows: the tiny model holds 64
    cfg.rl.kl_coef = 0.0  # the tests that want the KL term set it
    for k, v in dict(max_steps=steps, lr=2e-2, dtype="fp32", eval_every=0).items():
        setattr(cfg.rl.train, k, v)
    return cfg


@pytest.mark.slow
def test_reward_rises_on_a_trivial_verifier_task(tiny, tmp_path):
    cfg, ckpt = tiny
    cfg = tiny_rl(cfg, seven_prompts(tmp_path), steps=12)
    out = rl.run(cfg, ckpt, tmp_path / "rl")
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if r["stage"] == "rl" and "reward" in r]
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    info = checkpoint.read_info(out)
    assert info["stage"] == "rl" and info["parent"] == str(ckpt) and info["final"]
    assert (cfg.run_dir / "rl.png").exists()
    tok = tokenizers_.load(out)
    assert tok.token_to_id("<|im_end|>") is not None


def test_kl_penalty_and_several_updates_per_batch_run(tiny, tmp_path):
    cfg, ckpt = tiny
    cfg = tiny_rl(cfg, seven_prompts(tmp_path), steps=6)
    # 256 answers a batch: about 1.5% of the tiny model's answers say 7, so a batch with signal
    # comes at once on any device (with 64, a GPU's sampler once drew two batches without one)
    cfg.rl.prompts_per_step = 16
    cfg.rl.kl_coef, cfg.rl.updates_per_batch = 0.1, 2
    rl.run(cfg, ckpt, tmp_path / "rl-kl")
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["stage"] == "rl" and "loss" in r]
    assert len(steps) == 6 and all(math.isfinite(r["loss"]) for r in steps)
    # Even steps update on the batch sampled for the step before: no new sampling statistics.
    assert ["reward" in r for r in steps] == [True, False] * 3
    sampled = steps[::2]
    assert sampled[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # starts at the reference
    # once a batch had signal the model moves away from the reference
    first = next(i for i, r in enumerate(sampled) if r["mixed_groups"] > 0)
    assert first < 2 and all(r["kl_ref"] > 0 for r in sampled[first + 1:])


def test_cli_rl_end_to_end(tiny, tmp_path, capsys):
    cfg, ckpt = tiny
    prompts = seven_prompts(tmp_path, n=30)
    main(["rl", "--model", str(ckpt), "--prompts", str(prompts), "--runs-dir", str(tmp_path),
          "--name", "cli", "--out", str(tmp_path / "cli-rl"),
          "--set", "rl.train.max_steps=3", "--set", "rl.group_size=4",
          "--set", "rl.prompts_per_step=2", "--set", "rl.max_new_tokens=4",
          "--set", "rl.train.eval_every=2", "--set", "rl.eval_items=4",
          "--set", "rl.val_fraction=0.3", "--set", "rl.train.dtype=fp32",
          "--set", "rl.replay_rows=0"])
    out = capsys.readouterr().out
    assert "rl step     3/3" in out and "reward" in out and "rl: done at step 3" in out
    records = [json.loads(x) for x in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in records if "heldout_acc" in r]
    assert [r["step"] for r in held] == [0, 2, 3]  # the start, every 2 steps, the end
    assert checkpoint.read_info(tmp_path / "cli-rl")["stage"] == "rl"
    with pytest.raises(SystemExit):  # never overwritten by accident
        main(["rl", "--model", str(ckpt), "--prompts", str(prompts), "--runs-dir",
              str(tmp_path), "--name", "cli", "--out", str(tmp_path / "cli-rl")])
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_replay_trains_on_the_sft_mixture_beside_the_policy(tiny, tmp_path):
    # No answer of the tiny model contains "xylophone": every reward is 0, the policy term has
    # no gradient, and only the replayed SFT rows (with a row of pretraining text) move it.
    from llmos.data.conversations import split_sources
    from llmos.train import sft

    cfg, ckpt = tiny
    never = tmp_path / "never.jsonl"
    never.write_text("".join(json.dumps({"prompt": f"Name an instrument, {i}.",
                                         "answer": "xylophone"}) + "\n" for i in range(8)))
    cfg = tiny_rl(cfg, never, steps=4)
    greeting = tmp_path / "greeting.jsonl"
    greeting.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Greet me."},
        {"role": "assistant", "content": "Hello there, friend."}]}) + "\n")
    cfg.sft.sources, cfg.sft.val_fraction = [str(greeting)], 0.0
    cfg.sft.text_rows, cfg.sft.text_coef = 1, 0.1
    cfg.rl.replay_rows = 2
    with pytest.raises(ValueError, match="beyond the model's context 64"):
        rl.run(cfg, ckpt, tmp_path / "rl-too-long")  # the preset's 256-token rows
    cfg.sft.train.seq_len = 64

    def answer_loss(model_dir) -> float:
        tok = tokenizers_.load(model_dir)
        convs, _, _ = split_sources([str(greeting)], 0.0)
        p = sft.pack(tok, convs, 64, 0)
        with torch.no_grad():
            return float(sft.packed_loss(checkpoint.load_model(model_dir).eval(),
                                         (p.x, p.y, p.pos, p.seg)))

    out = rl.run(cfg, ckpt, tmp_path / "rl-replay")
    assert answer_loss(out) < answer_loss(ckpt) - 0.5
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["mixed_groups"] == 0 for r in records if "mixed_groups" in r)
    data = checkpoint.load_trainer_state(out)["data"]  # resumes at the same replay rows
    assert "text" in data["replay"] and "epoch" in data["replay"]
    assert checkpoint.read_info(out)["data"]["replay_rows"] == 2


def test_prompts_that_leave_no_room_for_the_answer_are_left_out(tiny, tmp_path, capsys):
    cfg, ckpt = tiny
    mixed = tmp_path / "mixed.jsonl"
    long = "Count the words of this sentence, which goes on and on and on. " * 4
    rows = [{"prompt": long + str(i), "answer": "7"} for i in range(6)]
    rows += [{"prompt": f"Say a number, {chr(97 + i)}.", "answer": "7"} for i in range(6)]
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_rl(cfg, mixed, steps=2)
    cfg.rl.group_size, cfg.rl.prompts_per_step = 2, 12  # every prompt sampled in a step
    rl.run(cfg, ckpt, tmp_path / "rl-fit")
    assert "6 of 12 prompts left out" in capsys.readouterr().out
    cfg.rl.max_new_tokens = 64  # the tiny model's whole context
    with pytest.raises(ValueError, match="no RL prompt leaves room"):
        rl.run(cfg, ckpt, tmp_path / "rl-nothing-fits")
