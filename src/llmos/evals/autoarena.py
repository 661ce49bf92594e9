"""Automatic arena battles (`llmos arena battle`): every contestant answers every prompt once,
then a judge compares every pair of answers on every prompt in both orders (A/B swapped, since
judges, LLM ones above all, favour a position). Each judgement is one FastChat battle record,
so the output is read by `llmos arena leaderboard` and by FastChat's own analysis.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter
from pathlib import Path

from llmos.agent.peers import answer
from llmos.data.conversations import read_conversations
from llmos.data.records import prompt_of
from llmos.data.sources import Refuse, iter_jsonl
from llmos.evals.judges import Item

HELDOUT_SPECS = ("builtin:assistant:heldout", "builtin:assistant-heldout")


def load_prompts(spec: str, limit: int | None = None) -> list[Item]:
    """Prompts from a conversations spec (a .jsonl file of {"messages": [...]} with optional
    "task"/"answer" fields, a folder, builtin:assistant:heldout, ...): each conversation up to
    its last user message. A line that only has {"prompt": "text", "answer": ...} works too."""
    if spec in HELDOUT_SPECS:
        spec = HELDOUT_SPECS[0]
    path = Path(spec)
    items = _plain_prompts(path) if path.suffix == ".jsonl" and path.is_file() else None
    if items is None:
        convs, _ = read_conversations([spec])
        items = [Item(prompt_of(c), c.task, c.answer) for c in convs]
    return items[:limit] if limit else items


def _plain_prompts(path: Path) -> list[Item] | None:
    """{"prompt": str, "answer"?: str, "task"?: str} lines, or None if the file is not that."""
    items = []
    for _, rec in iter_jsonl(path, str(path), Refuse(), bad_json="bad JSON"):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            return None
        items.append(Item([{"role": "user", "content": rec["prompt"]}],
                          str(rec.get("task", "chat")), str(rec.get("answer", ""))))
    return items


def collect_answers(contestants, items: list[Item], max_tokens: int, temperature: float,
                    seed: int | None, log=None) -> dict[str, list[str]]:
    """{contestant name: [answer per item]}; a failed answer is "" and is reported."""
    out = {}
    for c in contestants:
        t0, answers, failed = time.perf_counter(), [], 0
        for item in items:
            try:
                answers.append(answer(c, item.messages, max_tokens, temperature, seed))
            except Exception as e:  # noqa: BLE001 - one failed answer loses one battle
                failed += 1
                answers.append("")
                if log and failed <= 3:
                    log(f"  {c.name}: answer failed: {type(e).__name__}: {e}")
        out[c.name] = answers
        if log:
            log(f"{c.name}: {len(items)} answers in {time.perf_counter() - t0:.1f} s"
                + (f" ({failed} failed)" if failed else ""))
    return out


def judge_battles(items: list[Item], answers: dict[str, list[str]], judge, log=None
                  ) -> tuple[list[dict], Counter]:
    """Battle records for every pair, every prompt, both orders; and a count of outcomes
    (winners plus undecided reasons)."""
    battles, counts = [], Counter()
    t0 = time.time()
    for a, b in itertools.combinations(sorted(answers), 2):
        consistent = decided = 0
        for i, item in enumerate(items):
            seen = []  # the winner by name (or "tie") in each order
            for first, second in ((a, b), (b, a)):
                x, y = answers[first][i], answers[second][i]
                v = judge(item, x, y)
                seen.append({"model_a": first, "model_b": second}.get(v.winner, v.winner))
                if v.winner is None:
                    reason = v.note.split(":")[0] or "undecided"
                    counts[reason] += 1
                    if log and counts[reason] <= 2:  # say why, without flooding the terminal
                        said = f" (said {v.raw[:80]!r})" if v.raw else ""
                        log(f"  undecided, {v.note[:300]}{said}")
                    continue
                counts[v.winner] += 1
                battles.append({
                    "model_a": first, "model_b": second, "winner": v.winner,
                    "judge": judge.name, "turn": 1, "anony": True,
                    "tstamp": round(t0 + len(battles) * 1e-3, 3),  # keeps the order in a sort
                    "conversation_a": item.messages + [{"role": "assistant", "content": x}],
                    "conversation_b": item.messages + [{"role": "assistant", "content": y}],
                    "prompt_index": i, "judge_note": v.note,
                })
            if None not in seen:
                decided += 1
                consistent += seen[0] == seen[1]
        counts["order_consistent"] += consistent
        if log:
            log(f"judged {a} vs {b}: {len(items)} prompts x 2 orders; the same verdict in "
                f"both orders on {consistent}/{decided} decided prompts")
    return battles, counts


def write_battles(battles: list[dict], path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for b in battles:
            f.write(json.dumps(b, ensure_ascii=False) + "\n")
    tmp.replace(path)


def run(contestants, items: list[Item], judge, out, max_tokens: int = 256,
        temperature: float = 0.0, seed: int | None = 0, log=None) -> tuple[list[dict], Counter]:
    if len(contestants) < 2:
        raise ValueError("a battle needs at least two contestants")
    if not items:
        raise ValueError("no prompts to battle on")
    log = log or (lambda s: print(s, file=sys.stderr))
    answers = collect_answers(contestants, items, max_tokens, temperature, seed, log)
    battles, counts = judge_battles(items, answers, judge, log)
    write_battles(battles, out)
    return battles, counts
