"""`llmos report RUN`: the report card reads what a run left and shows it, nothing invented."""

from __future__ import annotations

import json

from conftest import tiny_config

from llmos import checkpoint, cli
from llmos.evals import harness, report
from llmos.train import pretrain


def test_report_card_of_a_real_tiny_run(tmp_path, corpus_dir, capsys):
    cfg = tiny_config(tmp_path, corpus_dir, name="r")
    base = pretrain.run(cfg)
    run = cfg.run_dir
    # A real evaluation of the checkpoint, as `llmos eval` writes it.
    result = harness.evaluate(base, ["bpb"], log=lambda *_: None)
    harness.write(result, harness.default_out(base, ["bpb"], 0, None))
    # Arena votes: "strong" wins every battle against two others.
    (run / "arena").mkdir()
    lines = []
    for i in range(30):
        other = ["weak", "weaker"][i % 2]
        a_first = i % 4 < 2
        lines.append(json.dumps({"model_a": "strong" if a_first else other,
                                 "model_b": other if a_first else "strong",
                                 "winner": "model_a" if a_first else "model_b", "anony": True}))
    lines.append("{not json")  # a malformed line is skipped and counted, not fatal
    (run / "arena" / "battles.jsonl").write_text("\n".join(lines) + "\n")
    (run / "timings.json").write_text(json.dumps({"stages": {"pretrain": 12.5}}))

    cli.main(["report", str(run)])
    assert "report.html" in capsys.readouterr().out
    md = (run / "report.md").read_text()
    info = checkpoint.read_info(base)
    assert f"| base | pretrain | - | {info['step']:,} |" in md
    assert f"{info['metrics']['val_loss']:.4f}" in md  # the stages table
    bpb = result["results"]["bpb"]["metrics"]["bpb"]
    assert f"| eval bpb | {bpb:.4f} |" in md  # the evaluation table
    arena = md.split("## Arena")[1]
    assert arena.index("strong") < arena.index("weak")  # wins everything: ranked first
    assert "| 1 | strong |" in arena and "30 of 30 battles counted" in arena
    assert "1 malformed lines skipped" in arena
    assert "| pretrain | 12 s |" in md or "| pretrain | 13 s |" in md
    assert (run / "report-loss.png").stat().st_size > 1000
    page = (run / "report.html").read_text()
    assert "data:image/png;base64," in page and "report-loss.png" not in page  # self-contained
    assert "<table>" in page


def test_report_of_an_empty_or_missing_run(tmp_path):
    md, page = report.write(tmp_path)
    text = md.read_text()
    assert "_No checkpoints in this run yet._" in text
    assert "_No arena battles in this run._" in text
    import pytest

    with pytest.raises(FileNotFoundError, match="not a run directory"):
        report.write(tmp_path / "nope")
