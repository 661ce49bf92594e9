"""The standard library as a knowledge base: how long the index takes to build (target <= 5
minutes on 2 cores), how often search finds the right chunk (recall@5 >= 0.9 on rephrased
questions about held-out stdlib functions, `llmos.evals.retrieval`) and how long a search takes
(median <= 50 ms). Fused search is measured against each of its rankings alone, on the same
index in the same run.

    python benchmarks/knowledge_search.py                 # builds a fresh index in a temp dir
    python benchmarks/knowledge_search.py --db runs/cpu-tiny/llmos.db   # reuses one (cached)
    python benchmarks/knowledge_search.py --source builtin:stdlib --source builtin:pydocs
                                               # the code and its documentation in one index

Prints one JSON line on stdout; progress goes to stderr. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from llmos.agent.knowledge import KnowledgeBase, print_progress
from llmos.evals.retrieval import questions, recall


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="database to build into / reuse (default: a fresh temp file)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="phrasings of the questions")
    ap.add_argument("--source", action="append", metavar="SPEC",
                    help="what the index holds (repeatable; default: builtin:stdlib)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "bench.db")
        kb = KnowledgeBase.open(db, "stdlib", create=True)
        t0 = time.perf_counter()
        sources = args.source or ["builtin:stdlib"]
        stats = kb.add(sources, progress=print_progress)
        build = time.perf_counter() - t0
        print(file=sys.stderr)
        qs = questions(seed=args.seed)
        kb.search("warm up: load the vectors and the embedding model", 1)
        rows = {mode: recall(kb, qs, args.k, mode) for mode in ("hybrid", "keyword", "dense")}
        t0 = time.perf_counter()
        again = kb.add(sources)  # nothing changed: nothing is read
        cached = time.perf_counter() - t0
    hybrid = rows["hybrid"]
    print(json.dumps({
        "bench": "knowledge_search", "sources": sources,
        "chunks": kb.count() if args.db else stats["chunks"],
        "sources_read": stats["read"], "build_s": round(build, 1),
        "rebuild_unchanged_s": round(cached, 2), "rebuild_read": again["read"],
        f"recall@{args.k}": hybrid["all"]["recall"], "ci": hybrid["all"]["ci"],
        "n": hybrid["all"]["n"], "named": hybrid["named"]["recall"],
        "described": hybrid["described"]["recall"], "median_ms": hybrid["median_ms"],
        "keyword_recall": rows["keyword"]["all"]["recall"],
        "dense_recall": rows["dense"]["all"]["recall"],
        "keyword_median_ms": rows["keyword"]["median_ms"],
        "dense_median_ms": rows["dense"]["median_ms"],
        "targets_met": {"recall": hybrid["all"]["recall"] >= 0.9,
                        "median_ms": hybrid["median_ms"] <= 50,
                        "build_s": build <= 300 or stats["read"] == 0}}))


if __name__ == "__main__":
    main()
