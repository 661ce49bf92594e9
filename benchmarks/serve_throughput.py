"""Serving throughput: aggregate output tokens/s, latency and time to first token of
`llmos serve` with 1 client and with 8 concurrent clients.

The server runs in its own process (`python -m llmos serve`) on a loopback port; the clients
are asyncio tasks in this process that stream requests back to back for a fixed time, each
asking for exactly --max-tokens tokens (`ignore_eos` + `min_tokens`, so a random model's
lengths are fixed). With batched decoding, 8 clients should get well over 3x the tokens/s of
one: their rows share each decoding step.

    python benchmarks/serve_throughput.py                   # random cpu-tiny-shaped model
    python benchmarks/serve_throughput.py --model runs/cpu-tiny/sft --duration 20

Prints one JSON line on stdout; progress goes to stderr. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

TARGET_RATIO = 3.0
PROMPTS = ["def parse(text):", "import os\n", "class Buffer:", "The quick brown fox",
           "for i in range(10):", "# Read the file", "return value", "while True:"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_random_model(out: Path) -> Path:
    """The cpu-tiny preset's shape (2.6M parameters, vocab 4096) with random weights, and a BPE
    tokenizer trained on about 2 MB of the standard library."""
    import torch

    from llmos import checkpoint
    from llmos import tokenizer as tk
    from llmos.config import load_config
    from llmos.model import Transformer

    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        texts.append(path.read_text(errors="replace"))
        size += len(texts[-1])
        if size > 2_000_000:
            break
    tok = tk.train_bpe(texts, 4096)
    tk.save(tok, out / "tokenizer", max_len=256)
    cfg = load_config("cpu-tiny").model
    cfg.vocab_size = tok.get_vocab_size()
    torch.manual_seed(0)
    model = Transformer(cfg)
    log(f"random model: {model.num_params():,} parameters, vocab {cfg.vocab_size}")
    return checkpoint.save(out / "random", model, out / "tokenizer", {"stage": "random"})


def start_server(model: str, port: int, device: str, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llmos", "serve", "--model", f"bench={model}", "--port",
           str(port), "--device", device, "--max-batch", str(max_batch), "--no-tools"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start in 120 s")


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
            "min_tokens": max_tokens}
    start, first, tokens = time.perf_counter(), None, 0
    async with http.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"start": start, "end": end, "latency": end - start,
            "ttft": (first or end) - start, "tokens": tokens}


async def run_level(base: str, clients: int, duration: float, max_tokens: int) -> dict:
    url = f"{base}/v1/completions"
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await one_request(http, url, PROMPTS[0], max_tokens)  # warm-up, not timed
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def client(k: int) -> list[dict]:
            done, i = [], k
            while time.perf_counter() < deadline:
                done.append(await one_request(http, url, PROMPTS[i % len(PROMPTS)], max_tokens))
                i += clients
            return done

        results = [r for rs in await asyncio.gather(*map(client, range(clients))) for r in rs]
    wall = max(r["end"] for r in results) - t0
    tokens = sum(r["tokens"] for r in results)

    def pct(key, q):
        xs = sorted(r[key] for r in results)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)

    level = {"clients": clients, "requests": len(results), "tokens": tokens,
             "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1),
             "latency_p50_s": pct("latency", 0.5), "latency_p95_s": pct("latency", 0.95),
             "ttft_p50_s": pct("ttft", 0.5), "ttft_p95_s": pct("ttft", 0.95),
             "tokens_per_request": statistics.mean(r["tokens"] for r in results)}
    log(f"{clients} client(s): {level}")
    return level


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint to serve (default: a random model at the "
                    "cpu-tiny shape, built on the spot)")
    ap.add_argument("--duration", type=float, default=10.0,
                    help="seconds each concurrency level sends requests (default 10)")
    ap.add_argument("--max-tokens", type=int, default=64,
                    help="tokens generated per request, exactly (default 64)")
    ap.add_argument("--clients", default="1,8",
                    help="concurrency levels, comma-separated; the ratio is last over first")
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    ap.add_argument("--device", default="cpu", help="the server's --device (cpu, cuda)")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c]

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_random_model(Path(tmp)))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = start_server(model, port, args.device, args.max_batch)
        try:
            base = f"http://127.0.0.1:{port}"
            results = {str(c): asyncio.run(run_level(base, c, args.duration, args.max_tokens))
                       for c in levels}
            health = httpx.get(f"{base}/health").json()["models"]["bench"]
        finally:
            server.terminate()
            server.wait(30)

    first, last = results[str(levels[0])], results[str(levels[-1])]
    print(json.dumps({
        "benchmark": "serve_throughput",
        "model": args.model or "random cpu-tiny shape",
        "device": args.device,
        "cpus": os.cpu_count(),
        "max_tokens": args.max_tokens,
        "duration_s": args.duration,
        "levels": results,
        "max_rows_in_a_step": health["max_rows"],
        "ratio": round(last["tok_s"] / first["tok_s"], 2),
        "target_ratio": TARGET_RATIO,
    }))


if __name__ == "__main__":
    main()
