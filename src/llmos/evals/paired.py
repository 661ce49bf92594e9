"""What changed between two evaluations of the same questions, task by task, with intervals.

"No task falls by more than 2 points" cannot be read off two accuracies with their own
intervals: on 400 items each moves about ±4 points, so two runs' intervals overlap even when
one model is really worse. Asked the same questions, the models' answers pair up, and the
change in accuracy has a far narrower interval than either accuracy (most items are right, or
wrong, for both). The interval here is a percentile bootstrap over the paired items.

Items pair by task and question: the assistant eval's records by (subject, expected answer,
question), a harness task's (ARC, HellaSwag, ...) by their id; the same held-out set gives the
same keys. A key asked twice (files written before records kept their question, where several
wordings share a subject) pairs its answers in the order they were asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmos.envs.verifiers import passed
from llmos.evals.text_table import aligned


def scored(items: list[dict], task: str = "", primary: str = "",
           by_question: bool = True) -> list[tuple]:
    """(task, key, right) of each item: the assistant eval's records carry their sub-task,
    subject, expected answer and score (passed at the task's mark); a harness task's items
    (ARC, HellaSwag, ...) carry an id and their result's primary metric."""
    out = []
    for item in items:
        sub = item.get("task", task)
        # knowledge's "docstring" questions are not the assistant's: named apart
        assistant = task == "assistant" or task.startswith("assistant:")
        name = f"{task}:{sub}" if task and sub != task and not assistant else sub
        key = item["id"] if "id" in item else (item.get("subject", ""),
                                               str(item.get("expected", "")),
                                               item.get("question", "") if by_question else "")
        right = passed(sub, item["score"]) if "score" in item else item.get(primary)
        if right is not None:
            out.append((name, key, float(right)))
    return out


def paired_change(pairs: list[tuple[float, float]], rounds: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of mean(after) - mean(before) over (before, after)
    pairs, resampling the pairs. (0, 0) with none."""
    if not pairs:
        return 0.0, 0.0
    diffs = np.array([a - b for b, a in pairs], dtype=np.float64)
    drawn = np.random.default_rng(seed).integers(0, len(diffs), size=(rounds, len(diffs)))
    means = np.sort(diffs[drawn].mean(axis=1))
    tail = (1 - level) / 2
    return float(means[int(tail * (rounds - 1))]), float(means[int((1 - tail) * (rounds - 1))])


def task_changes(before: list[dict], after: list[dict]) -> dict[str, dict]:
    """{task: {"before", "after", "change", "ci": [lo, hi], "n"}} of two runs of assistant
    records (`assistant_tasks.evaluate`'s items)."""
    q = asked_with_questions(before, after)
    return changes(scored(before, by_question=q), scored(after, by_question=q))


def asked_with_questions(*sides: list[dict]) -> bool:
    """Whether every record names its question (files written before records kept it do not:
    they pair by subject and expected answer alone)."""
    return all("question" in i for side in sides for i in side if "id" not in i)


def changes(before: list[tuple], after: list[tuple]) -> dict[str, dict]:
    """Per task, over the items both sides answered (`scored` rows). Items that only one side
    has are left out: a change is measured on the same questions or not at all."""
    theirs: dict[tuple, list[float]] = {}
    for task, key, right in before:
        theirs.setdefault((task, key), []).append(right)
    by_task: dict[str, list[tuple[float, float]]] = {}
    for task, key, right in after:
        olds = theirs.get((task, key))
        if olds:  # a question asked twice pairs with its own earlier answers in turn
            by_task.setdefault(task, []).append((olds.pop(0), right))
    out = {}
    for task, pairs in sorted(by_task.items()):
        n = len(pairs)
        b, a = sum(p[0] for p in pairs) / n, sum(p[1] for p in pairs) / n
        out[task] = {"before": b, "after": a, "change": a - b,
                     "ci": list(paired_change(pairs)), "n": n}
    return out


def worst_fall(changes: dict[str, dict], skip: tuple[str, ...] = ()) -> tuple[str, float] | None:
    """(task, change) of the largest fall among tasks not in `skip`, or None if none fell."""
    falls = [(t, c["change"]) for t, c in changes.items() if t not in skip and c["change"] < 0]
    return min(falls, key=lambda x: x[1]) if falls else None


def points(c: dict) -> str:
    """A change and its interval in points: '-1.2 [-3.3, +0.8]'."""
    return f"{100 * c['change']:+.1f} [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]"


def describe(changes: dict[str, dict]) -> str:
    """One line: task before -> after (change [lo, hi] pts, n)."""
    return "; ".join(f"{t} {c['before']:.3f} -> {c['after']:.3f} ({points(c)} pts, n={c['n']})"
                     for t, c in changes.items())


def read_results(path: str | Path) -> dict:
    """An `llmos eval` results file, checked before any model is loaded."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--against {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--against {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"--against {path}: not an `llmos eval` results file (no 'results')")
    return data


UNPAIRED = ("bpb", "behaviour")  # a measure over the text, or rates over samples: no right or wrong


def result_changes(before: dict, after: dict) -> dict[str, dict]:
    """Per task of two `llmos eval` results files, over every task both hold items of (the
    assistant eval's sub-tasks each on their own)."""
    out = {}
    for name, res in after["results"].items():
        old = before["results"].get(name)
        if old is None and name.startswith("assistant:"):  # one task of a whole assistant eval
            old = before["results"].get("assistant")
        if res.get("kind") in UNPAIRED:
            continue
        if old and res.get("items") and old.get("items"):
            primary = res.get("primary", "")
            q = asked_with_questions(old["items"], res["items"])
            out |= changes(scored(old["items"], name, primary, q),
                           scored(res["items"], name, primary, q))
    return out


def format_table(changes: dict[str, dict], against: str) -> str:
    if not changes:
        return (f"against {against or 'the earlier file'}: no question in common (other tasks, "
                "or another --limit?)")
    rows = [[t, f"{c['before']:.3f}", f"{c['after']:.3f}", points(c), str(c["n"])]
            for t, c in changes.items()]
    head = ["task", "before", "after", "change [95% interval], pts", "n"]
    return f"against {against or 'the earlier file'} (the same questions, paired):\n" + aligned(
        [head] + rows)


def headline(changes: dict[str, dict], practised: tuple[str, ...]) -> str:
    """'mental2 0.755 -> 0.830 (+7.5 [+4.2, +10.8] pts, n=400); the other tasks: largest fall
    session -0.7 [-4.0, +2.0] pts, n=150' (or 'none fell')."""
    shown = [f"{t} {changes[t]['before']:.3f} -> {changes[t]['after']:.3f} "
             f"({points(changes[t])} pts, n={changes[t]['n']})" for t in practised if t in changes]
    fall = worst_fall(changes, skip=practised)
    others = (f"largest fall {fall[0]} {points(changes[fall[0]])} pts, n={changes[fall[0]]['n']}"
              if fall else "none fell")
    return "; ".join(shown + [f"the other tasks: {others}"])


def card_section(run: Path, names: list[str], table) -> str:
    """For each checkpoint whose newest eval file was compared with an earlier one
    (`--against`, or the speedrun's RL check): the change of each task, paired."""
    parts = []
    for name in names:
        files = sorted((run / name / "evals").glob("*.json"), key=lambda p: p.stat().st_mtime)
        for path in reversed(files):
            try:
                against = json.loads(path.read_text()).get("against")
            except (OSError, ValueError):
                continue
            if against:
                rows = [[t, c["before"], c["after"], points(c), c["n"]]
                        for t, c in against["changes"].items()]
                parts += [f"**{name}** against {against.get('model') or against.get('file')} "
                          "(the same questions; the change with a paired 95% interval):",
                          "", table(["task", "before", "after", "change [interval], points",
                                     "n"], rows), ""]
                break
    return "\n".join(parts).strip()
