"""Held-out assistant tasks: ask each held-out question, let the model answer (tools in the
loop), and score the final answer against the gold one (`llmos.envs.verifiers.score`).

    task        correct when the final answer ...
    arithmetic  contains the exact result as a number (with the calculator)
    mental      as arithmetic, asked without tools (the question rules the calculator out)
    mental2     as mental, for two 2-digit numbers
    python      contains the program's exact output
    signature   contains the signature
    docstring   overlaps the docstring's first sentence with word F1 >= 0.5 (mean F1 reported)
    followup    as docstring, for the follow-up's answer
    identity    says it is llmos

Also measured over every turn: the share of well-formed turns (ended by <|im_end|>, no
malformed tool call) and of valid tool calls (parsed, a known tool, accepted arguments).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace

from llmos.agent.loop import engine_stream, respond
from llmos.agent.tools import BUILTIN_TOOLS
from llmos.data.records import Conversation, prompt_of
from llmos.envs.verifiers import FREE_TEXT_TASKS, passed, score
from llmos.evals.own_samples import sample_seed
from llmos.infer.batching import map_concurrently
from llmos.infer.engine import Engine, SamplingParams

# Questions answered at once: each runs the agent loop in its own thread on one continuous-
# batching scheduler, so their decoding steps share one forward pass.
CONCURRENT = 16


def run_items(model, tok, conversations: list[Conversation], tools=None,
              max_new_tokens: int = 128, concurrent: int = CONCURRENT,
              sampling: SamplingParams | None = None) -> list[dict]:
    """Answer each conversation, greedily unless `sampling` is given (used as is, its
    max_new_tokens included); one record per item with everything needed to audit. A seeded
    `sampling` gives each item its own seed, from that seed and the item's prompt
    (own_samples.sample_seed), so a sampled answer does not depend on the other items.
    With `concurrent` > 1 the answers are decoded together (infer/batching.py); a greedy or
    seeded answer is the same alone or in company. Sampled answers always go through the
    batching scheduler: the single-stream engine draws other tokens from the same seed."""
    base = sampling or SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)

    def params(c: Conversation) -> SamplingParams:
        if base.temperature <= 0 or base.seed is None:
            return base
        return replace(base, seed=sample_seed(base.seed, prompt_of(c), 0))

    if base.temperature <= 0 and (concurrent <= 1 or len(conversations) <= 1):
        generate = engine_stream(Engine(model))
        return [_answer(generate, tok, c, params(c), tools) for c in conversations]
    return map_concurrently(model, lambda stream, c: _answer(stream, tok, c, params(c), tools),
                            conversations, max(1, concurrent), name="eval")


def _answer(generate, tok, conv: Conversation, params: SamplingParams, tools) -> dict:
    """One question through the agent loop: its record, with the whole transcript."""
    events = list(respond(generate, tok, prompt_of(conv), params, tools=tools))
    turns = [e for e in events if e.kind == "turn"]
    finish = events[-1].data["finish_reason"]
    answer = turns[-1].data.get("content", "") if turns else ""
    calls = sum(e.kind == "tool_call" for e in events)
    errors = sum(e.kind == "error" for e in events)
    # A valid call parsed, named a known tool and passed its argument checks; a program
    # that raises inside the Python tool was still a valid call.
    ok_results = sum(e.kind == "tool_result" and not e.text.startswith("error: ")
                     for e in events)
    return {
        "task": conv.task, "subject": conv.subject, "expected": conv.answer,
        "question": prompt_of(conv)[-1]["content"], "answer": answer,
        "score": score(conv.task, conv.answer, answer),
        "turns": len(turns), "malformed_turns": errors + (finish == "length"),
        "tool_calls": calls + errors, "valid_tool_calls": ok_results, "finish": finish,
        "transcript": [e.data for e in events if e.kind in ("turn", "tool_result")],
    }


# Asked with no tools offered: the question rules the calculator out.
NO_TOOL_TASKS = ("mental", "mental2")
# Asked only where their tool is offered: a lookup needs a knowledge base (evals/knowledge_qa.py).
TOOL_TASKS = {"lookup": "search_knowledge"}


def plan(heldout: list[Conversation], limit: int,
         tools: dict | None = None) -> list[Conversation]:
    """The items `evaluate` asks, in its order: up to `limit` spread evenly over the tasks
    (at least one of each), the tool tasks first, then those asked without tools; a task whose
    tool is not in `tools` (default: the built-in ones) is left out. A question
    is asked once: the held-out identity items are a few questions each answered several ways,
    and counting one question many times would let it outweigh the rest."""
    tools = BUILTIN_TOOLS if tools is None else tools
    by_task: dict[str, list[Conversation]] = defaultdict(list)
    asked = set()
    for c in heldout:
        needed = TOOL_TASKS.get(c.task)
        if needed and needed not in tools:
            continue
        question = json.dumps(prompt_of(c), sort_keys=True)
        if c.answer and question not in asked:
            asked.add(question)
            by_task[c.task].append(c)
    per_task = max(1, limit // max(1, len(by_task)))
    order = sorted(by_task, key=lambda task: (task in NO_TOOL_TASKS, task))
    return [c for task in order for c in by_task[task][:per_task]]


def evaluate(model, tok, heldout: list[Conversation], limit: int = 200,
             tools: dict | None = None, sampling: SamplingParams | None = None) -> dict:
    """Task accuracy on up to `limit` held-out items (spread evenly over tasks), arithmetic
    without the calculator included; `tools` default to the built-in ones; greedy answers
    unless `sampling` (run_items). Returns {"summary": {...}, "items": [...]}."""
    t0 = time.perf_counter()
    tools = BUILTIN_TOOLS if tools is None else tools
    chosen = plan(heldout, limit, tools)
    items = run_items(model, tok, [c for c in chosen if c.task not in NO_TOOL_TASKS],
                      tools=tools, sampling=sampling)
    # Format and tool-call quality are measured where the tools exist (without them, every
    # calculator call is "unknown tool" by design).
    turns = sum(r["turns"] for r in items)
    calls = sum(r["tool_calls"] for r in items)
    summary: dict = {
        "well_formed_turns": 1 - sum(r["malformed_turns"] for r in items) / max(turns, 1),
        "valid_tool_calls": (sum(r["valid_tool_calls"] for r in items) / calls
                             if calls else float("nan")),
        "tool_calls": calls,
    }
    items += run_items(model, tok, [c for c in chosen if c.task in NO_TOOL_TASKS], tools={},
                       sampling=sampling)

    for task in sorted({r["task"] for r in items}):
        rs = [r for r in items if r["task"] == task]
        if task in FREE_TEXT_TASKS:
            summary[f"{task}_f1"] = sum(r["score"] for r in rs) / len(rs)
        summary[f"{task}_acc"] = sum(passed(task, r["score"]) for r in rs) / len(rs)
        summary[f"{task}_n"] = len(rs)
    summary["items"] = len(items)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return {"summary": summary, "items": items}
