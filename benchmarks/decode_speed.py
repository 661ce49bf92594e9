"""Batch-1 decode speed: new tokens per second, greedy, for the llmos engine, the exported
numpy `run.py`, `transformers` and llama.cpp, on the same random weights, side by side.

Two shapes, the llama2.c "stories" models' (tied embeddings, vocab 32000):
    small   dim 288, 6 layers, 6 heads, SwiGLU 768,  context 256   (15M parameters)
    medium  dim 768, 12 layers, 12 heads, SwiGLU 2048, context 1024 (110M parameters)

Each runner decodes from a 1-token prompt: 256 new tokens, or 255 where the context is 256 (the
prompt takes one position). Stop tokens are off, so every runner does the same number of steps.
The time covers prompt + decoding, best of --repeats after one warm-up. All runners get the same
threads (--threads, default every core). Runners whose package is missing are skipped and said so.

    python benchmarks/decode_speed.py                        # both shapes, every runner
    python benchmarks/decode_speed.py --shapes small --repeats 2

One JSON line per (shape, runner), then one summary line per shape with the ratios the targets
are about (docs/export.md, "Decode speed") and the fp32 roofline: the machine's memory read
bandwidth (a sum over 1 GiB, measured first) over the bytes one fp32 step must read, the most
tokens/s any fp32 decoder can reach here. Progress goes to stderr. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "small": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, ffn_dim=768, max_seq_len=256),
    "medium": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=2048,
                   max_seq_len=1024),
}
VOCAB = 32000
NEW_TOKENS = 256
RUNNERS = ("engine-fp32", "engine-bf16", "run.py-fp32", "run.py-int8", "run.py-int8-kept",
           "transformers", "llama.cpp-F32", "llama.cpp-F16", "llama.cpp-Q8_0",
           "serve-llamacpp-F16", "serve-llamacpp-Q8_0")
BOTH = ("small", "medium")
TARGETS = [  # (runner, baseline, minimum ratio, shapes); None: a measured row, no target
    ("serve-llamacpp-F16", "llama.cpp-F16", 0.9, BOTH),
    ("serve-llamacpp-Q8_0", "llama.cpp-Q8_0", 0.9, BOTH),
    ("engine-fp32", "llama.cpp-F32", None, BOTH),  # retired targets (1.0, 3.0, 0.75, 1.5)
    ("engine-fp32", "transformers", None, BOTH),
    ("run.py-fp32", "llama.cpp-F32", None, BOTH),
    ("run.py-int8", "run.py-fp32", None, ("medium",)),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(shape: str, root: Path) -> Path:
    """A checkpoint with random weights (std 0.02, as at initialisation) and a small BPE
    tokenizer; the embedding has 32000 rows whatever the tokenizer's size (the extra ids are
    padding, as when a vocabulary is rounded up)."""
    from llmos import checkpoint
    from llmos import tokenizer as tk
    from llmos.config import ModelConfig
    from llmos.model import Transformer

    tok_dir = root / "tok"
    if not (tok_dir / "tokenizer.json").exists():
        text = Path(json.__file__).read_text() + Path(argparse.__file__).read_text()
        tk.save(tk.train_bpe([text], 512), tok_dir, max_len=SHAPES[shape]["max_seq_len"])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, **SHAPES[shape]))
    return checkpoint.save(root / shape, model, tok_dir, {})


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy initialisation, page faults of mapped files
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second this machine reads from memory with torch's threads: the best of
    `repeats` sums of a fp32 array far larger than any cache (as a decode step's weights are)."""
    x = torch.ones(int(gib * 2**30) // 4)
    seconds = best_time(lambda: float(x.sum()), repeats)
    return x.numel() * 4 / seconds


def fp32_bytes_per_token(shape: str, n: int) -> int:
    """What one fp32 decode step must read at least: every weight matrix once (4 attention
    projections and 3 SwiGLU ones per layer, the vocabulary-sized output head) plus the KV
    cache at the mean position of `n` steps. Norms and the one embedding row are negligible."""
    s = SHAPES[shape]
    d, f, L = s["dim"], s["ffn_dim"], s["n_layers"]
    weights = L * (4 * d * d + 3 * d * f) + VOCAB * d
    kv = 2 * L * d * (n / 2)
    return int(4 * (weights + kv))


def engine_runner(ckpt: Path, n: int, dtype: torch.dtype):
    from llmos import checkpoint
    from llmos.infer.engine import Engine, SamplingParams

    engine = Engine(checkpoint.load_model(ckpt).to(dtype))
    p = SamplingParams(max_new_tokens=n, temperature=0.0)

    def go():
        out = engine.generate([[1]], p)[0]
        assert len(out) == n, len(out)
    return go


def run_py_runner(params: Path, n: int, keep_int8: bool):
    spec = importlib.util.spec_from_file_location("bench_run_py", params.with_name("run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    gen = run.Generator(str(params), keep_int8=keep_int8)

    def go():
        gen.cached = []  # a fresh prompt each time, as the other runners
        out = list(gen.stream([1], n))
        assert len(out) == n, len(out)
    return go


def transformers_runner(ckpt: Path, n: int):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    prompt = torch.tensor([[1]])

    def go():
        with torch.inference_mode():
            out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=0)
        assert out.shape[1] == n + 1, out.shape
    return go


def llama_cpp_runner(gguf_path: Path, n: int, ctx: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=ctx, n_threads=threads,
                n_threads_batch=threads, verbose=False)

    def go():
        llm.reset()
        out = []
        for t in llm.generate([1], temp=0.0, top_k=1, reset=True):
            out.append(t)
            if len(out) == n:
                break
        assert len(out) == n, len(out)
    return go


def serve_llamacpp_runner(ckpt: Path, n: int, outtype: str, threads: int):
    """`llmos serve --backend llamacpp` in its own process, one streamed request at a time:
    the same 1-token prompt and greedy steps as the direct llama.cpp runner, through HTTP."""
    import httpx
    from serve_throughput import free_port, start_server

    port = free_port()
    # The server's own threads (one core fewer than llama.cpp called directly, left to its
    # event loop) unless the run asks for fewer than every core.
    chosen = () if threads >= (os.cpu_count() or 1) else ("--threads", str(threads))
    server = start_server(str(ckpt), port, "cpu", 1, ("--backend", "llamacpp", "--gguf-type",
                                                       outtype, *chosen))
    body = {"model": "bench", "prompt": [1], "max_tokens": n, "min_tokens": n,
            "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}

    def go():
        tokens = 0
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body,
                          timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {") and '"usage": {' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        assert tokens == n, tokens

    def close():
        server.terminate()
        server.wait(30)

    go.close = close
    return go


def runners_for(shape: str, root: Path, wanted: list[str], threads: int):
    """(name, closure or the reason it is skipped)."""
    from llmos.export.params import export_run

    ckpt = build(shape, root)
    ctx = SHAPES[shape]["max_seq_len"]
    n = min(NEW_TOKENS, ctx - 1)
    for name in wanted:
        try:
            if name.startswith("engine-"):
                yield name, engine_runner(ckpt, n, {"engine-fp32": torch.float32,
                                                    "engine-bf16": torch.bfloat16}[name])
            elif name.startswith("run.py-"):
                dtype = "int8" if "int8" in name else "fp32"
                params = export_run(ckpt, root / f"{shape}-run-{dtype}", dtype=dtype,
                                    group_size=32)["params"]  # 32 divides 288 and 768
                yield name, run_py_runner(params, n, keep_int8=name.endswith("-kept"))
            elif name == "transformers":
                yield name, transformers_runner(ckpt, n)
            elif name.startswith("llama.cpp-"):
                from llmos.export.gguf import export_gguf

                outtype = name.split("-", 1)[1].lower()
                path = export_gguf(ckpt, root / f"{shape}-gguf-{outtype}", outtype)["gguf"]
                yield name, llama_cpp_runner(path, n, ctx, threads)
            elif name.startswith("serve-llamacpp-"):
                from llmos.infer import llamacpp

                if not llamacpp.installed():
                    raise ImportError("llama-cpp-python is not installed")
                outtype = name.rsplit("-", 1)[1].lower()
                yield name, serve_llamacpp_runner(ckpt, n, outtype, threads)
        except ImportError as e:
            yield name, f"skipped: {e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="small,medium", help="comma-separated: small, medium")
    ap.add_argument("--runners", default=",".join(RUNNERS),
                    help=f"comma-separated, from {', '.join(RUNNERS)}")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per runner (best kept)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every runner")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bandwidth = read_bandwidth()
    log(f"memory read bandwidth {bandwidth / 1e9:.1f} GB/s ({args.threads} threads)")
    wanted = args.runners.split(",")
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
        speeds = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, go in runners_for(shape, Path(tmp), wanted, args.threads):
                row = {"bench": "decode_speed", "shape": shape, "runner": name,
                       "threads": args.threads}
                if isinstance(go, str):
                    row["skipped"] = go
                else:
                    n = min(NEW_TOKENS, SHAPES[shape]["max_seq_len"] - 1)
                    try:
                        seconds = best_time(go, args.repeats)
                    finally:
                        if hasattr(go, "close"):  # a server process: stopped, whatever happened
                            go.close()
                    speeds[name] = n / seconds
                    row |= {"new_tokens": n, "tok_s": round(n / seconds, 1),
                            "ms_per_token": round(1000 * seconds / n, 3)}
                    del go  # free the model before loading the next
                log(f"{shape:>6} {name:<18} {row.get('tok_s', row.get('skipped'))}")
                print(json.dumps(row), flush=True)
        # The roofline: no fp32 decoder can beat reading its weights at the machine's bandwidth.
        # A target asking a fp32 runner for more tokens/s than that cannot be met on this machine.
        n = min(NEW_TOKENS, SHAPES[shape]["max_seq_len"] - 1)
        per_token = fp32_bytes_per_token(shape, n)
        roofline = bandwidth / per_token
        summary = {"bench": "decode_speed_summary", "shape": shape,
                   "read_gb_s": round(bandwidth / 1e9, 2),
                   "fp32_mb_per_token": round(per_token / 1e6, 1),
                   "fp32_roofline_tok_s": round(roofline, 1), "targets": []}
        for runner, base, need, shapes in TARGETS:
            if shape in shapes and runner in speeds and base in speeds:
                ratio = speeds[runner] / speeds[base]
                row = {"runner": runner, "vs": base, "ratio": round(ratio, 3)}
                if need is not None:
                    row |= {"need": need, "met": ratio >= need}
                summary["targets"].append(row)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
