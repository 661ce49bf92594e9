"""The red-team run's files: every attempt as a JSON line, the rates as JSON, and an HTML page a
person reads (garak's report as the model: a table of families, then each probe).

    write_reports(result, Path("runs/redteam"))
    # attempts.jsonl  one line per answer: family, probe, defense, success, answer, ...
    # report.json     {"target", "policy", "generations", "summary": {family: {defense: ...}}}
    # report.html
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

from llmos.evals import redteam_card
from llmos.safety.redteam import Result, summarize


def write_reports(result: Result, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "attempts.jsonl", "w", encoding="utf-8") as f:
        for a in result.attempts:
            f.write(json.dumps(a, ensure_ascii=False) + "\n")
    report = {"target": result.target, "policy": result.policy, "tasks": result.tasks,
              "settings": asdict(result.settings), "seconds": result.seconds,
              "summary": summarize(result), "by_probe": by_probe(result)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.html").write_text(render_html(report, result), encoding="utf-8")
    return report


def by_probe(result: Result) -> dict:
    rows: dict = {}
    for a in result.attempts:
        if a["success"] is None:
            continue
        row = rows.setdefault(f"{a['family']}/{a['probe']}", {})
        cell = row.setdefault(a["defense"], [0, 0])
        cell[0] += a["success"]
        cell[1] += 1
    return {k: {d: round(s / n, 4) for d, (s, n) in v.items()} for k, v in rows.items()}


def render_html(report: dict, result: Result) -> str:
    e = html.escape
    defenses = list(report["settings"]["defenses"])
    head = "".join(f"<th>{e(d)}</th>" for d in defenses)
    rows = []
    for family, cells in redteam_card.rows(report):
        tds = "".join("<td></td>" if c is None else
                      f"<td>{c[0]:.3f}<br><small>[{c[1]:.3f}, {c[2]:.3f}] n={c[3]}</small></td>"
                      for c in cells)
        what = "clean: answered right" if family == "clean" else f"{family}: attack success"
        rows.append(f"<tr><th>{e(what)}</th>{tds}</tr>")
    probe_rows = []
    for name, cells in report["by_probe"].items():
        tds = "".join(f"<td>{cells.get(d, ''):{'.2f' if d in cells else ''}}</td>"
                      for d in defenses)
        probe_rows.append(f"<tr><td>{e(name)}</td>{tds}</tr>")
    shown = [a for a in result.attempts if a["success"] and a["family"] != "clean"][:20]
    examples = "".join(
        f"<li><b>{e(a['family'])}/{e(a['probe'])}</b> ({e(a['defense'])}): "
        f"<pre>{e(a['answer'][:400])}</pre></li>" for a in shown)
    s = report["settings"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>llmos redteam: {e(report['target'])}</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}
pre{{white-space:pre-wrap;background:#f4f4f4;padding:.4rem}}</style></head><body>
<h1>Red team: {e(report['target'])}</h1>
<p>Policy {e(report['policy'])}; {s['generations']} generations per probe at temperature
{s['temperature']}, at most {s['max_tokens']} tokens; {report['seconds']} s. Attack success rate
(ASR) per family, with a 95% bootstrap interval over probes; the clean family is the share of
questions answered right without an attack.</p>
<table><tr><th></th>{head}</tr>{''.join(rows)}</table>
<h2>Each probe</h2><table><tr><th>probe</th>{head}</tr>{''.join(probe_rows)}</table>
<h2>Successful attacks (first 20)</h2><ul>{examples or '<li>none</li>'}</ul>
</body></html>
"""
