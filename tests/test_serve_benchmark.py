"""benchmarks/serve_throughput.py starts its peers, drives them with requests of exact lengths,
and stops them: a short run over a tiny checkpoint, every peer that can start here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_export import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_benchmark_starts_drives_and_stops_every_peer(tmp_path):
    ckpt = make_checkpoint(tmp_path, "tied")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve_throughput.py"), "--model", str(ckpt),
         "--clients", "1,2", "--duration", "1", "--max-tokens", "8"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    rows = {r["peer"]: r for r in lines if r["benchmark"] == "serve_throughput"}
    assert set(rows) == {"llmos", "llmos-llamacpp", "llama_cpp.server", "llama-server"}
    ran = [r for r in rows.values() if "levels" in r]
    assert rows["llmos"] in ran  # the engine has no extra to miss
    for r in ran:  # every request got exactly the tokens it asked for
        for level in r["levels"].values():
            assert level["requests"] > 0, r["peer"]
            assert level["tokens"] == 8 * level["requests"], r["peer"]
    for r in rows.values():
        assert "levels" in r or r["skipped"]
    summary = lines[-1]
    assert summary["benchmark"] == "serve_throughput_summary"
    assert set(summary["ttft_p50_s"]) == {r["peer"] for r in ran}
    # nothing left running: no server of this checkpoint outlives the benchmark
    left = subprocess.run(["pgrep", "-f", str(ckpt)], capture_output=True, text=True)
    assert left.stdout.strip() == ""
