"""The GPU path: decoding speed of the engine as it is (eager, a growing KV cache), the engine
with a static KV cache and a compiled step (`infer/static.py`: CUDA graphs on a GPU), and
`transformers` `generate`, on the same random weights (the llama2.c "stories" shapes of
decode_speed.py, bf16 on a GPU), at batch 1 and at 64 sequences decoded together.

    python benchmarks/gpu_decode.py                          # cuda: medium and small, 1 and 64
    python benchmarks/gpu_decode.py --device cpu --shapes small --batches 1,8 --tokens 32

Each runner decodes exactly --tokens new tokens per sequence from a 1-token prompt, greedy,
stop tokens off; the time is the best of --repeats after one warm-up (which pays compilation).
One JSON line per (shape, runner, batch), then a summary line per shape with the target (the
compiled engine at batch 1 >= 5x `transformers` at medium). Progress goes to stderr. A few
minutes on one GPU; prepared to run as one short script where a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import llmos  # noqa: F401 - before torch: OpenMP's waiting is set as it loads (llmos/__init__.py)

# isort: split
import torch
from decode_speed import build

RUNNERS = ("engine", "static", "static-compiled", "transformers")
TARGET = ("static-compiled", "transformers", 5.0, "medium", 1)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def runner(name: str, ckpt: Path, device: str, dtype, batch: int, n: int):
    from llmos import checkpoint
    from llmos.infer.engine import Engine, SamplingParams
    from llmos.infer.static import StaticEngine

    p = SamplingParams(max_new_tokens=n, temperature=0.0)
    prompts = [[1]] * batch
    if name == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).to(device).eval()
        ids = torch.ones((batch, 1), dtype=torch.long, device=device)

        def go():
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     pad_token_id=0)
            assert out.shape == (batch, n + 1), out.shape
        return go
    model = checkpoint.load_model(ckpt, device).to(dtype)
    if name == "engine":
        engine = Engine(model)
    else:
        engine = StaticEngine(model, batch=batch, max_len=n + 1,
                              compile=name == "static-compiled")

    def go():
        outs = engine.generate(prompts, p)
        assert all(len(o) == n for o in outs), [len(o) for o in outs]
    return go


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", default="medium,small")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--runners", default=",".join(RUNNERS))
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per sequence")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["bf16", "fp32"],
                    help="weights (default bf16 on a GPU, fp32 on a CPU)")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else "cpu")
    log(f"{device_name}, {dtype}")
    for shape in args.shapes.split(","):
        speeds = {}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = build(shape, Path(tmp))
            for batch in map(int, args.batches.split(",")):
                for name in args.runners.split(","):
                    row = {"bench": "gpu_decode", "device": device_name, "shape": shape,
                           "runner": name, "batch": batch, "dtype": str(dtype)}
                    go = None
                    try:
                        go = runner(name, ckpt, args.device, dtype, batch, args.tokens)
                        t = time.perf_counter()
                        go()  # warm-up: compilation, CUDA graph capture
                        sync(args.device)
                        row["first_s"] = round(time.perf_counter() - t, 2)
                        best = float("inf")
                        for _ in range(args.repeats):
                            t = time.perf_counter()
                            go()
                            sync(args.device)
                            best = min(best, time.perf_counter() - t)
                        tok_s = batch * args.tokens / best
                        speeds[name, batch] = tok_s
                        row |= {"tok_s": round(tok_s, 1),
                                "ms_per_step": round(1000 * best / args.tokens, 3)}
                    except Exception as e:  # noqa: BLE001 - one runner failing is a row
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                    log(f"{shape:>6} {name:<16} batch {batch:>3}: "
                        f"{row.get('tok_s', row.get('error'))}")
                    print(json.dumps(row), flush=True)
                    go = None  # free the model before loading the next
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
        runner_name, base, need, target_shape, batch = TARGET
        summary = {"bench": "gpu_decode_summary", "shape": shape, "device": device_name,
                   "ratios": {f"{r}@{b}": round(v / speeds[base, b], 2)
                              for (r, b), v in speeds.items() if (base, b) in speeds}}
        if shape == target_shape and (runner_name, batch) in speeds and (base, batch) in speeds:
            ratio = speeds[runner_name, batch] / speeds[base, batch]
            summary["target"] = {"runner": f"{runner_name}@{batch}", "vs": f"{base}@{batch}",
                                 "ratio": round(ratio, 2), "need": need, "met": ratio >= need}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
