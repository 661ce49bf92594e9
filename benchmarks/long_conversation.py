"""A conversation several times longer than the context window (issue 20: 4x, no error, and
what is kept still answered). One chat of held-out questions with checkable answers (calculator
arithmetic, sums without the calculator, Python questions), asked one after another in the same
conversation until it holds --times the model's context, answered

- with the kernel loop's context budget (agent/context.py: old tool outputs, then old turns give
  way, and the loop says so), and
- without it (the engine keeps the newest context-length tokens of the prompt, cutting the
  system message and the chat format's start wherever the cut falls).

Accuracy is reported for the turns before the conversation outgrew the window and after.

    python benchmarks/long_conversation.py --model runs/cpu-tiny/sft

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from llmos import chat_format, checkpoint
from llmos import tokenizer as tk
from llmos.agent.context import ContextBudget
from llmos.agent.loop import engine_stream, respond
from llmos.agent.tools import BUILTIN_TOOLS
from llmos.data.builtin.assistant import assistant_dataset
from llmos.data.records import prompt_of
from llmos.envs.verifiers import passed, score
from llmos.evals.intervals import wilson
from llmos.infer.engine import Engine, SamplingParams

TASKS = ("arithmetic", "mental", "python")


def questions() -> list:
    _, heldout = assistant_dataset()
    by_task = {t: [c for c in heldout if c.task == t and len(prompt_of(c)) == 1] for t in TASKS}
    mixed = [c for group in zip(*by_task.values()) for c in group]
    return mixed


def run(model, tok, items, budget: ContextBudget | None, times: float,
        conversations: int) -> dict:
    """`conversations` chats, each going on until it holds `times` contexts."""
    rows, notes, errors, lengths = [], 0, 0, []
    start = 0
    for _ in range(conversations):
        r, n, e, length, used = one_chat(model, tok, items[start:], budget, times)
        rows, notes, errors = rows + r, notes + n, errors + e
        lengths.append(length)
        start += used
    out = {"conversations": conversations, "turns": len(rows), "errors": errors,
           "context_events": notes, "min_conversation_tokens": min(lengths),
           "finish_length": sum(r["finish"] == "length" for r in rows)}
    for key, outgrown in (("before", False), ("after", True)):
        oks = [r["ok"] for r in rows if r["outgrown"] == outgrown]
        lo, hi = wilson(sum(oks), len(oks))
        out[key] = {"accuracy": round(sum(oks) / max(1, len(oks)), 3), "n": len(oks),
                    "ci": [round(lo, 3), round(hi, 3)]}
    return out


def one_chat(model, tok, items, budget: ContextBudget | None, times: float):
    generate = engine_stream(Engine(model))
    params = SamplingParams(max_new_tokens=64, temperature=0.0)
    context = model.cfg.max_seq_len
    history: list[dict] = []
    rows, notes, errors, used = [], 0, 0, 0
    for conv in items:
        used += 1
        history.append(prompt_of(conv)[0])
        length = len(chat_format.render(tok, history).ids)
        try:
            events = list(respond(generate, tok, history, params, tools=BUILTIN_TOOLS,
                                  window=budget))
        except Exception as e:  # noqa: BLE001 - counted: the target is none
            errors += 1
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            history.pop()
            continue
        notes += sum(e.kind == "context" for e in events)
        done = events[-1].data
        history += done["messages"]
        answer = [e.data for e in events if e.kind == "turn"][-1].get("content", "")
        rows.append({"outgrown": length > context, "ok": passed(
            conv.task, score(conv.task, conv.answer, answer)), "finish": done["finish_reason"]})
        if length > times * context:
            break
    return rows, notes, errors, len(chat_format.render(tok, history).ids), used


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/cpu-tiny/sft")
    ap.add_argument("--times", type=float, default=4.0, help="conversation length in contexts")
    ap.add_argument("--conversations", type=int, default=10, help="chats (default 10)")
    args = ap.parse_args(argv)
    model = checkpoint.load_model(args.model).eval()
    tok = tk.load(args.model)
    items = questions()
    context = model.cfg.max_seq_len
    t0 = time.perf_counter()
    fitted = run(model, tok, items, ContextBudget(context, context // 4), args.times,
                 args.conversations)
    cut = run(model, tok, items, None, args.times, args.conversations)
    print(json.dumps({"bench": "long_conversation", "model": args.model, "context": context,
                      "times": args.times, "with_budget": fitted, "engine_truncation": cut,
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
