"""Scaling-law fits: recovered constants on synthetic runs drawn from published laws, the runs
file and its errors, and `llmos scaling fit` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_jsonl

from llmos.cli import main
from llmos.scaling import fitting
from llmos.scaling.laws import (
    CHINCHILLA,
    EPOCH,
    FitError,
    Law,
    fit_isoflops,
    fit_law,
    huber,
    isoflop_groups,
    objective,
    profile_compute,
    synthetic_isoflops,
)

BUDGETS = [1e18, 3e18, 1e19, 3e19, 1e20]


def columns(runs):
    return ([r["params"] for r in runs], [r["tokens"] for r in runs],
            [r["loss"] for r in runs], [r["flops"] for r in runs])


@pytest.mark.slow  # about 10 s a fit on 2 cores
@pytest.mark.parametrize("constants", [CHINCHILLA, EPOCH], ids=["chinchilla", "epoch"])
def test_approach3_recovers_the_exponents_within_5_percent(constants):
    law = Law(**constants)
    n, d, loss, _ = columns(synthetic_isoflops(law, BUDGETS, noise=0.002, seed=1))
    fit = fit_law(n, d, loss)
    assert fit.alpha == pytest.approx(law.alpha, rel=0.05)
    assert fit.beta == pytest.approx(law.beta, rel=0.05)
    assert fit.E == pytest.approx(law.E, rel=0.05)
    # the compute-optimal split of a budget twice the largest follows
    assert fit.optimum(2e20)[0] == pytest.approx(law.optimum(2e20)[0], rel=0.15)


def test_approach2_finds_the_exponent_of_n_opt():
    law = Law(**CHINCHILLA)
    n, d, loss, flops = columns(synthetic_isoflops(law, BUDGETS))
    a2 = fit_isoflops(n, d, loss, flops)
    assert a2["a"] == pytest.approx(law.beta / (law.alpha + law.beta), rel=0.02)
    assert a2["a"] + a2["b"] == pytest.approx(1.0)
    assert len(a2["profiles"]) == len(BUDGETS)


def test_the_gradient_is_the_objectives_own():
    rng = np.random.default_rng(0)
    log_n, log_d = rng.uniform(15, 20, 12), rng.uniform(18, 24, 12)
    log_l = rng.uniform(0.5, 1.5, 12)
    theta = np.array([6.0, 6.5, 0.4, 0.35, 0.3])
    _, grad = objective(theta, log_n, log_d, log_l, delta=1.0)
    for k in range(5):
        step = np.zeros(5)
        step[k] = 1e-6
        up = objective(theta + step, log_n, log_d, log_l, delta=1.0)[0]
        down = objective(theta - step, log_n, log_d, log_l, delta=1.0)[0]
        assert grad[k] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-8)


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    value, slope = huber(np.array([0.5e-3, -3e-3]))
    assert value[0] == pytest.approx(0.125e-6) and slope[0] == pytest.approx(0.5e-3)
    assert value[1] == pytest.approx(1e-3 * (3e-3 - 0.5e-3)) and slope[1] == pytest.approx(-1e-3)


def test_runs_are_grouped_by_equal_compute():
    assert isoflop_groups([1, 2, 4, 10], [6, 3, 1.5, 100]) == [[0, 1, 2], [3]]


def test_too_few_runs_or_one_size_is_a_clear_error():
    with pytest.raises(FitError, match="at least 5 runs"):
        fit_law([1e6, 2e6], [1e8, 1e8], [3.0, 2.9])
    with pytest.raises(FitError, match="two sizes"):
        fit_law([1e6] * 6, [1e8, 2e8, 3e8, 4e8, 5e8, 6e8], [3, 2.9, 2.8, 2.7, 2.6, 2.5])
    with pytest.raises(FitError, match="two IsoFLOP profiles"):
        fit_isoflops([1e6, 2e6, 4e6], [4e8, 2e8, 1e8], [3.0, 2.8, 2.9])


def test_a_bad_runs_file_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "runs.jsonl", [{"params": 1e6, "tokens": 1e8, "loss": 3.0},
                                                 {"params": 1e6, "tokens": -5, "loss": 3.0}])
    with pytest.raises(ValueError, match=r"runs.jsonl:2: 'tokens' must be a positive number"):
        fitting.read_runs(path)
    write_jsonl(path, ["{oops"])
    with pytest.raises(ValueError, match="runs.jsonl:1: not JSON"):
        fitting.read_runs(path)
    path.write_text("")
    with pytest.raises(FitError, match="holds no runs"):
        fitting.read_runs(path)


@pytest.mark.slow
def test_cli_fit_writes_both_approaches_and_both_countings(tmp_path, capsys):
    law = Law(**CHINCHILLA)
    runs = synthetic_isoflops(law, BUDGETS[:3], per_budget=5, noise=0.002)
    for r in runs:
        r["params_nonembed"] = r["params"] * 0.8
    path = write_jsonl(tmp_path / "runs.jsonl", runs)
    main(["scaling", "fit", str(path), "--out", str(tmp_path / "fit.json"), "--bootstrap", "8"])
    fit = json.loads((tmp_path / "fit.json").read_text())
    a3 = fit["approach3"]
    assert {"E", "A", "B", "alpha", "beta", "tokens_per_param", "ci"} <= set(a3)
    assert a3["ci"]["alpha"][0] <= a3["alpha"] <= a3["ci"]["alpha"][1]
    assert "a" in fit["approach2"] and fit["runs"] == 15
    # 0.8 N everywhere changes A, not the exponents; fewer parameters counted, more tokens each
    ne = fit["nonembedding"]["approach3"]
    assert ne["alpha"] == pytest.approx(a3["alpha"], rel=1e-3)
    assert ne["beta"] == pytest.approx(a3["beta"], rel=1e-3)
    assert ne["tokens_per_param"] > a3["tokens_per_param"]
    out = capsys.readouterr().out
    assert "tokens per parameter" in out and "without embeddings" in out


def test_a_profile_whose_valley_lies_outside_its_sizes_is_left_out_of_approach_2():
    law = Law(**CHINCHILLA)
    runs = synthetic_isoflops(law, [1e18, 1e19, 1e20], per_budget=5, noise=0.0)
    # A fourth profile of sizes all far above its optimum: the loss only rises with N.
    n_opt, _ = law.optimum(3e17)
    for n in np.geomspace(20 * n_opt, 80 * n_opt, 4):
        runs.append({"params": n, "tokens": 3e17 / (6 * n), "loss": float(
            law.loss(n, 3e17 / (6 * n))), "flops": 3e17})
    n, d, loss, flops = columns(runs)
    a2 = fit_isoflops(n, d, loss, flops)
    assert a2["unbracketed"] == [pytest.approx(3e17)] and len(a2["profiles"]) == 3
    assert a2["a"] == pytest.approx(0.28 / (0.34 + 0.28), abs=0.02)
    fit = {"runs": len(runs), "approach3": {**CHINCHILLA, "compute": 1e20, "n_opt": 1.0,
                                            "d_opt": 1.0, "tokens_per_param": 1.0},
           "approach2": a2}
    assert "left out, no valley among their sizes: C = 3e+17" in fitting.summary(fit)
    with pytest.raises(FitError, match="no valley inside the profiles at C = 3e\\+17"):
        fit_isoflops(n[-4:], d[-4:], loss[-4:], flops[-4:])


def test_a_planned_budget_groups_the_profiles():
    runs = [{"params": 1e6, "tokens": 1e8, "loss": 3.0, "flops": 6.0e14, "budget": 6e14},
            {"params": 2e6, "tokens": 5.3e7, "loss": 3.0, "flops": 6.4e14, "budget": 6e14},
            {"params": 4e6, "tokens": 2.5e7}]
    assert profile_compute(runs).tolist() == [6e14, 6e14, 6 * 4e6 * 2.5e7]


def test_a_resample_that_diverges_is_left_out_not_raised():
    # Seven runs of the default CPU sweep (docs/scaling.md), those of 600 steps or more: one of
    # their 100 resamples without embeddings runs a constant off to infinity.
    rows = [(147552, 16480, 6668288, 4.0069), (233616, 37008, 4169728, 3.9143),
            (381248, 119104, 2609152, 3.8644), (233616, 37008, 13905920, 3.6079),
            (381248, 119104, 8699904, 3.5077), (614880, 221664, 5443584, 3.4714),
            (976200, 484680, 3403776, 3.5498)]
    runs = [{"params": p, "params_nonembed": q, "tokens": d, "loss": loss}
            for p, q, d, loss in rows]
    fit = fitting.fit_runs(runs, rounds=100, seed=0)  # raised OverflowError before
    kept = fit["nonembedding"]["approach3"]
    assert 90 <= kept["bootstrap_rounds"] <= 100  # 99 here; the count can move by machine
    assert all(np.isfinite(list(s.values())).all() for s in kept["samples"])
