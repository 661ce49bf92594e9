import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from llmos import checkpoint
from llmos.config import TrainConfig
from llmos.data import shards
from llmos.train import pretrain
from llmos.train.optim import lr_factor


def losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def weights(ckpt):
    return checkpoint.load_model(ckpt).state_dict()


def test_schedules():
    c = TrainConfig(max_steps=100, warmup_steps=10, min_lr_frac=0.1)
    assert lr_factor(0, c) == pytest.approx(0.1) and lr_factor(9, c) == pytest.approx(1.0)
    assert lr_factor(99, c) == pytest.approx(0.1, abs=0.01)  # cosine ends at the floor
    c.schedule = "wsd"
    c.decay_frac = 0.2
    assert lr_factor(50, c) == 1.0 and lr_factor(80, c) == 1.0
    assert lr_factor(90, c) == pytest.approx(0.55) and lr_factor(100, c) == pytest.approx(0.1)
    c.schedule = "bogus"
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(50, c)


def test_pretrain_writes_checkpoint_metrics_and_plot(tmp_path, corpus_dir):
    cfg = tiny_config(tmp_path, corpus_dir)
    ckpt = pretrain.run(cfg)
    info = checkpoint.read_info(ckpt)
    assert info["stage"] == "pretrain" and info["step"] == 6 and info["final"]
    assert info["config"]["train"]["max_steps"] == 6
    assert 0 < info["metrics"]["val_bpb"] < 10
    assert (cfg.run_dir / "loss.png").stat().st_size > 1000
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (ckpt / name).exists()
    steps = losses(cfg.run_dir)
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert steps[6] < steps[1]  # it learns
    # Running again neither overwrites silently nor retrains.
    with pytest.raises(pretrain.AlreadyTrained):
        pretrain.run(cfg)
    cfg.train.lr = 1e-4
    with pytest.raises(pretrain.StaleCheckpoint, match="--overwrite"):
        pretrain.run(cfg)


def test_continued_pretraining_starts_from_a_checkpoint(tmp_path, corpus_dir):
    from conftest import make_corpus

    base = pretrain.run(tiny_config(tmp_path, corpus_dir, name="base"))
    other = make_corpus(tmp_path / "other", n_docs=20, seed=5)
    cfg = tiny_config(tmp_path, other, name="more", max_steps=1, lr=0.0, muon_lr=0.0)
    cfg.model.dim = 64  # the checkpoint's shape wins
    cfg.train.init_from = str(base)
    ckpt = pretrain.run(cfg)
    before, after = weights(base), weights(ckpt)
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the same weights
    info = checkpoint.read_info(ckpt)
    assert info["parent"] == str(base) and info["config"]["model"]["dim"] == 32
    assert (ckpt / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    # the same settings on changed data is not "already trained"
    make_corpus(other, n_docs=21, seed=6)
    with pytest.raises(pretrain.StaleCheckpoint, match="other settings or data"):
        pretrain.run(cfg)
    bad = tiny_config(tmp_path, other, name="bad")
    bad.train.init_from = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        pretrain.run(bad)
    bad.train.init_from, bad.data.tokenizer = str(base), str(other / "mod_000.py")
    with pytest.raises(ValueError, match="has its own tokenizer"):
        pretrain.run(bad)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_sigterm_saves_and_resume_is_exact(tmp_path, corpus_dir, monkeypatch, optimizer):
    full = tiny_config(tmp_path, corpus_dir, name="full", optimizer=optimizer)
    pretrain.run(full)

    cut = tiny_config(tmp_path, corpus_dir, name="cut", optimizer=optimizer)
    calls = {"n": 0}
    original = shards.TokenLoader.next_batch

    def next_batch_then_sigterm(self):
        calls["n"] += 1
        if calls["n"] == 3:  # during step 3: the loop must finish it, save, and stop
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(shards.TokenLoader, "next_batch", next_batch_then_sigterm)
    pretrain.run(cut)
    monkeypatch.setattr(shards.TokenLoader, "next_batch", original)
    info = checkpoint.read_info(cut.run_dir / "base")
    assert info["step"] == 3 and not info["final"]

    with pytest.raises(FileExistsError, match="--resume"):
        pretrain.run(cut)
    pretrain.run(cut, resume=True)
    assert losses(cut.run_dir) == losses(full.run_dir)  # exactly, step by step
    a, b = weights(full.run_dir / "base"), weights(cut.run_dir / "base")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_save_is_atomic(tmp_path, corpus_dir, monkeypatch):
    cfg = tiny_config(tmp_path, corpus_dir)
    ckpt = pretrain.run(cfg)
    before = (ckpt / "model.safetensors").read_bytes()
    model = checkpoint.load_model(ckpt)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_trainer_state", crash)
    with pytest.raises(OSError):
        checkpoint.save(ckpt, model, ckpt, {"stage": "x"}, trainer_state={"a": 1})
    assert (ckpt / "model.safetensors").read_bytes() == before  # the old one is intact
    assert checkpoint.read_info(ckpt)["stage"] == "pretrain"
    # A crash between the two renames: the previous checkpoint is found and restored.
    old = ckpt.with_name(f".{ckpt.name}.old-123")
    os.replace(ckpt, old)
    assert checkpoint.load_model(ckpt) is not None and ckpt.exists()


def test_trainer_state_roundtrip_without_pickle(tmp_path):
    state = {"optimizers": [{"state": {0: {"exp_avg": torch.arange(3.0), "step": torch.tensor(2.)}},
                             "param_groups": [{"lr": 0.1, "params": [0]}]}],
             "data": {"cursor": 5, "epoch": 0}, "rng": torch.get_rng_state(), "step": 3}
    checkpoint.save_trainer_state(state, tmp_path / "trainer_state")
    back = checkpoint.load_trainer_state(tmp_path)
    assert back["data"] == {"cursor": 5, "epoch": 0} and back["step"] == 3
    assert torch.equal(back["optimizers"][0]["state"][0]["exp_avg"], torch.arange(3.0))
    assert 0 in back["optimizers"][0]["state"]  # integer keys survive JSON
    assert torch.equal(back["rng"], state["rng"])


@pytest.mark.slow
def test_two_processes_match_one_with_same_global_batch(tmp_path, corpus_dir):
    # AdamW: torch's Muon orthogonalises in bf16, where the last-bit differences between one
    # all-reduced gradient and one full-batch gradient become ~1e-3 differences in the update.
    one = tiny_config(tmp_path, corpus_dir, name="one", batch_size=4, optimizer="adamw")
    pretrain.run(one)
    two = tiny_config(tmp_path, corpus_dir, name="two", batch_size=2, optimizer="adamw")
    two.run_dir.mkdir(parents=True)
    shutil.copytree(one.run_dir / "data", two.run_dir / "data")  # same shards and tokenizer
    sets = [f"--set=model.{k}={v}" for k, v in two.to_dict()["model"].items()
            if k in ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len")]
    sets += [f"--set=train.{k}={v}" for k, v in two.to_dict()["train"].items()]
    sets += [f"--set=data.{k}={v}" for k, v in two.to_dict()["data"].items() if k != "sources"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29517", "-m", "llmos", "pretrain", "--name", "two",
           "--runs-dir", str(tmp_path), "--source", str(corpus_dir), *sets]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    l1, l2 = losses(one.run_dir), losses(two.run_dir)
    assert sorted(l1) == sorted(l2)
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-4)
    a, b = weights(one.run_dir / "base"), weights(two.run_dir / "base")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    assert checkpoint.read_info(two.run_dir / "base")["world_size"] == 2


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, corpus_dir):
    eager = tiny_config(tmp_path, corpus_dir, name="eager", optimizer="adamw", max_steps=4)
    pretrain.run(eager)
    compiled = tiny_config(tmp_path, corpus_dir, name="compiled", optimizer="adamw",
                           max_steps=4, compile=True)
    pretrain.run(compiled)
    l1, l2 = losses(eager.run_dir), losses(compiled.run_dir)
    assert sorted(l1) == sorted(l2)
    for step in l1:  # fused kernels round differently, so close rather than equal
        assert l2[step] == pytest.approx(l1[step], rel=1e-3)


def test_compile_without_a_cxx_compiler_trains_eagerly(tmp_path, corpus_dir, monkeypatch,
                                                       capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no g++, c++ or clang++ to be found
    monkeypatch.delenv("CXX", raising=False)
    cfg = tiny_config(tmp_path, corpus_dir, max_steps=2, compile=True)
    pretrain.run(cfg)
    assert "no C++ compiler" in capsys.readouterr().out
    assert checkpoint.read_info(cfg.run_dir / "base")["step"] == 2
