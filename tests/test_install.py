"""An install as people make one: the wheel this checkout builds, installed with its
`[speedrun]` extra into a fresh virtual environment, runs a short speedrun from a folder outside
the checkout, so a file the wheel forgets (a preset, a migration, a page) or a dependency only
the Makefile installs fails here rather than on a user's machine.

It makes a virtual environment and installs a hundred packages (from pip's cache where it can),
a few minutes: it runs where LLMOS_TEST_WHEEL=1, which .ci/run sets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import TINY, TINY_PAIRS, TINY_SFT

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("LLMOS_TEST_WHEEL") != "1",
    reason="installs the wheel into a fresh venv (minutes); set LLMOS_TEST_WHEEL=1, as CI does")]


def run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if out.returncode:  # pip's "location ignored" warnings would hide the error
        err = "\n".join(x for x in out.stderr.splitlines() if not x.startswith("WARNING"))
        pytest.fail(f"{cmd}\n{out.stdout[-3000:]}\n{err[-3000:]}")
    return out


def test_the_wheel_installs_and_runs_the_speedrun(tmp_path, corpus_dir):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", dist, ROOT], timeout=600)
    (wheel,) = dist.glob("llmos-*.whl")
    run([sys.executable, "-m", "venv", venv])
    # pip resolves the rest as it would for a user; torch alone is pinned to the build this venv
    # has (the CPU one on disk: an open range would take a CUDA build of several GB).
    import torch

    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    run([venv / "bin" / "pip", "install", "-q", "-c", constraints, f"{wheel}[speedrun]"],
        timeout=1800)

    # The installed package, not the checkout: run from elsewhere, with no src/ on the path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([venv / "bin" / "python", "-c", "import llmos; print(llmos.__file__)"],
                cwd=work, env=env).stdout
    assert str(venv) in where and str(ROOT) not in where
    chats = work / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is alpha_{i}?"},
        {"role": "assistant", "content": f"The beta of gamma {i}."}]}) + "\n" for i in range(12)))
    out = run([venv / "bin" / "llmos", "speedrun", "--name", "sr", "--runs-dir", work / "runs",
               "--source", corpus_dir, *TINY, *TINY_SFT, *TINY_PAIRS,
               "--set", f"sft.sources={chats}",
               "--set", f"speedrun.knowledge_sources={corpus_dir}"],
              cwd=work, env=env, timeout=900)
    assert "=== speedrun summary ===" in out.stdout
    run_dir = work / "runs" / "sr"
    assert (run_dir / "report.md").exists() and (run_dir / "report.html").exists()
    assert json.loads((run_dir / "dpo" / "llmos.json").read_text())["final"]
