"""Exact resume for every training stage after SIGTERM, and a `kill -9` in the middle of a
checkpoint write leaving the previous checkpoint whole (pretraining's exact resume is in
test_train.py)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import pretrained_tiny, tiny_config, write_jsonl
from safetensors.torch import load_file

from llmos import checkpoint
from llmos.train import dpo, pretrain, reward, rl, sft

STEPS, STOP_AT = 6, 3  # SIGTERM during step 3 of 6


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir):
    return pretrained_tiny(tmp_path_factory, corpus_dir, "resumebase", max_steps=3)


def qa_chats(n):
    return [{"messages": [{"role": "user", "content": f"What does alpha_{i} return?"},
                          {"role": "assistant", "content": f"The beta of gamma {i}."}]}
            for i in range(n)]


def pairs(n):
    return [{"prompt": f"What does alpha_{i} return?", "chosen": f"The beta of gamma {i}.",
             "rejected": f"The delta of {i} windows."} for i in range(n)]


def configure(stage: str, cfg, data: Path):
    """cfg set for a few steps of `stage` on `data`; returns (module, stage name in the log)."""
    train = dict(max_steps=STEPS, warmup_steps=1, log_every=1, dtype="fp32", eval_every=0,
                 lr=3e-3, compile=False)
    if stage in ("sft", "sft-lora"):
        cfg.sft.sources, cfg.sft.val_fraction, cfg.sft.eval_items = [str(data)], 0.2, 0
        cfg.sft.lora_rank = 4 if stage == "sft-lora" else 0
        section, module = cfg.sft.train, sft
        train |= dict(batch_size=4, seq_len=64)
    elif stage == "reward":
        cfg.reward.sources, cfg.reward.val_fraction, cfg.reward.eval_pairs = [str(data)], 0.25, 0
        section, module = cfg.reward.train, reward
        train |= dict(batch_size=4, seq_len=64)
    elif stage == "dpo":
        cfg.dpo.sources, cfg.dpo.val_fraction, cfg.dpo.eval_items = [str(data)], 0.25, 0
        section, module = cfg.dpo.train, dpo
        train |= dict(batch_size=4, seq_len=64)
    else:  # rl: sampling in every step, so the random state must resume too
        cfg.rl.prompts, cfg.rl.val_fraction, cfg.rl.eval_items = [str(data)], 0.0, 0
        # 128 answers a step: some say 7, so some groups carry a signal (asserted below)
        cfg.rl.group_size, cfg.rl.prompts_per_step, cfg.rl.max_new_tokens = 16, 8, 3
        cfg.rl.updates_per_batch = 2  # a step that reuses its batch must resume as such
        cfg.rl.replay_rows = 0  # the preset's replay rows do not fit the tiny model's window
        section, module = cfg.rl.train, rl
        train["lr"] = 2e-2
    for k, v in train.items():
        setattr(section, k, v)
    return module


def stage_data(stage: str, folder: Path) -> Path:
    if stage.startswith("sft"):
        return write_jsonl(folder / "chats.jsonl", qa_chats(24))
    if stage == "rl":
        return write_jsonl(folder / "prompts.jsonl", [
            {"prompt": f"Say a number, {chr(97 + i)}.", "answer": "7"} for i in range(16)])
    return write_jsonl(folder / "pairs.jsonl", pairs(24))


def logged(run_dir: Path) -> dict:
    """Step -> every number the step logged (loss, and a stage's own: rewards, margins), but
    for timings."""
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k not in ("tok_per_s", "mfu", "sample_s")}
            for r in recs if "loss" in r and r["stage"] != "pretrain"}


def sigterm_during_step(monkeypatch, module, n: int):
    """Send SIGTERM while the loop fetches the n-th micro-batch of `module`'s stage."""
    real_train = module.train

    def train(model, cfg, stage, rt, **kw):
        calls, next_batch = [0], stage.next_batch

        def next_batch_then_sigterm():
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return next_batch()

        stage.next_batch = next_batch_then_sigterm
        return real_train(model, cfg, stage, rt, **kw)

    monkeypatch.setattr(module, "train", train)


@pytest.mark.parametrize("stage", ["sft", "sft-lora", "reward", "dpo", "rl"])
def test_every_stage_resumes_exactly_after_sigterm(stage, base, tmp_path, monkeypatch):
    cfg0, parent = base
    data = stage_data(stage, tmp_path)
    full, cut = copy.deepcopy(cfg0), copy.deepcopy(cfg0)
    full.name, full.runs_dir = "full", str(tmp_path)
    cut.name, cut.runs_dir = "cut", str(tmp_path)
    module = configure(stage, full, data)
    configure(stage, cut, data)
    module.run(full, parent, tmp_path / "full-out")

    with monkeypatch.context() as m:
        sigterm_during_step(m, module, STOP_AT)
        module.run(cut, parent, tmp_path / "cut-out")
    info = checkpoint.read_info(tmp_path / "cut-out")
    assert info["step"] == STOP_AT and not info["final"]
    with pytest.raises(FileExistsError, match="--resume"):
        module.run(cut, parent, tmp_path / "cut-out")
    module.run(cut, parent, tmp_path / "cut-out", resume=True)

    a, b = logged(full.run_dir), logged(cut.run_dir)
    assert sorted(a) == list(range(1, STEPS + 1))
    assert a == b  # every logged number of every step, exactly
    if stage == "rl":  # not a run of zero advantages, where every update is the same
        assert any(r.get("mixed_groups", 0) > 0 for r in a.values())
    wa = load_file(str(tmp_path / "full-out" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cut-out" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert checkpoint.read_info(tmp_path / "cut-out")["final"]


def test_lora_resume_refuses_other_adapter_settings(base, tmp_path, monkeypatch):
    cfg0, parent = base
    cfg = copy.deepcopy(cfg0)
    cfg.name, cfg.runs_dir = "lora", str(tmp_path)
    configure("sft-lora", cfg, stage_data("sft", tmp_path))
    with monkeypatch.context() as m:
        sigterm_during_step(m, sft, 2)
        sft.run(cfg, parent, tmp_path / "out")
    cfg.sft.lora_rank = 8
    with pytest.raises(ValueError, match="other LoRA settings: rank 4 .now 8."):
        sft.run(cfg, parent, tmp_path / "out", resume=True)


# ---- kill -9 while a checkpoint is being written ---------------------------------------------

# A pretraining run that saves every 2 steps and, in its second save, stops at `where` and says
# so on stdout; the test then kills it with SIGKILL, as a power cut or the OOM killer would.
KILLED_RUN = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from llmos import checkpoint
    from llmos.train import pretrain

    where, saves = {where!r}, [0]

    def pause():
        print("PAUSED", flush=True)
        time.sleep(600)

    real_state, real_replace = checkpoint.save_trainer_state, os.replace

    def save_trainer_state(state, out_dir):  # model.safetensors is half the new checkpoint
        saves[0] += 1
        if saves[0] == 2 and where == "writing":
            pause()
        real_state(state, out_dir)

    def replace(src, dst):  # the old checkpoint moved aside, the new one not yet in place
        if saves[0] == 2 and where == "renaming" and ".tmp-" in str(src):
            pause()
        real_replace(src, dst)

    checkpoint.save_trainer_state, checkpoint.os.replace = save_trainer_state, replace
    cfg = tiny_config({runs!r}, {corpus!r}, name="killed", max_steps=6, save_every=2,
                      eval_every=0)
    pretrain.run(cfg)
""")


@pytest.mark.parametrize("where", ["writing", "renaming"])
def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(where, tmp_path, corpus_dir):
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), where=where,
                               runs=str(tmp_path), corpus=str(corpus_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "PAUSED":
                break
        else:
            pytest.fail(f"the run ended (status {proc.wait()}) before its second save")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ckpt = tmp_path / "killed" / "base"
    model = checkpoint.load_model(ckpt)  # puts a checkpoint moved aside back first
    assert model is not None and checkpoint.read_info(ckpt)["step"] == 2

    cfg = tiny_config(tmp_path, corpus_dir, name="killed", max_steps=6, save_every=2,
                      eval_every=0)
    pretrain.run(cfg, resume=True)  # from step 2, past the litter of the killed write
    assert checkpoint.read_info(ckpt)["step"] == 6 and checkpoint.read_info(ckpt)["final"]
    whole = tiny_config(tmp_path, corpus_dir, name="whole", max_steps=6, save_every=2,
                        eval_every=0)
    pretrain.run(whole)
    a = load_file(str(ckpt / "model.safetensors"))
    b = load_file(str(tmp_path / "whole" / "base" / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)  # the resumed run is the uninterrupted one
