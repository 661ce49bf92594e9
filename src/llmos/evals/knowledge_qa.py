"""Docstring questions with and without retrieval: the held-out subjects' "What does `x` do?",
asked once as the assistant is usually asked (from memory: pretraining is all it has) and once
under the stdlib helper's instructions with `search_knowledge` over a real knowledge base.

Per mode: accuracy (word F1 >= 0.5 against the docstring's first sentence, citations left out)
with its 95% interval and the mean F1; with retrieval also how often the model searched, how
often the search's first passage was the subject's chunk, how often the answer cited a passage
and how often it cited the subject's own chunk.
"""

from __future__ import annotations

import json
import time

from llmos.agent.knowledge_tool import NAME as TOOL_NAME
from llmos.agent.tools import BUILTIN_TOOLS, Tool
from llmos.data.builtin.lookup import cited, lookup_messages, stdlib_passages
from llmos.data.records import Conversation, prompt_of
from llmos.envs.verifiers import passed
from llmos.evals.assistant_tasks import run_items
from llmos.evals.intervals import wilson


def _rate(flags: list[bool]) -> dict:
    lo, hi = wilson(sum(flags), len(flags))
    return {"rate": round(sum(flags) / max(1, len(flags)), 4), "n": len(flags),
            "ci": [round(lo, 4), round(hi, 4)]}


def questions(heldout: list[Conversation], limit: int) -> list[Conversation]:
    """Held-out docstring questions whose subject is a chunk of builtin:stdlib, one per subject."""
    chunks, seen, out = stdlib_passages(), set(), []
    for c in heldout:
        if c.task == "docstring" and c.subject in chunks and c.subject not in seen:
            seen.add(c.subject)
            out.append(c)
    return out[:limit]


def question_of(c: Conversation) -> str:
    """The docstring question itself, without the system prompt some items start with."""
    return prompt_of(c)[-1]["content"]


def as_lookup(c: Conversation) -> Conversation:
    return Conversation(messages=lookup_messages(question_of(c)), source=c.source, task="lookup",
                        subject=c.subject, answer=c.answer)


def evaluate(model, tok, tool: Tool, heldout: list[Conversation], limit: int = 200) -> dict:
    """{"plain": {...}, "retrieval": {...}, "items": [...]} over up to `limit` subjects."""
    items = questions(heldout, limit)
    gold = {c.subject: stdlib_passages()[c.subject][0] for c in items}
    out: dict = {"n": len(items)}
    records = []
    modes = (("plain", items, BUILTIN_TOOLS),
             ("retrieval", [as_lookup(c) for c in items], {**BUILTIN_TOOLS, TOOL_NAME: tool}))
    for mode, convs, tools in modes:
        t0 = time.perf_counter()
        rs = run_items(model, tok, convs, tools=tools)
        ok = [passed(r["task"], r["score"]) for r in rs]
        row = {"accuracy": _rate(ok), "mean_f1": round(sum(r["score"] for r in rs)
                                                      / max(1, len(rs)), 4),
               "seconds": round(time.perf_counter() - t0, 1)}
        if mode == "retrieval":
            searched, found, cites, right = [], [], [], []
            for r in rs:
                results = [m["content"] for m in r["transcript"]
                           if m.get("role") == "tool" and m.get("name") == TOOL_NAME]
                searched.append(bool(results))
                found.append(any(x.startswith(f"[{gold[r['subject']]}]") for x in results))
                said = cited(r["answer"])
                cites.append(bool(said))
                right.append(gold[r["subject"]] in said)
                r["cited"], r["gold_cite"] = said, gold[r["subject"]]
            row.update(searched=_rate(searched), found=_rate(found), cited=_rate(cites),
                       cited_right=_rate(right))
        out[mode] = row
        records += [{**r, "mode": mode} for r in rs]
    out["items"] = records
    return out


def format_table(result: dict) -> str:
    def pct(d):
        return f"{100 * d['rate']:.1f}% [{100 * d['ci'][0]:.1f}, {100 * d['ci'][1]:.1f}]"

    p, r = result["plain"], result["retrieval"]
    lines = [f"docstring questions on {result['n']} held-out subjects",
             f"  from memory      {pct(p['accuracy'])}  mean F1 {p['mean_f1']:.3f}",
             f"  with retrieval   {pct(r['accuracy'])}  mean F1 {r['mean_f1']:.3f}",
             f"    searched {pct(r['searched'])}, right passage first {pct(r['found'])}",
             f"    cited {pct(r['cited'])}, cited the right chunk {pct(r['cited_right'])}"]
    return "\n".join(lines)


def _metrics(result: dict) -> dict | None:
    """The knowledge task's metrics out of an `llmos eval` result file, or None."""
    r = next((v for k, v in result.get("results", {}).items()
              if k == "knowledge" or k.startswith("knowledge:")), None)
    return r["metrics"] if r else None


def headline(result: dict) -> str:
    """One line for the speedrun summary."""
    m = _metrics(result)
    if not m:
        return "-"
    return (f"docstring questions (n={m['items']}): from memory {m['acc_plain']:.3f}, with "
            f"retrieval {m['acc']:.3f} (cited the right chunk {m['cited_right']:.3f})")


def card_section(run, names: list[str], table) -> str:
    """The report card's rows: every checkpoint's evals/knowledge*.json, memory against
    retrieval with 95% intervals ("" when there are none)."""
    rows = []
    for name in names:
        for path in sorted((run / name / "evals").glob("knowledge*.json")):
            try:
                m = _metrics(json.loads(path.read_text()))
                n = m["items"]
                cells = [(m["acc_plain"], n), (m["acc"], n), (m["cited_right"], n)]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a file being written, or from another version
            shown = []
            for rate, k in cells:
                lo, hi = wilson(round(rate * k), k)
                shown.append(f"{rate:.3f} ({lo:.3f} - {hi:.3f})")
            rows.append([name, n, *shown, f"{m['found']:.3f}"])
    if not rows:
        return ""
    return table(["checkpoint", "n", "from memory", "with retrieval", "cited the right chunk",
                  "right passage found"], rows) + (
        "\n\nHeld-out docstring questions (subjects never finetuned on), word F1 >= 0.5 "
        "against the docstring's first sentence; with retrieval the assistant calls "
        "search_knowledge over the stdlib knowledge base (docs/llm-os.md). 95% Wilson "
        "intervals.")
