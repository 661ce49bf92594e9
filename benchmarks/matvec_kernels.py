"""Batch-1 matrix-vector products: the kernels a PyTorch decoder can call, side by side.

A decoding step at batch 1 is one matrix-vector product per weight matrix, so its speed is how
fast the kernel streams the weights from memory. This times the products of one whole step
(every layer's fused qkv, output, gate/up and down projections, then the 32000-row output
head) at the two shapes of `decode_speed.py`, for each kernel:

    torch-mm        torch.mm(x, W) with W laid out [in, out] (MKL; what the engine calls)
    torch-linear    F.linear(x, W) with W laid out [out, in] (MKL; the training layout)
    torch-bmm       W's output columns split into one block per thread, as a strided view
                    of the same memory, multiplied in one torch.bmm (MKL threads over blocks;
                    the engine's `split_matvec`, which it uses on 2-4 threads only)
    numpy           numpy.matmul with W laid out [in, out] (OpenBLAS, all its threads)
    onednn          a Linear converted with torch.utils.mkldnn (oneDNN inner product)
    inductor-cpp    torch.compile, max-autotune with inductor's C++ GEMM template and frozen
                    weights (only with --compile: compiling takes 5-20 s)

    python benchmarks/matvec_kernels.py                   # both shapes, every kernel but inductor
    python benchmarks/matvec_kernels.py --shapes medium --compile

One JSON line per (shape, kernel): the median milliseconds of the whole step's products over
--repeats, the GB/s of weights read, and the speed relative to torch-mm in the same run.
Compare with llama.cpp's whole decoding step in `decode_speed.py`: a kernel slower than that
step alone cannot give an engine as fast as llama.cpp. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from decode_speed import SHAPES, VOCAB  # noqa: E402  (the same shapes as the decode benchmark)

from llmos.model import column_blocks  # noqa: E402

KERNELS = ("torch-mm", "torch-linear", "torch-bmm", "numpy", "onednn", "inductor-cpp")


def step_shapes(shape: str) -> list[tuple[int, int]]:
    """(in, out) of every product in one decoding step, in order."""
    s = SHAPES[shape]
    d, f = s["dim"], s["ffn_dim"]
    return [(d, 3 * d), (d, d), (d, 2 * f), (f, d)] * s["n_layers"] + [(d, VOCAB)]


def kernel(name: str, weights: list[torch.Tensor], threads: int):
    """A function that runs every product once; weights are [out, in] contiguous."""
    xs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    if name == "torch-mm":
        wt = [w.t().contiguous() for w in weights]
        return lambda: [torch.mm(xs[w.shape[0]], w) for w in wt]
    if name == "torch-linear":
        return lambda: [F.linear(xs[w.shape[1]], w) for w in weights]
    if name == "torch-bmm":
        # The engine's blocks (`split_matvec`), here on any number of threads: this times the
        # kernel, including where the engine would not use it (above MATVEC_MAX_THREADS).
        blocks = [column_blocks(w.t().contiguous(), threads if w.shape[0] % threads == 0 else 1)
                  for w in weights]
        xb = {i: x.expand(threads, 1, i) for i, x in xs.items()}
        return lambda: [torch.bmm(xb[b.shape[1]][:b.shape[0]], b) for b in blocks]
    if name == "numpy":
        wn = [w.t().contiguous().numpy() for w in weights]
        xn = {i: x.numpy() for i, x in xs.items()}
        return lambda: [np.matmul(xn[w.shape[0]], w) for w in wn]
    if name == "onednn":
        from torch.utils import mkldnn

        layers = []
        for w in weights:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data = w
            layers.append((w.shape[1], mkldnn.to_mkldnn(lin)))
        xm = {i: x.to_mkldnn() for i, x in xs.items()}
        return lambda: [layer(xm[i]) for i, layer in layers]
    if name == "inductor-cpp":
        import torch._inductor.config as inductor

        inductor.max_autotune = True
        inductor.max_autotune_gemm_backends = "CPP"
        inductor.freezing = True  # the C++ GEMM template packs constant weights
        layers = torch.nn.ModuleList()
        for w in weights:
            layers.append(torch.nn.Linear(w.shape[1], w.shape[0], bias=False))
            layers[-1].weight.data = w
        compiled = torch.compile(lambda: [lin(xs[lin.in_features]) for lin in layers],
                                 dynamic=False)
        return compiled
    raise SystemExit(f"unknown kernel {name!r}: choose from {', '.join(KERNELS)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="small,medium")
    ap.add_argument("--kernels", default=",".join(k for k in KERNELS if k != "inductor-cpp"))
    ap.add_argument("--compile", action="store_true", help="add inductor-cpp")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.kernels.split(",") + (["inductor-cpp"] if args.compile else [])
    for shape in args.shapes.split(","):
        torch.manual_seed(0)
        weights = [torch.randn(o, i) * 0.02 for i, o in step_shapes(shape)]
        nbytes = sum(w.numel() * 4 for w in weights)
        base = None
        for name in names:
            with torch.no_grad():  # not inference_mode: inductor's frozen weights need it
                run = kernel(name, weights, args.threads)
                t0 = time.perf_counter()
                run()  # warm-up (and compilation)
                setup_s = time.perf_counter() - t0
                for _ in range(2):
                    run()
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
            ms = 1000 * statistics.median(times)
            base = base or (ms if name == "torch-mm" else None)
            row = {"bench": "matvec_kernels", "shape": shape, "kernel": name,
                   "threads": args.threads, "products": len(weights),
                   "weight_mb": round(nbytes / 1e6, 1), "median_ms": round(ms, 2),
                   "min_ms": round(1000 * min(times), 2), "gb_s": round(nbytes / ms / 1e6, 1),
                   "speedup_vs_torch_mm": round(base / ms, 2) if base else None}
            if name == "inductor-cpp":
                row["first_call_s"] = round(setup_s, 1)
            print(json.dumps(row), flush=True)
            del run


if __name__ == "__main__":
    main()
