"""What a System-2 vote costs over the API: the wall time of one request with
`"think": {"strategy": "vote", "n": 16}` against one ordinary sampled answer, and against the 16
answers asked one after another. The vote's samples are rows of one batch, so it should cost
far less than 16 answers: the target is at most 3x one answer (issue 19).

Every request asks for exactly --max-tokens tokens (`ignore_eos` + `min_tokens`), so the three
compare equal work per answer whatever the model says.

    python benchmarks/think_cost.py                          # random cpu-tiny-shaped model
    python benchmarks/think_cost.py --model runs/cpu-tiny/sft

Prints one JSON line on stdout; progress goes to stderr. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_throughput import build_random_model, log, start_server  # noqa: E402

TARGET_RATIO = 3.0
QUESTION = [{"role": "user", "content": "What is 48 + 37? Work it out without the calculator."}]


def timed(url: str, body: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = httpx.post(url, json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint to serve (default: a random model at the "
                    "cpu-tiny shape, built on the spot)")
    ap.add_argument("--n", type=int, default=16, help="the vote's samples (default 16)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per answer (default 48)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_random_model(Path(tmp)))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_server(model, port, args.device, max_batch=max(16, args.n))
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body = {"model": "bench", "messages": QUESTION, "max_tokens": args.max_tokens,
                    "min_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0.8}
            vote = {**body, "think": {"strategy": "vote", "n": args.n}}
            timed(url, body)  # warm-up, not timed
            timed(url, vote)
            one, voted, sequential, tokens = [], [], [], 0
            for rep in range(args.repeats):
                one.append(timed(url, {**body, "seed": rep})[0])
                seconds, answer = timed(url, {**vote, "seed": rep})
                voted.append(seconds)
                tokens = answer["think"]["tokens"]
                t0 = time.perf_counter()
                for i in range(args.n):
                    timed(url, {**body, "seed": 1000 * rep + i})
                sequential.append(time.perf_counter() - t0)
                log(f"repeat {rep + 1}: one {one[-1]:.2f}s, vote n={args.n} {voted[-1]:.2f}s, "
                    f"{args.n} one after another {sequential[-1]:.2f}s")
        finally:
            proc.terminate()
            proc.wait(30)
    med = {k: statistics.median(v) for k, v in
           (("one", one), ("vote", voted), ("sequential", sequential))}
    print(json.dumps({
        "benchmark": "think_cost", "model": args.model or "random cpu-tiny shape",
        "n": args.n, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "one_answer_s": round(med["one"], 3), "vote_s": round(med["vote"], 3),
        "sequential_s": round(med["sequential"], 3), "vote_tokens": tokens,
        "vote_over_one": round(med["vote"] / med["one"], 2),
        "sequential_over_vote": round(med["sequential"] / med["vote"], 2),
        "target_vote_over_one": TARGET_RATIO,
        "met": med["vote"] / med["one"] <= TARGET_RATIO}))


if __name__ == "__main__":
    main()
