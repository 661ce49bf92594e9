"""Assistant quality: held-out conversations of `builtin:assistant` answered by a finetuned
checkpoint, greedy, with the built-in tools in the loop.

    python benchmarks/assistant_quality.py                       runs/cpu-tiny/sft, 300 items
    python benchmarks/assistant_quality.py --model DIR --limit 60

Reports the share of well-formed turns (ended by <|im_end|>, no malformed tool call), of valid
tool calls, arithmetic accuracy with the calculator and without it, and accuracy on the
python, signature, docstring, follow-up and identity questions (see llmos.evals.assistant_tasks for
how each is scored). The held-out questions are about functions and modules that SFT never
saw, so docstring answers test what pretraining stored. Prints one JSON line; with --out, the
per-item prompts and answers are written there for auditing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.data.conversations import read_conversations
from llmos.evals import assistant_tasks

TARGETS = {"well_formed_turns": 0.98, "valid_tool_calls": 0.99, "arithmetic_acc": 0.90}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/cpu-tiny/sft", help="finetuned checkpoint")
    ap.add_argument("--limit", type=int, default=300,
                    help="held-out items, spread evenly over the tasks (default 300)")
    ap.add_argument("--out", help="write every item (prompt, answer, score) to this JSON file")
    args = ap.parse_args(argv)
    if not (Path(args.model) / "config.json").exists():
        ap.error(f"{args.model} is not a checkpoint; run `make speedrun` or `llmos sft` first")
    model, tok = checkpoint.load_model(args.model).eval(), tokenizers_.load(args.model)
    heldout, _ = read_conversations(["builtin:assistant:heldout"])
    print(f"answering {args.limit} of {len(heldout)} held-out conversations...", file=sys.stderr)
    result = assistant_tasks.evaluate(model, tok, heldout, args.limit)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    summary = {k: round(v, 4) if isinstance(v, float) else v
               for k, v in result["summary"].items()}
    print(json.dumps({
        "benchmark": "assistant_quality", "model": args.model, **summary,
        "targets": TARGETS,
        "targets_met": {k: summary.get(k, 0) >= v for k, v in TARGETS.items()},
    }))


if __name__ == "__main__":
    main()
