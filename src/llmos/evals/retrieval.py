"""How well a knowledge base over the standard library finds the right chunk: recall@k on
questions about held-out stdlib functions and methods (those the assistant was never finetuned
on), phrased differently from the assistant set's questions.

Two kinds of question per subject:
- "named": the function is named, in words the training questions never use ("I'm reading
  code that calls textwrap.dedent. What is it for?");
- "described": only its module is named and the rest is its docstring's first sentence turned
  into a question ("Which function in textwrap would remove any common leading whitespace from
  every line in text?") — retrieval by meaning, which keywords alone find less often.

A hit is a chunk titled with the subject's qualified name: the chunk of the right module that
holds the definition.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from llmos.data.builtin.stdlib_api import stdlib_api
from llmos.data.builtin.turns import is_heldout
from llmos.evals.intervals import wilson

NAMED = ("I'm reading code that calls {n}. What is it for?",
         "How would I use {n} in my program?",
         "Tell me about {short} from the {module} module.",
         "When should I reach for {n}?",
         "Give me a quick overview of {n}, please.")
DESCRIBED = ("Which function in {module} would {what}",
             "In the {module} module, what can I call to {what}",
             "Is there something in {module} to {what}")


@dataclass(frozen=True)
class Question:
    kind: str  # "named" or "described"
    subject: str  # the qualified name a hit's chunk is titled with
    text: str


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[1:2].islower() or len(s) == 1 else s


def questions(n: int | None = None, seed: int = 0) -> list[Question]:
    """n held-out functions and methods (default: all 336 of Python 3.11's), each asked both
    ways (2n questions); the seed picks the subjects and the phrasings."""
    entries = [e for e in stdlib_api() if e.kind in ("function", "method") and is_heldout(e.name)]
    rng = random.Random(seed)
    chosen = rng.sample(entries, min(n or len(entries), len(entries)))
    out = []
    for e in chosen:
        short = e.name.rsplit(".", 1)[-1]
        out.append(Question("named", e.name, rng.choice(NAMED).format(
            n=e.name, short=short, module=e.module)))
        what = _lower_first(e.summary.rstrip(".")) + "?"
        out.append(Question("described", e.name, rng.choice(DESCRIBED).format(
            module=e.module, what=what)))
    return out


def recall(kb, items: list[Question], k: int = 5, mode: str = "hybrid") -> dict:
    """recall@k per question kind with its 95% interval, and search time per query."""
    if not items:
        raise ValueError("no questions to ask")
    found: dict[str, list[bool]] = {}
    times = []
    misses = []
    for q in items:
        t = time.perf_counter()
        hits = kb.search(q.text, k, mode)
        times.append(time.perf_counter() - t)
        ok = any(h.title == q.subject for h in hits)
        found.setdefault(q.kind, []).append(ok)
        if not ok and len(misses) < 10:
            misses.append({"question": q.text, "subject": q.subject,
                           "got": [h.title for h in hits]})
    rows = {}
    for kind, oks in sorted(found.items()):
        lo, hi = wilson(sum(oks), len(oks))
        rows[kind] = {"recall": round(sum(oks) / len(oks), 4), "n": len(oks),
                      "ci": [round(lo, 4), round(hi, 4)]}
    every = [ok for oks in found.values() for ok in oks]
    lo, hi = wilson(sum(every), len(every))
    return {"k": k, "mode": mode, "all": {"recall": round(sum(every) / len(every), 4),
                                          "n": len(every), "ci": [round(lo, 4), round(hi, 4)]},
            **rows, "median_ms": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 1),
            "misses": misses}
