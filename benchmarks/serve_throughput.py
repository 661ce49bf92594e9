"""Serving throughput: aggregate output tokens/s, latency and time to first token under 1, 4,
8 and 16 concurrent clients, for `llmos serve` (the engine's continuous batching) and its peers
on the same weights and threads:

    llmos               python -m llmos serve (fp32 checkpoint)
    llmos-llamacpp      python -m llmos serve --backend llamacpp --gguf-type f32
    llama_cpp.server    llama-cpp-python's own OpenAI server (one sequence at a time; requests
                        queue: --interrupt_requests False)
    llama-server        llama.cpp's C++ server, --parallel 8 (continuous batching); built by
                        benchmarks/build_llama_server.sh, found with --llama-server or
                        .cache/llama-server/build/bin/llama-server

Each server runs in its own process on a loopback port, started and stopped here; the clients
are asyncio tasks in this process that stream /v1/completions requests back to back for a fixed
time, each asking for exactly --max-tokens tokens (llmos and llama-server: `ignore_eos` (+
`min_tokens`); llama_cpp.server: a -100 logit bias on the end tokens), so a random model's
lengths are fixed. The peers read model-f32.gguf, made from the same checkpoint.

    python benchmarks/serve_throughput.py                            # random cpu-tiny shape
    python benchmarks/serve_throughput.py --peers llmos --clients 1,8   # the engine alone
    python benchmarks/serve_throughput.py --model runs/cpu-tiny/sft --duration 20

One JSON line per peer, then a summary line with the ratios of issue 25's targets; progress goes
to stderr. Peers that cannot start (a package or binary missing) are skipped and said so. Run it
on an otherwise idle machine.
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

PEERS = ("llmos", "llmos-llamacpp", "llama_cpp.server", "llama-server")
LLAMA_SERVER = Path(__file__).resolve().parent.parent / ".cache/llama-server/build/bin/llama-server"
TARGETS = [  # (peer, clients, baseline peer, baseline clients, minimum ratio)
    ("llmos", 8, "llama_cpp.server", 8, 1.5),
    ("llmos", 8, "llama-server", 8, 1.0),
    ("llmos", 8, "llmos", 1, 3.0),
]
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


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def launch(cmd: list[str]) -> subprocess.Popen:
    """A server process whose log goes to a temporary file (a pipe nobody reads would fill up
    and stall it mid-benchmark)."""
    log_file = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    proc.log_file = log_file
    return proc


def wait_healthy(proc: subprocess.Popen, url: str, what: str) -> subprocess.Popen:
    deadline = time.time() + 300  # the first llmos-llamacpp start exports the GGUF
    while time.time() < deadline:
        if proc.poll() is not None:
            proc.log_file.seek(0)
            raise RuntimeError(f"{what} exited: {proc.log_file.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not start in 300 s")


def start_server(model: str, port: int, device: str, max_batch: int,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`llmos serve` on loopback (`extra`: more flags, e.g. --backend llamacpp), once healthy."""
    cmd = [sys.executable, "-m", "llmos", "serve", "--model", f"bench={model}", "--port",
           str(port), "--device", device, "--max-batch", str(max_batch), "--no-tools", *extra]
    return wait_healthy(launch(cmd), f"http://127.0.0.1:{port}/health", "llmos serve")


def start_peer(peer: str, ckpt: Path, port: int, args) -> tuple[subprocess.Popen, dict]:
    """(the server process, what a request must add to get exactly max_tokens tokens)."""
    threads = str(args.threads)
    if peer == "llmos":
        return start_server(str(ckpt), port, args.device, args.max_batch), {
            "ignore_eos": True, "min_tokens": args.max_tokens}
    if peer == "llmos-llamacpp":  # its own threads (a core left to the server) unless fewer
        chosen = ("--threads", threads) if args.threads < (os.cpu_count() or 1) else ()
        return start_server(str(ckpt), port, "cpu", 1, (
            "--backend", "llamacpp", "--gguf-type", "f32", *chosen)), {
            "ignore_eos": True, "min_tokens": args.max_tokens}
    from llmos import tokenizer as tk
    from llmos.infer.llamacpp import gguf_for, installed

    if not installed():
        raise RuntimeError("skipped: llama-cpp-python or gguf is not installed")
    gguf = gguf_for(ckpt, "f32", log=log)
    context = json.loads((ckpt / "config.json").read_text())["max_position_embeddings"]
    if peer == "llama_cpp.server":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port",
               str(port), "--n_ctx", str(context), "--n_threads", threads,
               "--n_threads_batch", threads,
               # its default: a new request cuts the one streaming off; they queue instead
               "--interrupt_requests", "False"]
        ends = tk.end_ids(tk.load(ckpt))  # llama.cpp stops at any of them
        return wait_healthy(launch(cmd), f"http://127.0.0.1:{port}/v1/models", peer), {
            "logit_bias": {str(t): -100.0 for t in ends}}
    binary = Path(args.llama_server)
    if not binary.exists():
        raise RuntimeError(f"skipped: no {binary} (bash benchmarks/build_llama_server.sh)")
    # --parallel slots share the context: each gets the model's own
    cmd = [str(binary), "-m", str(gguf), "--port", str(port), "-c", str(context * 8),
           "--parallel", "8", "-t", threads, "-tb", threads, "--no-webui"]
    return wait_healthy(launch(cmd), f"http://127.0.0.1:{port}/health", peer), {
        "ignore_eos": True}


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int,
                      extra: dict) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}
    start, first, tokens, reason = time.perf_counter(), None, 0, None
    async with http.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices"):
                choice = chunk["choices"][0]
                reason = choice.get("finish_reason") or reason
                if choice.get("text"):
                    first = first or time.perf_counter()
    end = time.perf_counter()
    # A server that reports no usage while streaming (llama_cpp.server) stopped at max_tokens
    # when it says "length": its end tokens are biased away.
    if not tokens and reason == "length":
        tokens = max_tokens
    return {"start": start, "end": end, "latency": end - start,
            "ttft": (first or end) - start, "tokens": tokens}


async def run_level(base: str, clients: int, duration: float, max_tokens: int,
                    extra: dict) -> dict:
    url = f"{base}/v1/completions"
    # A connection per request: llama-server closes kept-alive connections that httpx would
    # reuse ("Server disconnected"); every peer pays the same loopback connect.
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await one_request(http, url, PROMPTS[0], max_tokens, extra)  # warm-up, not timed
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def client(k: int) -> list[dict]:
            done, i = [], k
            while time.perf_counter() < deadline:
                done.append(await one_request(http, url, PROMPTS[i % len(PROMPTS)],
                                              max_tokens, extra))
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
    log(f"  {clients} client(s): {level['tok_s']} tok/s, ttft p50 {level['ttft_p50_s']} s")
    return level


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint to serve (default: a random model at the "
                    "cpu-tiny shape, built on the spot)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated, from {', '.join(PEERS)}")
    ap.add_argument("--duration", type=float, default=10.0,
                    help="seconds each concurrency level sends requests (default 10)")
    ap.add_argument("--max-tokens", type=int, default=64,
                    help="tokens generated per request, exactly (default 64)")
    ap.add_argument("--clients", default="1,4,8,16",
                    help="concurrency levels, comma-separated (default 1,4,8,16)")
    ap.add_argument("--max-batch", type=int, default=16, help="llmos serve's --max-batch")
    ap.add_argument("--device", default="cpu", help="llmos serve's --device (cpu, cuda)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads of the llama.cpp peers (default every core, as torch uses)")
    ap.add_argument("--llama-server", default=str(LLAMA_SERVER),
                    help="llama.cpp's llama-server binary (default: where "
                    "benchmarks/build_llama_server.sh puts it)")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.model) if args.model else build_random_model(Path(tmp))
        for peer in args.peers.split(","):
            if peer not in PEERS:
                raise SystemExit(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
            row = {"benchmark": "serve_throughput", "peer": peer,
                   "model": args.model or "random cpu-tiny shape", "device": args.device,
                   "cpus": os.cpu_count(), "threads": args.threads,
                   "max_tokens": args.max_tokens, "duration_s": args.duration}
            port = free_port()
            log(f"{peer}:")
            try:
                server, extra = start_peer(peer, ckpt, port, args)
            except RuntimeError as e:
                row["skipped"] = str(e)
                log(f"  {e}")
                print(json.dumps(row), flush=True)
                continue
            try:
                base = f"http://127.0.0.1:{port}"
                row["levels"] = {str(c): asyncio.run(run_level(
                    base, c, args.duration, args.max_tokens, extra)) for c in levels}
            finally:
                server.terminate()
                server.wait(30)
            rows[peer] = row
            print(json.dumps(row), flush=True)

    summary = {"benchmark": "serve_throughput_summary", "targets": [],
               "ttft_p50_s": {p: {c: lv["ttft_p50_s"] for c, lv in r["levels"].items()}
                              for p, r in rows.items()}}
    for peer, clients, base, base_clients, need in TARGETS:
        a = rows.get(peer, {}).get("levels", {}).get(str(clients))
        b = rows.get(base, {}).get("levels", {}).get(str(base_clients))
        if a and b:
            ratio = a["tok_s"] / b["tok_s"]
            summary["targets"].append({
                "peer": f"{peer}@{clients}", "vs": f"{base}@{base_clients}",
                "ratio": round(ratio, 2), "need": need, "met": ratio >= need})
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
