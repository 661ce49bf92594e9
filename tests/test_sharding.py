"""`train.fsdp`: FSDP2 over 2 CPU processes (gloo) trains what one process trains, saves the same
kind of checkpoint, and resumes exactly on another number of processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from llmos import checkpoint
from llmos.train import pretrain

# A constant schedule, so a run of 3 steps resumed for 3 more is the run of 6.
SETTINGS = dict(optimizer="adamw", schedule="constant", warmup_steps=0, eval_every=0,
                log_every=1)


def losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def torchrun(cfg, nproc: int, *extra: str):
    """`llmos pretrain` on `nproc` processes with cfg's settings."""
    sets = [f"--set=model.{k}={v}" for k, v in cfg.to_dict()["model"].items()
            if k in ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len")]
    sets += [f"--set=train.{k}={v}" for k, v in cfg.to_dict()["train"].items()]
    sets += [f"--set=data.{k}={v}" for k, v in cfg.to_dict()["data"].items() if k != "sources"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_port=29519", "-m", "llmos", "pretrain", "--name", cfg.name,
           "--runs-dir", cfg.runs_dir, "--source", cfg.data.sources[0], *sets, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def share_data(src, dst):
    dst.run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src.run_dir / "data", dst.run_dir / "data")  # same shards and tokenizer


@pytest.mark.slow  # three short runs, two of them on 2 processes
def test_fsdp_on_two_processes_matches_one_and_resumes_on_one(tmp_path, corpus_dir):
    one = tiny_config(tmp_path, corpus_dir, name="one", batch_size=4, **SETTINGS)
    pretrain.run(one)

    sharded = tiny_config(tmp_path, corpus_dir, name="sharded", batch_size=2, fsdp=True,
                          **SETTINGS)
    share_data(one, sharded)
    torchrun(sharded, 2)
    l1, l2 = losses(one.run_dir), losses(sharded.run_dir)
    assert sorted(l1) == sorted(l2) == list(range(1, 7))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-4)
    a = checkpoint.load_model(one.run_dir / "base").state_dict()
    b = checkpoint.load_model(sharded.run_dir / "base").state_dict()  # gathered on save
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)

    # 3 steps on 2 processes, then 3 more on 1 (the same global batch of 4 rows).
    half = tiny_config(tmp_path, corpus_dir, name="half", batch_size=2, fsdp=True,
                       **{**SETTINGS, "max_steps": 3})
    share_data(one, half)
    torchrun(half, 2)
    state = checkpoint.load_trainer_state(half.run_dir / "base")
    assert state["optimizer_layout"] == "fsdp-full" and state["step"] == 3
    rest = tiny_config(tmp_path, corpus_dir, name="half", batch_size=4, fsdp=True, **SETTINGS)
    pretrain.run(rest, resume=True)
    l3 = losses(half.run_dir)
    assert sorted(l3) == list(range(1, 7))
    for step in l1:
        assert l3[step] == pytest.approx(l1[step], rel=1e-4)

    # Resuming without the setting is refused, not silently wrong.
    other = tiny_config(tmp_path, corpus_dir, name="half", batch_size=4, **SETTINGS)
    with pytest.raises(ValueError, match="train.fsdp"):
        pretrain.run(other, resume=True)


def test_fsdp_refuses_muon_and_other_stages(tmp_path, corpus_dir):
    from llmos.train import sharding

    cfg = tiny_config(tmp_path, corpus_dir, optimizer="muon", fsdp=True)
    with pytest.raises(ValueError, match="adamw"):
        sharding.check(cfg.train, "pretrain")
    cfg.train.optimizer = "adamw"
    with pytest.raises(ValueError, match="pretraining"):
        sharding.check(cfg.train, "sft")
    sharding.check(cfg.train, "pretrain")
