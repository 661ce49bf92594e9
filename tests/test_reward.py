"""Reward model: Bradley-Terry training on the one loop, scoring, Hugging Face parity, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import pretrained_tiny, write_jsonl

from llmos import checkpoint, reward_model
from llmos import tokenizer as tokenizers_
from llmos.cli import main
from llmos.train import reward


def toy_pairs(n: int, offset: int = 0) -> list[dict]:
    """Separable: the chosen answer is helpful, the rejected one evasive."""
    return [{"prompt": f"What does alpha_{i} return?",
             "chosen": f"It returns the beta of gamma after {i} steps.",
             "rejected": "I don't know."} for i in range(offset, offset + n)]



@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir):
    return pretrained_tiny(tmp_path_factory, corpus_dir, "rmbase")


def small_reward_config(cfg, data, **train):
    cfg.reward.sources = [str(data)]
    cfg.reward.val_fraction = 0.25
    cfg.reward.eval_pairs = 0
    # plain Bradley-Terry unless a test asks
    cfg.reward.select_from, cfg.reward.lm_coef, cfg.reward.prefix_coef = 1, 0.0, 0.0
    settings = dict(max_steps=30, batch_size=8, seq_len=64, warmup_steps=2, lr=3e-3,
                    log_every=1, dtype="fp32", eval_every=10) | train
    for k, v in settings.items():
        setattr(cfg.reward.train, k, v)
    return cfg


def test_bt_loss_falls_and_heldout_accuracy_rises(base, tmp_path):
    cfg, ckpt = base
    data = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(60))
    small_reward_config(cfg, data)
    cfg.name = "bt"
    out = reward.run(cfg, ckpt, tmp_path / "reward")
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["stage"] == "reward" and "loss" in r]
    evals = [r for r in records if r["stage"] == "reward" and "val_accuracy" in r]
    assert train[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # a zero head: every reward 0
    assert train[-1]["loss"] < 0.2
    assert evals[-1]["val_accuracy"] == 1.0 and evals[-1]["val_margin"] > evals[0]["val_margin"]
    rep = json.loads((out / "reward_eval.json").read_text())
    assert rep["accuracy"] == 1.0 and set(rep["margin_quantiles"]) == {"p5", "p25", "p50",
                                                                        "p75", "p95"}
    assert (out / "margins.png").stat().st_size > 1000
    info = checkpoint.read_info(out)
    assert info["stage"] == "reward" and info["parent"] == str(ckpt)
    assert info["metrics"]["heldout_accuracy"] == 1.0


def test_training_on_the_worst_ranked_pairs(base, tmp_path, capsys):
    cfg, ckpt = base
    data = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(60))
    small_reward_config(cfg, data, max_steps=20, eval_every=0)
    cfg.name, cfg.reward.select_from, cfg.reward.lm_coef = "select", 3, 0.5
    cfg.reward.prefix_coef = 1.0
    out = reward.run(cfg, ckpt, tmp_path / "reward")
    assert "the worst ranked of 24" in capsys.readouterr().out
    assert json.loads((out / "reward_eval.json").read_text())["accuracy"] == 1.0
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    lm = [r["lm_loss"] for r in records if "lm_loss" in r]
    assert len(lm) == 20 and all(0 < v < 20 for v in lm)
    prefix = [r["prefix_loss"] for r in records if "prefix_loss" in r]
    assert len(prefix) == 20 and prefix[-1] < prefix[0]
    cfg.reward.select_from = 0
    with pytest.raises(ValueError, match="select_from"):
        reward.run(cfg, ckpt, tmp_path / "reward2")
    cfg.reward.select_from, cfg.reward.lm_coef = 1, -1.0
    with pytest.raises(ValueError, match="lm_coef"):
        reward.run(cfg, ckpt, tmp_path / "reward3")
    cfg.reward.lm_coef, cfg.reward.prefix_coef = 0.0, -1.0
    with pytest.raises(ValueError, match="prefix_coef"):
        reward.run(cfg, ckpt, tmp_path / "reward4")


def random_reward_model(ckpt, seed=0):
    torch.manual_seed(seed)
    model = reward_model.RewardModel(checkpoint.load_model(ckpt))
    torch.nn.init.normal_(model.score.weight, std=0.5)
    return model.eval()


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "It returns the beta of gamma after 4 steps."}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
]


def test_scores_do_not_depend_on_batching_and_survive_save_and_load(base, tmp_path):
    _, ckpt = base
    model = random_reward_model(ckpt)
    tok = tokenizers_.load(ckpt)
    together = reward_model.score(model, tok, CONVERSATIONS)
    alone = [reward_model.score(model, tok, [c])[0] for c in CONVERSATIONS]
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(together)) == 3
    reward_model.save_reward_model(tmp_path / "rm", model, ckpt, {"note": "test"})
    loaded, tok2 = reward_model.load_reward_model(tmp_path / "rm")
    assert reward_model.score(loaded, tok2, CONVERSATIONS) == pytest.approx(together, abs=1e-6)


def test_transformers_sequence_classification_gives_the_same_scores(base, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, ckpt = base
    model = random_reward_model(ckpt, seed=1)
    tok = tokenizers_.load(ckpt)
    reward_model.save_reward_model(tmp_path / "rm", model, ckpt, {})
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["pad_token_id"] == tok.token_to_id("<|pad|>") and config["num_labels"] == 1
    hf = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    rows = [reward_model.encode(tok, c, 64) for c in CONVERSATIONS]
    x, _ = reward_model.collate(rows, tokenizers_.pad_id(tok))  # right-padded, as score() pads
    with torch.no_grad():
        theirs = hf(input_ids=x).logits[:, 0].tolist()
    assert theirs == pytest.approx(reward_model.score(model, tok, CONVERSATIONS), abs=1e-4)


def test_rewards_are_fp32_under_bf16_autocast(base):
    _, ckpt = base
    model = random_reward_model(ckpt, seed=2)
    torch.nn.init.normal_(model.score.weight, std=20.0)  # rewards far from 0, as trained ones
    tok = tokenizers_.load(ckpt)
    x, last = reward_model.collate([reward_model.encode(tok, c, 64) for c in CONVERSATIONS],
                                   tokenizers_.pad_id(tok))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        r = model(x, last)
        h = reward_model.hidden_states(model.body, x)[torch.arange(3), last]
    assert r.dtype == torch.float32
    assert torch.equal(r, h.float() @ model.score.weight[0])  # the head itself not rounded
    assert (r.to(torch.bfloat16).float() != r).any()  # what a bf16 head would have lost


def test_keep_worst_ranked_keeps_the_pairs_with_the_lowest_margins(base):
    _, ckpt = base
    model = random_reward_model(ckpt, seed=3)
    tok = tokenizers_.load(ckpt)
    pairs = [reward.Comparison(prompt=c[:-1], chosen=[c[-1]], rejected=[d[-1]], source="t")
             for c in CONVERSATIONS for d in CONVERSATIONS if c is not d]
    m = reward.margins(model, tok, pairs)
    worst = sorted(sorted(range(len(pairs)), key=m.__getitem__)[:2])
    x, last = reward.keep_worst_ranked(model, reward.pair_batch(tok, pairs, 64, "cpu"), 2)
    assert torch.equal(x, reward.pair_batch(tok, [pairs[i] for i in worst], 64, "cpu")[0])
    assert model(x, last).tolist() == pytest.approx(
        reward_model.score(model, tok, [pairs[i].prompt + pairs[i].chosen for i in worst]
                           + [pairs[i].prompt + pairs[i].rejected for i in worst]), abs=1e-5)


def test_the_language_model_loss_is_the_parents_on_the_chosen_answers(base):
    _, ckpt = base
    lm = checkpoint.load_model(ckpt).eval()
    model = random_reward_model(ckpt)
    tok = tokenizers_.load(ckpt)
    pairs = [reward.Comparison(prompt=c[:-1], chosen=[c[-1]], rejected=[{"role": "assistant",
                               "content": "no"}], source="t") for c in CONVERSATIONS]
    x, last, mask = reward.pair_batch(tok, pairs, 64, "cpu", masks=True)
    assert mask.shape == (3, x.shape[1]) and mask.sum() > 0
    with torch.no_grad():
        rewards, nll, every = model.outputs(x, last, mask)
        logits = lm(x[:3])[:, :-1]
    expect = torch.nn.functional.cross_entropy(logits[mask[:, 1:].bool()], x[:3, 1:][
        mask[:, 1:].bool()])
    assert float(nll) == pytest.approx(float(expect), rel=1e-5)
    assert rewards.tolist() == pytest.approx(model(x, last).tolist()) and every is None
    kept = reward.keep_worst_ranked(model, (x, last, mask), 2)
    assert len(kept) == 3 and kept[2].shape == (2, kept[0].shape[1])


def test_the_prefix_loss_compares_the_answers_from_where_they_differ():
    pad = 0
    x = torch.tensor([[5, 6, 7, 8, 9, pad],      # chosen: differs from position 2 on
                      [5, 6, 7, 1, 1, 1],        # chosen, cut to max_len 6: left out
                      [5, 6, 3, 4, pad, pad],    # rejected, a shorter answer
                      [5, 6, 7, 2, 2, 2]])
    last = torch.tensor([4, 5, 3, 5])
    every = torch.randn(4, 6)
    expect = -torch.nn.functional.logsigmoid(every[0, 2:4] - every[2, 2:4]).mean()
    got = reward.prefix_bt_loss(every, x, last, max_len=6)
    assert float(got) == pytest.approx(float(expect))
    every.requires_grad_(True)
    reward.prefix_bt_loss(every, x, last, max_len=6).backward()
    touched = every.grad != 0
    assert touched[0].tolist() == [False, False, True, True, False, False]
    assert not touched[1].any() and not touched[3].any()  # the cut pair adds nothing
    every.grad = None
    reward.prefix_bt_loss(every, x, last, max_len=7).backward()  # uncut, it counts
    assert (every.grad[1] != 0).tolist() == [False, False, False, True, True, True]


def test_outputs_read_the_head_at_every_position(base):
    _, ckpt = base
    model = random_reward_model(ckpt)
    tok = tokenizers_.load(ckpt)
    pairs = [reward.Comparison(prompt=c[:-1], chosen=[c[-1]], rejected=[{"role": "assistant",
                               "content": "no"}], source="t") for c in CONVERSATIONS]
    x, last = reward.pair_batch(tok, pairs, 64, "cpu")
    with torch.no_grad():
        out = model.outputs(x, last, positions=True)
        for i in range(len(x)):  # a causal body: position t's reward is that of the prefix
            t = int(last[i]) - 1
            alone = model(x[i:i + 1, :t + 1], torch.tensor([t]))
            assert float(out.every[i, t]) == pytest.approx(float(alone), abs=1e-5)
    assert out.rewards.tolist() == pytest.approx(model(x, last).tolist(), abs=1e-6)
    assert out.lm is None and out.every.shape == x.shape


def test_a_language_model_is_not_a_reward_model(base):
    _, ckpt = base
    with pytest.raises(ValueError, match="not a reward model"):
        reward_model.load_reward_model(ckpt)


def test_pair_order_buckets_by_length_and_resumes_exactly():
    lengths = [(i * 37) % 200 + 5 for i in range(1000)]
    plain, bucketed = reward.PairOrder(1000, 16, 3), reward.PairOrder(1000, 16, 3, lengths=lengths)

    def padded(order, steps=120):  # row slots a batch pads to, over about two epochs
        return sum(16 * max(lengths[i] for i in order.next()) for _ in range(steps))

    assert padded(bucketed) < 0.8 * padded(plain)
    again = reward.PairOrder(1000, 16, 3, lengths=lengths)
    epoch = [i for _ in range(63) for i in again.next()]  # 63 batches: an epoch of 1000 and 8
    assert sorted(epoch[:1000]) == list(range(1000))  # every pair once an epoch
    resumed = reward.PairOrder(1000, 16, 3, lengths=lengths)
    resumed.load_state_dict(again.state_dict())
    assert [resumed.next() for _ in range(5)] == [again.next() for _ in range(5)]
    with pytest.raises(ValueError, match="lengths"):
        reward.PairOrder(10, 4, 0, lengths=[1, 2])


def test_long_conversations_keep_their_end(base):
    _, ckpt = base
    tok = tokenizers_.load(ckpt)
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    ids = reward_model.encode(tok, long, 64)
    assert len(ids) == 64 and "ok" in tok.decode(ids[-8:], skip_special_tokens=False)


def test_cli_reward_end_to_end(base, tmp_path, capsys):
    cfg, ckpt = base
    data = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(24))
    main(["reward", "--model", str(ckpt), "--data", str(data), "--runs-dir", str(tmp_path),
          "--name", "cli", "--set", "reward.train.max_steps=4", "--set",
          "reward.train.batch_size=4", "--set", "reward.train.dtype=fp32", "--set",
          "reward.val_fraction=0.25"])
    out = capsys.readouterr().out
    assert "held-out pairwise accuracy" in out and "margin p5" in out
    model, tok = reward_model.load_reward_model(tmp_path / "cli" / "reward")
    assert len(reward_model.score(model, tok, CONVERSATIONS)) == 3
    with pytest.raises(SystemExit):  # an existing checkpoint is not replaced silently
        main(["reward", "--model", str(ckpt), "--data", str(data), "--runs-dir",
              str(tmp_path), "--name", "cli"])
    assert "already holds a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["reward", "dpo"])
def test_every_flag_has_help(command, capsys):
    from llmos.cli import build_parser

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    actions = build_parser()._subparsers._group_actions[0].choices[command]._actions
    for action in actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.option_strings[-1] in text
