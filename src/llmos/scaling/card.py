"""The report card's scaling section: a sweep's fit, its picture, its runs and the checks of
its predictions, read from the sweep's folder (RUN/scaling/, or RUN itself when RUN is one)."""

from __future__ import annotations

import json
from pathlib import Path

from llmos import run_log
from llmos.scaling.fitting import summary


def sweep_folder(run: Path) -> Path | None:
    for folder in (run / "scaling", run):
        if (folder / "sweep.json").exists():
            return folder
    return None


def section(run: Path, table) -> str | None:
    """Markdown for the card (`table` draws a table), or None when the run has no sweep."""
    folder = sweep_folder(run)
    if folder is None:
        return None
    where = folder.relative_to(run).as_posix() if folder != run else "."
    rows = run_log.read(folder / "runs.jsonl")
    parts = [("From this sweep" if folder == run else f"From the sweep in `{where}`")
             + " (`llmos scaling sweep`, docs/scaling.md)."]
    if (folder / "fit.json").exists():
        fit = json.loads((folder / "fit.json").read_text())
        parts += ["", "```", summary(fit), "```"]
        if (folder / "fit.png").exists():
            parts += ["", f"![scaling fit]({(Path(where) / 'fit.png').as_posix()})"]
    else:
        parts += ["", "_No fit yet: the sweep has not finished (`llmos scaling collect`, then "
                  "`llmos scaling fit`)._"]
    checks = run_log.read(folder / "checks.jsonl")
    if checks:
        parts += ["", "Predictions checked by training the run (`llmos scaling predict "
                  "--check`):", "", table(
                      ["run", "parameters (without embeddings)", "tokens", "predicted loss",
                       "measured loss", "error"],
                      [[c["name"], f"{c['params']:,} ({c['params_nonembed']:,})",
                        f"{c['tokens']:,}",
                        f"{c['predicted']:.4f}", f"{c['loss']:.4f}",
                        f"{100 * c['relative_error']:+.2f}%"] for c in checks])]
    if rows:
        parts += ["", table(["run", "parameters (without embeddings)", "tokens", "C = 6ND",
                             "val loss", "val bpb"],
                            [[r["name"], f"{r['params']:,} ({r['params_nonembed']:,})",
                              f"{r['tokens']:,}", f"{r['flops']:.3g}", f"{r['loss']:.4f}",
                              f"{r['bpb']:.4f}"] for r in rows])]
    return "\n".join(parts)
