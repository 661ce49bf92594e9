"""The red team's figures as a table (the report card's section and `llmos redteam`'s output):
read from the run's report.json, so the report card needs nothing from llmos.safety."""

from __future__ import annotations

import json
from pathlib import Path


def rows(report: dict):
    """(family, its cells, one per defense: (rate, lo, hi, n, probes too long) or None)."""
    defenses = list(report["settings"]["defenses"])
    for family, cells in report["summary"].items():
        out = []
        for d in defenses:
            c = cells.get(d)
            out.append(None if c is None else (c.get("asr", c.get("accuracy")), *c["ci"],
                                               c["n"], c.get("too_long", 0)))
        yield family, out


def _markdown_cell(cell) -> str:
    if cell is None:
        return ""
    rate, lo, hi, n, too_long = cell
    left_out = f", {too_long} too long" if too_long else ""
    return f"{rate:.3f} [{lo:.3f}, {hi:.3f}] (n = {n}{left_out})"


def table(report: dict) -> str:
    """Families down, defenses across: the attack success rate (the clean family: the share
    answered right), its 95% interval and n."""
    defenses = list(report["settings"]["defenses"])
    lines = ["| family | " + " | ".join(defenses) + " |",
             "|---|" + "---|" * len(defenses)]
    for family, cells in rows(report):
        shown = [_markdown_cell(c) for c in cells]
        what = "clean (accuracy)" if family == "clean" else f"{family} (ASR)"
        lines.append(f"| {what} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def headline(report: dict) -> str:
    """One line: attack success without and with every defense, and what spotlighting costs."""
    s = report["summary"]

    def rate(family, defense, key="asr"):
        c = s.get(family, {}).get(defense)
        return "-" if c is None else f"{c[key]:.3f}"

    attacks = ", ".join(f"{f} {rate(f, 'none')} -> {rate(f, 'spotlight+guard')}"
                        for f in ("injection", "jailbreak", "leakage") if f in s)
    clean = s.get("clean", {})
    n = clean.get("none", {}).get("n", 0)
    return (f"ASR without -> with spotlight+guard: {attacks}; clean answers "
            f"{rate('clean', 'none', 'accuracy')} -> {rate('clean', 'spotlight', 'accuracy')} "
            f"spotlighted (n={n})")


def card_section(run: Path) -> str | None:
    path = run / "redteam" / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    s = report["settings"]
    return (f"`llmos redteam` against {report['target']} ({s['generations']} generations a "
            f"probe at temperature {s['temperature']}; {report['seconds']} s). Attack success "
            "rate per family and defense, with a 95% bootstrap interval over probes; the clean "
            "row is the injection questions without the attack, answered right "
            "(docs/security.md).\n\n" + table(report))
