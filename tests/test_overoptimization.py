"""`llmos experiment overoptimization`: the KL estimate (zero for the same model, the exact value
for a known shift), the table and the figure from hand-made rows, bad input, and a tiny run end
to end with tiny models made here."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import pretrained_tiny, write_jsonl

from llmos import checkpoint, reward_model
from llmos import tokenizer as tokenizers_
from llmos.cli import main
from llmos.data.records import Conversation
from llmos.evals import own_samples
from llmos.experiments import overoptimization as oo


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir):
    """(config, checkpoint) of a tiny model with a 512-token window: held-out prompts fit."""
    return pretrained_tiny(tmp_path_factory, corpus_dir, "oobase", max_seq_len=512)


def _conv(question: str) -> Conversation:
    return Conversation([{"role": "user", "content": question}], "test", task="mental",
                        answer="5")


def sharpened(model, factor: float):
    """A copy whose logits are `factor` times the model's: the final norm's weight scales the
    hidden state the (linear, bias-free) output layer reads."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.norm.weight.mul_(factor)
    return other


def _draw(model, tok, n: int, max_new_tokens: int, prompts=("In your head: 2 + 3 = ?",)):
    return own_samples.sample(model, tok, [_conv(q) for q in prompts], n, seed=3,
                              max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                              tokens=True)


# ---- the distance ------------------------------------------------------------------------------


def test_the_same_model_twice_is_at_distance_zero(base):
    _, ckpt = base
    model, tok = checkpoint.load_model(ckpt).eval(), tokenizers_.load(ckpt)
    drawn = _draw(model, tok, 3, 12, prompts=("In your head: 2 + 3 = ?", "Who are you?"))
    assert all(s["rounds"] and s["rounds"][0]["prompt"] for s in drawn)
    stop = tokenizers_.end_ids(tok)
    mine = oo.sample_logprobs(model, drawn, stop)
    again = oo.sample_logprobs(checkpoint.load_model(ckpt).eval(), drawn, stop)
    assert mine == pytest.approx(again, abs=1e-4) and all(v < 0 for v in mine)
    est = oo.kl_estimate(mine, mine, [s["prompt_id"] for s in drawn])
    assert est == {"kl": 0.0, "kl_ci": [0.0, 0.0], "sqrt_kl": 0.0}


def test_the_change_from_sft_pairs_the_prompts():
    """Prompts of very different rewards, each moved by the same amount: the change is that
    amount, exactly, where the two means' own intervals are wide."""
    origin = [{"prompt_id": i, "r": 10.0 * i + j} for i in range(6) for j in range(2)]
    moved = [{"prompt_id": s["prompt_id"], "r": s["r"] + 0.5} for s in origin]
    assert oo.paired_change(moved, origin, lambda s: s["r"]) == {"change": 0.5,
                                                                 "ci": [0.5, 0.5]}
    lo, hi = oo.mean_ci([s["r"] for s in moved], [s["prompt_id"] for s in moved])["ci"]
    assert hi - lo > 20
    # Values that are None are left out; a prompt only one side has is too.
    half = [dict(s, r=None) if s["prompt_id"] % 2 else s for s in moved] + [
        {"prompt_id": 99, "r": 1e6}]
    c = oo.paired_change(half, origin, lambda s: s["r"])
    assert c["change"] == 0.5 and c["ci"] == [0.5, 0.5]
    assert oo.paired_change(origin, origin, lambda s: None) == {"change": None,
                                                                "ci": [None, None]}


def test_a_constant_shift_is_the_kl():
    ref = [-3.0, -5.5, -2.0, -7.25]
    est = oo.kl_estimate([r + 0.25 for r in ref], ref, [0, 0, 1, 1])
    assert est == {"kl": 0.25, "kl_ci": [0.25, 0.25], "sqrt_kl": 0.5}
    assert oo.kl_estimate(ref, [r + 0.25 for r in ref], [0, 0, 1, 1])["sqrt_kl"] == 0.0


def test_the_sampled_tokens_are_scored_as_the_model_writes_them(base):
    """A uniform policy (the final norm's weight zeroed: every logit 0) gives each generated token
    log(1/V) and the stop log(|stop tokens| / V); temperature T scores as logits / T."""
    _, ckpt = base
    model, tok = checkpoint.load_model(ckpt).eval(), tokenizers_.load(ckpt)
    drawn = _draw(model, tok, 4, 10)
    rounds = [r for s in drawn for r in s["rounds"]]
    assert any(r["ids"] for r in rounds)
    stop = tokenizers_.end_ids(tok)
    V = model.cfg.vocab_size
    uniform = oo.generation_logprobs(sharpened(model, 0.0), rounds, stop)
    for r, lp in zip(rounds, uniform):
        expected = -len(r["ids"]) * math.log(V) + (math.log(len(stop) / V) if r["stopped"]
                                                    else 0.0)
        assert lp == pytest.approx(expected, abs=1e-4)
    assert (oo.generation_logprobs(model, rounds, stop, temperature=0.5)
            == pytest.approx(oo.generation_logprobs(sharpened(model, 2.0), rounds, stop),
                             abs=1e-3))


def test_a_known_shift_gives_the_exact_kl(base):
    """One-token answers from a sharpened policy: the sample estimate meets KL(policy || model)
    computed over the whole vocabulary (the stop tokens one outcome, as the engine hides which
    one stopped), within four standard errors."""
    _, ckpt = base
    model, tok = checkpoint.load_model(ckpt).eval(), tokenizers_.load(ckpt)
    policy = sharpened(model, 3.0)
    drawn = _draw(policy, tok, 400, 1)
    assert all(len(s["rounds"]) == 1 for s in drawn)
    stop = tokenizers_.end_ids(tok)
    terms = [p - q for p, q in zip(oo.sample_logprobs(policy, drawn, stop),
                                   oo.sample_logprobs(model, drawn, stop))]
    estimate = sum(terms) / len(terms)
    se = (sum((t - estimate) ** 2 for t in terms) / (len(terms) - 1) / len(terms)) ** 0.5
    prompt = torch.tensor([drawn[0]["rounds"][0]["prompt"]])
    with torch.no_grad():
        p, q = (torch.softmax(m(prompt)[0, -1].float(), -1) for m in (policy, model))
    keep = torch.ones_like(p, dtype=torch.bool)
    keep[stop] = False
    p_stop, q_stop = p[stop].sum(), q[stop].sum()
    exact = float((p[keep] * (p[keep] / q[keep]).log()).sum() + p_stop * (p_stop / q_stop).log())
    assert exact > 0.05 and se < exact
    assert abs(estimate - exact) < 4 * se


# ---- the table and the figure ------------------------------------------------------------------


def _m(mean: float | None, half: float = 0.1, n: int = 40) -> dict:
    if mean is None:
        return {"mean": None, "ci": [None, None], "n": 0}
    return {"mean": mean, "ci": [mean - half, mean + half], "n": n}


def hand_made_results() -> dict:
    origin = {"proxy": -1.0, "gold1": 0.5, "gold2": 0.2, "verifier": 0.30}

    def row(beta, kl, proxy, gold1, gold2, acc):
        means = {"proxy": proxy, "gold1": gold1, "gold2": gold2, "verifier": acc}
        change = {k: {"change": round(v - origin[k], 4), "ci": [round(v - origin[k] - 0.02, 4),
                                                                round(v - origin[k] + 0.02, 4)]}
                  if v is not None else {"change": None, "ci": [None, None]}
                  for k, v in means.items()}
        return {"beta": beta, "kl": kl, "kl_ci": [kl * 0.8, kl * 1.2],
                "sqrt_kl": round(math.sqrt(kl), 4), "proxy": _m(proxy), "gold1": _m(gold1),
                "gold2": _m(gold2), "verifier": _m(acc, 0.05), "change": change, "n": 40,
                "prompts": 10}

    return {"sft": "runs/x/sft", "proxy": "runs/x/reward", "gold": ["g/a", "g/b"],
            "betas": [1.0, 0.1], "prompts": 10, "samples": 4, "seed": 0, "temperature": 1.0,
            "max_new_tokens": 128, "dpo_steps": 100, "seconds": 1.0,
            "rows": [row("SFT", 0.0, -1.0, 0.5, 0.2, 0.30), row(1.0, 1.5, 0.2, 0.9, 0.5, 0.35),
                     row(0.1, 9.0, 2.0, 0.4, -0.3, None)]}


def test_table_and_figure_from_hand_made_rows(tmp_path):
    results = hand_made_results()
    oo.write(results, tmp_path)
    assert json.loads((tmp_path / "overoptimization.json").read_text()) == results
    assert (tmp_path / "overoptimization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "overoptimization.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("| policy | KL (nats)") and "gold2 reward" in lines[0]
    assert lines[2].startswith("| SFT | 0.000 [0.000, 0.000] | 0.000 | -1.000 (+0.000 "
                               "[-0.020, +0.020]) |")
    assert ("| DPO beta 0.1 | 9.000 [7.200, 10.800] | 3.000 | +2.000 (+3.000 [+2.980, +3.020]) "
            "| +0.400 (-0.100 [-0.120, -0.080]) |") in text
    assert "| 0.350 (+0.050 [+0.030, +0.070]) (n = 40) | 40 |" in lines[3]
    assert lines[4].endswith("| - | 40 |")  # no verifiable answers: no accuracy
    assert "gold1 = g/a; gold2 = g/b" in text and "10 held-out prompts x 4 samples" in text


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "0.1,abc", "0,1", "-0.1", "0.1,0.10", "nan", "SFT"])
def test_bad_betas(text):
    with pytest.raises(ValueError, match="--betas"):
        oo.parse_betas(text)


def test_betas_keep_their_order():
    assert oo.parse_betas("0.3, 0.03,1") == [0.3, 0.03, 1.0]


@pytest.fixture(scope="module")
def reward_models(base, tmp_path_factory):
    """Two reward models with random heads on the tiny model: a proxy and a gold."""
    _, ckpt = base
    root = tmp_path_factory.mktemp("rms")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        rm = reward_model.RewardModel(checkpoint.load_model(ckpt))
        torch.nn.init.normal_(rm.score.weight, std=0.5)
        paths.append(reward_model.save_reward_model(root / f"rm{seed}", rm.eval(), ckpt, {}))
    return paths


def _cli(sft, proxy, gold, out, *extra):
    return ["experiment", "overoptimization", "--sft", str(sft), "--proxy", str(proxy),
            "--gold", str(gold), "--out", str(out), *extra]


@pytest.mark.parametrize("case, message", [
    ("no sft", "--sft .*not a checkpoint folder"),
    ("proxy is a language model", "--proxy .*not a reward model"),
    ("no gold", "--gold .*no config.json"),
    ("gold is the proxy", "is the proxy"),
    ("bad betas", "--betas"),
])
def test_bad_input_is_a_clear_error_before_any_training(base, reward_models, tmp_path, capsys,
                                                       case, message):
    _, ckpt = base
    proxy, gold = reward_models
    args = {"no sft": _cli(tmp_path / "nothing", proxy, gold, tmp_path / "o"),
            "proxy is a language model": _cli(ckpt, ckpt, gold, tmp_path / "o"),
            "no gold": _cli(ckpt, proxy, f"{gold},{tmp_path / 'missing'}", tmp_path / "o"),
            "gold is the proxy": _cli(ckpt, proxy, proxy, tmp_path / "o"),
            "bad betas": _cli(ckpt, proxy, gold, tmp_path / "o", "--betas", "0.1,x")}[case]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o" / "beta-0.1").exists()


# ---- end to end ----------------------------------------------------------------------------------


def test_tiny_run_end_to_end_and_reused(base, reward_models, tmp_path, capsys):
    _, ckpt = base
    proxy, gold = reward_models
    pairs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": f"What does alpha_{i} return?",
         "chosen": f"It returns the beta of gamma after {i} steps.",
         "rejected": f"It returns the delta of {i} windows."} for i in range(24)])
    out = tmp_path / "oo"
    args = _cli(ckpt, proxy, gold, out, "--betas", "0.5,0.05", "--steps", "3", "--prompts", "9",
                "--samples", "2", "--max-new-tokens", "12", "--set", f"dpo.sources={pairs}",
                "--set", "dpo.train.batch_size=4", "--set", "dpo.train.dtype=fp32",
                "--set", "dpo.train.lr=3e-3", "--set", "dpo.val_fraction=0.25")
    main(args)
    printed = capsys.readouterr().out
    assert "| DPO beta 0.05 |" in printed and "experiment overoptimization:" in printed
    results = json.loads((out / "overoptimization.json").read_text())
    rows = results["rows"]
    assert [r["beta"] for r in rows] == ["SFT", 0.5, 0.05]
    assert rows[0]["kl"] == 0.0 and rows[0]["sqrt_kl"] == 0.0
    # A few steps at lr 3e-3 move the policy: an unmoved one has log-ratios of exactly 0. The
    # estimate over 18 samples may fall just below zero (-0.002 on an AVX2 EPYC).
    assert rows[2]["kl"] != 0
    for r in rows:
        assert r["n"] == 9 * 2 and r["prompts"] == 9
        for label in ("proxy", "gold1"):
            assert r[label]["ci"][0] <= r[label]["mean"] <= r[label]["ci"][1]
        assert r["verifier"]["n"] > 0
        assert set(r["change"]) == {"proxy", "gold1", "verifier"}
    assert rows[0]["change"]["proxy"] == {"change": 0.0, "ci": [0.0, 0.0]}
    info = checkpoint.read_info(out / "beta-0.05" / "dpo")
    assert info["final"] and info["config"]["dpo"]["beta"] == 0.05
    assert info["config"]["dpo"]["judge"] == str(proxy)
    assert info["config"]["dpo"]["train"]["max_steps"] == 3
    samples = [json.loads(x) for x in (out / "beta-0.5" / "samples.jsonl").read_text()
               .splitlines()]
    assert len(samples) == 18 and set(samples[0]["rewards"]) == {"proxy", "gold1"}
    assert (out / "overoptimization.png").exists() and (out / "overoptimization.md").exists()

    main(args)  # again: nothing trained or sampled again, the same figures
    printed = capsys.readouterr().out
    assert printed.count("already trained") == 2 and printed.count("measured before") == 3
    again = json.loads((out / "overoptimization.json").read_text())["rows"]
    assert [{k: v for k, v in r.items() if k != "train_s"} for r in again] == [
        {k: v for k, v in r.items() if k != "train_s"} for r in rows]
