"""Scaling sweeps: shapes from sizes, plans and their errors, the job list, predictions, the
plot, and real sweeps of tiny runs (resumed after a kill, and one job line run as written)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llmos.cli import main
from llmos.config import ModelConfig, load_config
from llmos.scaling import fitting, plan, predict, sweep
from llmos.scaling.laws import CHINCHILLA, Law, synthetic_isoflops
from llmos.scaling.plots import plot_fit
from llmos.scaling.shapes import count_params, heads_for, nonembed_params, shape_for

BASE = ModelConfig(vocab_size=4096)


# ---- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("counting, n", [
    *(("total", n) for n in np.geomspace(1.5e5, 1e9, 20).tolist() + [2_557_632]),
    *(("nonembedding", n) for n in np.geomspace(3e4, 1e9, 20).tolist() + [1_771_200])])
def test_a_shape_hits_its_size_within_10_percent(counting, n):
    cfg = shape_for(n, BASE, counting)
    total, nonembed = count_params(cfg)
    assert abs((total if counting == "total" else nonembed) / n - 1) <= 0.10
    assert nonembed == nonembed_params(cfg.dim, cfg.n_layers, cfg.ffn_dim)
    assert total == nonembed + 4096 * cfg.dim  # tied embeddings: counted once
    assert cfg.dim % cfg.n_heads == 0 and cfg.dim // cfg.n_heads in (64, 32, 16, 8)
    cfg.validate()


def test_the_rule_gives_cpu_tiny_its_own_shape_and_grows_depth_and_width():
    for counting, n in (("total", 2_557_632), ("nonembedding", 1_771_200)):
        tiny = shape_for(n, BASE, counting)
        assert (tiny.n_layers, tiny.dim, tiny.n_heads, tiny.ffn_dim) == (4, 192, 3, 512)
    shapes = [shape_for(n, BASE) for n in np.geomspace(2e5, 1e9, 12)]
    assert [s.n_layers for s in shapes] == sorted(s.n_layers for s in shapes)
    assert [s.dim for s in shapes] == sorted(s.dim for s in shapes)
    assert heads_for(96) == 3 and heads_for(80) == 5 and heads_for(48) == 3


def test_a_size_must_be_positive_and_possible():
    with pytest.raises(ValueError, match="positive"):
        shape_for(0, BASE)
    with pytest.raises(ValueError, match="too few"):
        shape_for(20_000, BASE)  # the embedding of a 16-wide model holds 65,536
    with pytest.raises(ValueError, match="counting"):
        shape_for(1e6, BASE, "embedding")


# ---- amounts and plans -----------------------------------------------------------------------


def test_amounts_and_ranges():
    assert plan.parse_amount("50k") == 50_000 and plan.parse_amount("2M") == 2e6
    assert plan.parse_amount("1.5e12") == 1.5e12 and plan.parse_amount("3G") == 3e9
    values = plan.parse_amounts("50k:2M:5")
    assert len(values) == 5 and values[0] == 50_000 and values[-1] == pytest.approx(2e6)
    assert np.allclose(np.diff(np.log(values)), np.log(40) / 4)
    assert plan.parse_amounts("1k, 2k") == [1000, 2000]
    for bad in ("abc", "0", "-5k", "5x"):
        with pytest.raises(plan.PlanError):
            plan.parse_amount(bad)
    with pytest.raises(plan.PlanError, match="FROM:TO:COUNT"):
        plan.parse_amounts("1k:2k")
    assert plan.parse_range("0.5:300") == (0.5, 300)
    with pytest.raises(plan.PlanError, match="above"):
        plan.parse_range("300:0.5")
    assert plan.short(52_300) == "52.3k" and plan.short(1.2e6) == "1.2M"


def cpu_tiny():
    cfg = load_config("cpu-tiny")
    cfg.model.vocab_size = 4096
    return cfg


@pytest.mark.parametrize("counting", ["total", "nonembedding"])
def test_an_isoflop_plan_spends_its_budget_and_leaves_out_what_cannot_fit(counting):
    sizes = "150k:2.5M:7" if counting == "total" else "25k:1.6M:7"
    runs, skipped = plan.plan_isoflops([2e12, 2e13], plan.parse_amounts(sizes), cpu_tiny(),
                                       counting=counting)
    for r in runs:
        n = plan.counted(r, counting)
        assert r["flops"] == pytest.approx(6 * n * r["tokens"])
        assert r["flops"] == pytest.approx(r["budget"], rel=0.1)
        assert 0.5 * 0.9 <= r["tokens"] / n <= 100 * 1.1
        assert abs(n / r["target"]["params"] - 1) <= 0.1
        assert r["tokens"] % 4096 == 0  # whole steps of 16 x 256 tokens
        o = r["overrides"]
        assert o["train.max_steps"] * 4096 == r["tokens"] and o["train.eval_every"] == 0
        assert o["train.warmup_steps"] <= o["train.max_steps"] // 10
    assert {r["budget"] for r in runs} == {2e12, 2e13}
    assert any("outside" in line for line in skipped)


def test_fixed_steps_grow_the_batch_with_the_tokens_not_the_steps(tmp_path):
    runs, _ = plan.plan_isoflops([2e12, 2e13], plan.parse_amounts("150k:2.5M:7"), cpu_tiny(),
                                 steps=500)
    batches = []
    for r in runs:
        o = r["overrides"]
        assert r["tokens"] == o["train.max_steps"] * o["train.batch_size"] * 256
        assert r["flops"] == pytest.approx(r["budget"], rel=0.1)
        # a batch is whole sequences: the steps land near 500, nearest where batches are small
        assert abs(o["train.max_steps"] / 500 - 1) <= 0.5 / o["train.batch_size"] + 0.01
        batches.append((r["tokens"], o["train.batch_size"]))
    in_order = [b for _, b in sorted(batches)]
    assert in_order == sorted(in_order)  # more tokens, a bigger batch
    assert max(b for _, b in batches) > 16 > min(b for _, b in batches)
    with pytest.raises(plan.PlanError, match="too few to train"):
        plan.plan_run(2e5, 1e6, cpu_tiny(), steps=5)
    # a sweep folder made with one protocol refuses the other
    first = {"preset": "cpu-tiny", "overrides": [], "sources": ["builtin:stdlib"], "nproc": 1,
             "counting": "total", "steps": 500, "runs": runs}
    plan.write(tmp_path / "sweep.json", first)
    with pytest.raises(plan.PlanError, match="steps"):
        plan.merge(tmp_path / "sweep.json", {**first, "steps": None})


def test_a_budget_too_small_for_any_shape_is_a_clear_error():
    with pytest.raises(plan.PlanError, match="too few to train"):
        plan.plan_run(1e6, 20_000, cpu_tiny())
    with pytest.raises(plan.PlanError, match="no size fits any budget"):
        plan.plan_isoflops([1e9], [2e5, 1e6], cpu_tiny())
    with pytest.raises(plan.PlanError, match="too few for any shape"):
        plan.plan_run(20_000, 1e6, cpu_tiny())


def test_an_empty_or_one_point_sweep_is_refused(tmp_path, capsys):
    with pytest.raises(plan.PlanError, match="cannot be fitted"):
        plan.check_plan([])
    for argv in (["--params", "200k", "--tokens", "1M"], ["--params", "200k"],
                 ["--params", "200k,200.1k", "--tokens", "1M"],
                 ["--params", "20k,200k", "--tokens", "1M"]):
        with pytest.raises(SystemExit) as e:
            main(["scaling", "sweep", "--out", str(tmp_path / "s"), *argv])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "cannot be fitted" in err and "needs --flops" in err and "same run" in err
    assert "too few for any shape" in err
    assert not (tmp_path / "s").exists()  # nothing made for a refused sweep


def test_a_sweep_folder_keeps_its_runs_and_refuses_another_sweep(tmp_path):
    cfg = cpu_tiny()
    first = {"preset": "cpu-tiny", "overrides": [], "sources": ["builtin:stdlib"], "nproc": 1,
             "counting": "total", "runs": plan.plan_grid([2e5], [1e6], cfg)}
    plan.write(tmp_path / "sweep.json", first)
    more = {**first, "runs": plan.plan_grid([2e5, 4e5], [1e6], cfg)}
    merged = plan.merge(tmp_path / "sweep.json", more)
    assert [r["name"] for r in merged["runs"]] == [r["name"] for r in more["runs"]]
    with pytest.raises(plan.PlanError, match="another --out"):
        plan.merge(tmp_path / "sweep.json", {**more, "preset": "gpu-d12"})
    with pytest.raises(plan.PlanError, match="another --out"):
        plan.merge(tmp_path / "sweep.json", {**more, "counting": "nonembedding"})
    changed = json.loads(json.dumps(first))
    changed["runs"][0]["overrides"]["train.max_steps"] += 1
    with pytest.raises(plan.PlanError, match="other settings"):
        plan.merge(tmp_path / "sweep.json", changed)


# ---- predictions and the picture --------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_fit(tmp_path_factory):
    law = Law(**CHINCHILLA)
    runs = synthetic_isoflops(law, [1e18, 1e19, 1e20], per_budget=5, noise=0.002, seed=2)
    return runs, fitting.fit_runs(runs, rounds=8, seed=0)


def test_predictions_follow_the_fit_with_intervals(synthetic_fit, tmp_path):
    runs, fit = synthetic_fit
    p = predict.loss_at(fit, 1e9, 2e10)
    assert p["counting"] == "total"
    assert p["loss"] == pytest.approx(Law(**CHINCHILLA).loss(1e9, 2e10), rel=0.01)
    assert p["ci"][0] <= p["ci"][1]
    opt = predict.optimum_at(fit, 1e21)
    assert 6 * opt["params"] * opt["tokens"] == pytest.approx(1e21)
    assert opt["params_ci"][0] <= opt["params_ci"][1]
    assert "per parameter" in predict.shown(opt)
    with pytest.raises(ValueError, match="without embeddings"):
        predict.loss_at(fit, 1e9, 2e10, "nonembedding")
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    main(["scaling", "predict", str(tmp_path / "fit.json"), "--flops", "1e21"])
    with pytest.raises(SystemExit):
        main(["scaling", "predict", str(tmp_path / "fit.json"), "--params", "1G"])


def test_the_fit_is_drawn(synthetic_fit, tmp_path):
    runs, fit = synthetic_fit
    out = plot_fit(runs, fit, tmp_path / "fit.png")
    assert out.stat().st_size > 20_000 and out.read_bytes()[:4] == b"\x89PNG"


# ---- real sweeps of tiny runs ------------------------------------------------------------------

TINY = ["--set", "data.vocab_size=320", "--set", "data.val_fraction=0.1",
        "--set", "model.max_seq_len=64", "--set", "train.seq_len=32",
        "--set", "train.batch_size=4", "--set", "train.eval_tokens=512",
        "--set", "train.compile=false", "--set", "train.dtype=fp32",
        "--set", "train.log_every=5"]


def sweep_argv(corpus, out, *extra):
    return [sys.executable, "-m", "llmos", "scaling", "sweep", "--out", str(out),
            "--source", str(corpus), *TINY, "--params", "9k,20k", "--tokens", "6k,12k,24k",
            "--bootstrap", "4", *extra]


@pytest.mark.slow  # six tiny runs, one of them twice: about a minute on 2 cores
def test_a_killed_sweep_continues_with_the_runs_not_done(corpus_dir, tmp_path):
    out = tmp_path / "sweep"
    first = subprocess.Popen(sweep_argv(corpus_dir, out), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not any(
            sweep.status(out, r) == "done" for r in _plan_runs(out)):
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    text = first.communicate(timeout=120)[0]
    if first.returncode == 0:
        pytest.skip("the sweep finished before it could be stopped")  # a very fast machine
    assert first.returncode == 130, text
    assert "run the same command again" in text
    done = {r["name"]: (sweep.run_dir(out, r) / "base" / "model.safetensors").stat().st_mtime
            for r in _plan_runs(out) if sweep.status(out, r) == "done"}
    assert 1 <= len(done) < 6

    again = subprocess.run(sweep_argv(corpus_dir, out, "--jobs", "2"), capture_output=True,
                           text=True, timeout=600)  # two runs at a time, a core each
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"6 runs, {len(done)} done, {6 - len(done)} to train, 2 at a time" in again.stdout
    for name, mtime in done.items():  # finished runs were not trained again
        assert (out / "runs" / name / "base" / "model.safetensors").stat().st_mtime == mtime
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert {r["tokens"] for r in rows} == {6016, 12032, 24064}  # whole steps of 4 x 32
    fit = json.loads((out / "fit.json").read_text())
    assert "nonembedding" in fit and (out / "fit.png").exists()
    # More data lowers the loss at each size.
    for size in {r["params"] for r in rows}:
        losses = [r["loss"] for r in sorted(rows, key=lambda r: r["tokens"])
                  if r["params"] == size]
        assert losses[0] > losses[-1]


def _plan_runs(out):
    try:
        return json.loads((out / "sweep.json").read_text())["runs"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@pytest.mark.slow  # one tiny run under torchrun
def test_a_job_line_runs_as_written_and_collect_gathers_it(corpus_dir, tmp_path):
    out, jobs = tmp_path / "sweep", tmp_path / "jobs.txt"
    argv = sweep_argv(corpus_dir, out, "--emit-jobs", str(jobs))
    made = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    lines = jobs.read_text().splitlines()
    assert len(lines) == 6 and all(line.startswith("torchrun --standalone --nproc_per_node 1 -m "
                                                   "llmos pretrain ") for line in lines)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    ran = subprocess.run(lines[0], shell=True, capture_output=True, text=True, timeout=300,
                         env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    collected = subprocess.run([sys.executable, "-m", "llmos", "scaling", "collect", str(out)],
                               capture_output=True, text=True, timeout=120)
    assert "collected 1 finished runs" in collected.stdout
    assert "not finished (5)" in collected.stdout
    row = json.loads((out / "runs.jsonl").read_text())
    name = shlex.split(lines[0])[shlex.split(lines[0]).index("--name") + 1]
    assert row["name"] == name and row["loss"] > 0 and row["bpb"] > 0
    # Written again, the list leaves out the run now done.
    subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    assert len(jobs.read_text().splitlines()) == 5


def test_the_report_card_shows_a_sweep(synthetic_fit, tmp_path):
    from llmos.evals import report

    runs, fit = synthetic_fit
    run = tmp_path / "run"
    folder = run / "scaling"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text("{}")
    assert "No fit yet" in report.markdown(run)
    rows = [{**r, "name": f"r{i}", "params_nonembed": int(r["params"] * 0.9),
             "params": int(r["params"]), "tokens": int(r["tokens"]), "bpb": 1.0}
            for i, r in enumerate(runs)]
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "fit.json").write_text(json.dumps(fit))
    plot_fit(runs, fit, folder / "fit.png")
    (folder / "checks.jsonl").write_text(json.dumps(
        {**rows[0], "name": "check-x", "predicted": 2.5, "relative_error": 0.012}) + "\n")
    md = report.markdown(run)
    assert "## Scaling laws" in md and summary_line(fit) in md
    assert "![scaling fit](scaling/fit.png)" in md and "+1.20%" in md and "| r14 |" in md
    assert "data:image/png;base64" in report.html(md, run.resolve())


def summary_line(fit):
    return fitting.summary(fit).splitlines()[1]
