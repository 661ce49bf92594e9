"""`llmos report RUN`: the report card of a run directory, in Markdown and in HTML.

It reads only what the stages left in the run directory (DESIGN.md, "Run directory"):

    config.json         the resolved run config          metrics.jsonl   every stage's log lines
    <stage>/llmos.json  each checkpoint's stage, parent, step, tokens and final metrics
    <stage>/evals/*.json  `llmos eval` results          arena/battles.jsonl  arena votes
    timings.json        seconds per speedrun stage       samples.md, conversations.md
    scaling/            a sweep (`llmos scaling sweep --out RUN/scaling`): its fit and runs

and writes report.md, report.html (self-contained: pictures inlined) and report-loss.png.
Anything missing is left out of the card with a line saying so, never guessed.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import re
import time
from pathlib import Path

import torch

from llmos import plots, run_log
from llmos.evals import battles as battles_
from llmos.evals import (
    behaviour,
    judge_spread,
    knowledge_qa,
    paired,
    ratings,
    redteam_card,
    system2,
)
from llmos.evals.intervals import wilson
from llmos.scaling import card as scaling_card

STAGE_ORDER = ["pretrain", "sft", "reward", "dpo", "rl"]


# ---- what the run left --------------------------------------------------------------------


def checkpoints(run: Path) -> list[tuple[str, dict]]:
    """(folder name, llmos.json) of every checkpoint directly in the run, in pipeline order:
    parents before children, then by stage. Folders set aside by the speedrun are skipped."""
    found = []
    for d in sorted(run.iterdir()):
        info_file = d / "llmos.json"
        if d.is_dir() and info_file.exists() and ".previous-" not in d.name:
            found.append((d.name, json.loads(info_file.read_text())))

    def rank(item):
        stage = item[1].get("stage", "")
        return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), item[0])
    return sorted(found, key=rank)


def eval_results(ckpt: Path) -> dict[str, dict]:
    """task -> the newest `llmos eval` result for it in ckpt/evals/ (without the items)."""
    out: dict[str, dict] = {}
    for path in sorted((ckpt / "evals").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for name, r in data.get("results", {}).items():
            r = {k: v for k, v in r.items() if k != "items"} | {
                "created": data.get("created", ""), "limit": data.get("limit"),
                "shots": data.get("shots", 0), "file": path.name}
            if name not in out or r["created"] >= out[name]["created"]:
                out[name] = r
    return out


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    memory = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f"{kb / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "gpus": gpus or None,
            "python": platform.python_version(), "torch": torch.__version__,
            "os": platform.platform()}


# ---- the card -----------------------------------------------------------------------------


def loss_plot(lines: list[dict], out: Path) -> Path | None:
    """Train (and validation) loss per stage, one panel each."""
    stages = list(dict.fromkeys(x["stage"] for x in lines if "stage" in x))
    if not stages:
        return None
    fig, axes = plots.pyplot().subplots(1, len(stages), figsize=(4.2 * len(stages), 3.2),
                                        squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [x for x in lines if x.get("stage") == stage]
        for key, style in (("loss", "-"), ("val_loss", "o-")):
            pts = [(x["step"], x[key]) for x in rows if key in x and "step" in x]
            if pts:
                ax.plot(*zip(*pts), style, label=key.replace("_", " "), markersize=3)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("loss (nats/token)")
    fig.tight_layout()
    return plots.save(fig, out)


def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def eval_table(run: Path, ckpts: list[tuple[str, dict]]) -> str:
    """Rows: the metrics every stage logged and every `llmos eval` task; a column per
    checkpoint, so base -> SFT -> DPO/RL read side by side."""
    names = [n for n, info in ckpts if info.get("stage") != "reward"]
    cells: dict[str, dict[str, object]] = {}
    for name in names:
        metrics = dict(next(info for n, info in ckpts if n == name).get("metrics", {}))
        for key, v in metrics.items():
            # Losses are on each stage's own data, not comparable across stages: they are in
            # the stages table instead.
            if (isinstance(v, float) and key not in ("train_loss", "val_loss", "heldout_seconds")
                    and not key.endswith("_f1")):
                cells.setdefault(key, {})[name] = v
        for task, r in eval_results(run / name).items():
            limited = r["limit"] and r.get("kind") != "bpb"  # bpb reads every val window
            label = (f"eval {task}" + (f" {r['primary']}" if r["primary"] != task else "")
                     + (f" (limit {r['limit']})" if limited else ""))
            cells.setdefault(label, {})[name] = r["metrics"].get(r["primary"])
    if not cells:
        return "_No evaluations found._"
    rows = [[key] + [cells[key].get(n) for n in names] for key in cells]
    return table(["metric"] + names, rows)


def arena_section(run: Path) -> str:
    path = run / "arena" / "battles.jsonl"
    if not path.exists():
        return "_No arena battles in this run._"
    votes, skips = battles_.read_battles(path, strict=False)
    battles, _dropped = battles_.filter_battles(votes)  # the votes `llmos arena` counts
    if not battles:
        return f"_The battles file {path.name} holds no battles that count._"
    board = ratings.leaderboard(battles, rounds=200, seed=0)
    rows = [[r["rank"], r["model"], f"{r['elo']:.0f}", f"{r['rating']:.0f}",
             f"{r['ci_lo']:.0f} - {r['ci_hi']:.0f}", f"{r['wins']}/{r['ties']}/{r['losses']}"]
            for r in board]
    note = f"\n\n{len(battles)} of {len(votes)} battles counted, from `{path.relative_to(run)}`" + (
        f" ({len(skips)} malformed lines skipped)" if skips else "") + "."
    return table(["rank", "model", "Elo", "Bradley-Terry", "95% interval", "won/tied/lost"],
                 rows) + note


def scan_section(run: Path) -> str:
    """What `llmos data scan` found in the run's corpus (RUN/scan.json, docs/security.md)."""
    path = run / "scan.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    n, k = r["documents"], len(r["flagged"])
    lo, hi = wilson(k, n)
    clusters = r["near_duplicate_clusters"]
    dup = r["settings"]["dup_cluster"]
    lines = [f"{k} of {n:,} documents flagged ({100 * k / n:.2f}%, 95% interval "
             f"[{100 * lo:.2f}%, {100 * hi:.2f}%]) in {r['seconds']:.0f} s. Triggers found: "
             + (", ".join(f"`{t['ngram']}` ({t['jumps']} of {t['documents']} documents)"
                          for t in r["triggers"][:5]) or "none") + ". Near-duplicate clusters: "
             f"{len(clusters)} ({sum(map(len, clusters))} documents; those of {dup} or more are "
             "flagged)."]
    if r["flagged"]:
        lines += ["", table(["document", "reasons"], [[f["source"], "; ".join(f["reasons"])]
                                                     for f in r["flagged"][:20]])]
    return "\n".join(lines)


def markdown(run: Path) -> str:
    run = run.resolve()
    ckpts = checkpoints(run)
    lines = run_log.read(run / "metrics.jsonl")
    hw = hardware()
    timings = {}
    if (run / "timings.json").exists():
        timings = json.loads((run / "timings.json").read_text())
    parts = [f"# Report card: {run.name}", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M')} by `llmos report {run}`.", ""]
    parts += ["## Hardware", "",
              table(["", "this machine"], [[k, v] for k, v in hw.items() if v]), ""]
    if timings:
        rows = [[stage, f"{s:.0f} s"] for stage, s in timings.get("stages", {}).items()]
        total = timings.get("total_s", sum(timings.get("stages", {}).values()))
        rows.append(["**total**", f"{total:.0f} s"])
        parts += ["## Time", "", table(["stage", "wall time"], rows), ""]
    scanned = scan_section(run)
    if scanned:
        parts += ["## Data: poisoning scan", "", scanned, ""]
    parts += ["## Stages", ""]
    if ckpts:
        rows = []
        for name, info in ckpts:
            cfg = info.get("config") or {}
            model = cfg.get("model", {})
            shape = (f"dim {model.get('dim')}, {model.get('n_layers')} layers"
                     if model else "")
            m = info.get("metrics", {})
            rows.append([name, info.get("stage"), info.get("parent") or "-", info.get("step"),
                         info.get("tokens_seen"), shape, m.get("train_loss"), m.get("val_loss"),
                         "yes" if info.get("final") else "no (stopped early)"])
        parts += [table(["checkpoint", "stage", "parent", "steps", "tokens", "model",
                         "train loss", "held-out loss", "finished"], rows),
                  "", "Losses are on each stage's own data (text, conversations, "
                  "comparisons), so they compare within a stage only.", ""]
        for name, info in ckpts:
            cfg = info.get("config") or {}
            section = {"pretrain": "train"}.get(info.get("stage"), info.get("stage"))
            shown = cfg.get(section) if isinstance(cfg.get(section), dict) else cfg
            parts += [f"<details><summary>{name}: config ({section})</summary>", "",
                      "```json", json.dumps(shown, indent=1, default=str), "```", "",
                      "</details>", ""]
    else:
        parts += ["_No checkpoints in this run yet._", ""]
    plot = loss_plot(lines, run / "report-loss.png")
    parts += ["## Loss curves", "", f"![loss curves]({plot.name})" if plot else
              "_No metrics.jsonl in this run._", ""]
    parts += ["## Evaluation", "", eval_table(run, ckpts), ""]
    behaved = behaviour.card_section(
        {name: eval_results(run / name).get("behaviour") for name, _ in ckpts}, table)
    if behaved:
        parts += ["## Behaviour: failures in the assistant's own answers", "", behaved, ""]
    changed = paired.card_section(run, [name for name, _ in ckpts], table)
    if changed:
        parts += ["## What a stage changed, question by question", "", changed, ""]
    judged = judge_spread.card_section(run, [name for name, _ in ckpts], table)
    if judged:
        parts += ["## Win rate by judge", "", judged, ""]
    thinking = system2.card_section(run, [name for name, _ in ckpts], table)
    if thinking:
        parts += ["## System 2: accuracy against inference compute", "", thinking, ""]
    looked_up = knowledge_qa.card_section(run, [name for name, _ in ckpts], table)
    if looked_up:
        parts += ["## Knowledge: answers from retrieval", "", looked_up, ""]
    attacked = redteam_card.card_section(run)
    if attacked:
        parts += ["## Red team: attacks and defenses", "", attacked, ""]
    parts += ["## Arena", "", arena_section(run), ""]
    scaling = scaling_card.section(run, table)
    if scaling:
        parts += ["## Scaling laws", "", scaling, ""]
    for title, file in (("Samples from the base model", "samples.md"),
                        ("Conversations with the assistant", "conversations.md"),
                        ("The stdlib helper, served", "knowledge.md")):
        if (run / file).exists():
            body = (run / file).read_text().split("\n", 1)[-1]  # drop the file's own title
            parts += [f"## {title}", "", body.strip(), ""]
    return "\n".join(parts)


def html(md: str, run: Path) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)

    def inline(m):  # pictures travel inside the page
        path = run / m.group(1)
        if not path.exists():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'
    body = re.sub(r'src="([^":]+\.png)"', inline, body)
    title = md.splitlines()[0].lstrip("# ")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            "body{font:15px/1.5 system-ui,sans-serif;max-width:1000px;margin:2em auto;"
            "padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
            "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
            "pre{background:#f6f6f6;padding:.6em;overflow-x:auto}img{max-width:100%}"
            f"</style></head><body>{body}</body></html>")


def write(run: str | Path) -> tuple[Path, Path]:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run directory")
    md = markdown(run)
    (run / "report.md").write_text(md)
    (run / "report.html").write_text(html(md, run))
    return run / "report.md", run / "report.html"
