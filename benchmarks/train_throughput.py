"""Training throughput (tokens/s) and MFU of the llmos training step against a textbook baseline.

For each shape, the real `llmos.model.Transformer` takes the step `llmos.train.loop` takes
(autocast at the "auto" dtype, torch.compile where the preset asks for it, AdamW from
`build_optimizers` like the baseline, gradient clipping, zero_grad; a preset that trains with
Muon is timed with it too, reported apart);
then a plain fp32 GPT-2-style model of the same width, depth, heads, context, batch and vocab
takes the same kind of step with no autocast. Both are timed in this process, one after the
other, so the ratio compares them on the same machine under the same load.

    python benchmarks/train_throughput.py [--steps 10] [--shapes cpu-tiny,d6]
    python benchmarks/train_throughput.py --device cuda --shapes gpu-d12     on a GPU

Prints one JSON line on stdout; progress goes to stderr. Timings on a shared machine are noisy:
read the ratio, not the absolute numbers, and rerun before trusting a small difference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmos.config import ModelConfig, TrainConfig, load_config
from llmos.model import Transformer
from llmos.runtime import autocast_dtype, compile_problem, peak_flops
from llmos.train.optim import build_optimizers, lr_factor, set_lr

VOCAB = 4096
WARMUP_STEPS = 3  # first steps pay allocation and autotuning costs; never timed
TARGET_RATIO = 1.5


@dataclass
class Shape:
    model: ModelConfig
    train: TrainConfig


def shape_cpu_tiny() -> Shape:
    """The speedrun preset, as `llmos pretrain --preset cpu-tiny` would build it."""
    cfg = load_config("cpu-tiny")
    cfg.model.vocab_size = VOCAB  # a run takes it from the tokenizer, which has this many
    return Shape(cfg.model, cfg.train)


def shape_d6() -> Shape:
    model = ModelConfig(vocab_size=VOCAB, dim=384, n_layers=6, n_heads=6, n_kv_heads=6,
                        max_seq_len=256)
    return Shape(model, TrainConfig(batch_size=16, seq_len=256))


def shape_gpu_d12() -> Shape:
    """The one-GPU preset (bf16, compiled, batch 32 x 1024): for `--device cuda`."""
    cfg = load_config("gpu-d12")
    cfg.model.vocab_size = cfg.data.vocab_size
    return Shape(cfg.model, cfg.train)


SHAPES = {"cpu-tiny": shape_cpu_tiny, "d6": shape_d6, "gpu-d12": shape_gpu_d12}


# ---- the baseline: nanoGPT's model without flash attention, written out by hand ------------


class BaselineAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, context: int):
        super().__init__()
        self.n_heads = n_heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.tril(torch.ones(context, context))[None, None])

    def forward(self, x):
        B, T, C = x.shape
        heads = lambda t: t.view(B, T, self.n_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf")).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, C))


class BaselineBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, context: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = BaselineAttention(dim, n_heads, context)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class BaselineGPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.dim)
        self.blocks = nn.ModuleList(
            BaselineBlock(cfg.dim, cfg.n_heads, cfg.max_seq_len) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied, as in GPT-2

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# ---- timing ---------------------------------------------------------------------------------


def make_step(model, optimizer_step, autocast, grad_clip: float):
    """One optimizer step on a fixed batch: forward under `autocast`, backward outside it (as the
    loop does), clip, step, zero_grad. Data loading is left out of both sides on purpose."""

    def step(x, y):
        with autocast():
            loss = model(x, y)
        loss.backward()
        loss.item()  # the loop reads the loss every step to check it is finite
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer_step()

    return step


def llmos_step(shape: Shape, device: str):
    model = Transformer(shape.model).to(device).train()
    optimizers = build_optimizers(model, shape.train)
    amp = autocast_dtype(shape.train.dtype, device)
    kind = device.split(":")[0]
    autocast = (lambda: torch.autocast(kind, dtype=amp)) if amp else contextlib.nullcontext
    calls = [0]

    def optimizer_step():
        set_lr(optimizers, lr_factor(calls[0], shape.train))
        calls[0] += 1
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    # torch.compile where the preset asks for it, as `llmos pretrain` does (first step compiles,
    # inside the untimed warm-up).
    fwd = torch.compile(model) if shape.train.compile and not compile_problem(device) else model
    return model, make_step(fwd, optimizer_step, autocast, shape.train.grad_clip), amp


def baseline_step(shape: Shape, device: str):
    model = BaselineGPT(shape.model).to(device).train()
    # Torch defaults throughout: the implementation (foreach or not) is torch's own choice,
    # the same choice it makes for llmos's AdamW, since neither names one on CPU.
    opt = torch.optim.AdamW(model.parameters(), lr=shape.train.lr)

    def optimizer_step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    return make_step(model, optimizer_step, contextlib.nullcontext, 1.0)


def median_step_seconds(step, batch: tuple, steps: int) -> float:
    # On a GPU the step returns before its last kernels finish: wait for them inside the timing.
    sync = torch.cuda.synchronize if batch[0].is_cuda else (lambda: None)
    for _ in range(WARMUP_STEPS):
        step(*batch)
    times = []
    for _ in range(steps):
        sync()
        t = time.perf_counter()
        step(*batch)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_batch(shape: Shape, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = shape.train.batch_size, shape.train.seq_len
    tokens = torch.randint(0, shape.model.vocab_size, (B, T + 1), device=device)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def measure(name: str, shape: Shape, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    batch = random_batch(shape, device)
    tokens = batch[0].numel()
    # The ratio compares like with like: llmos with AdamW, as the baseline. A preset that trains
    # with another optimizer (cpu-tiny: Muon) is timed as well and reported beside it.
    same_opt = replace(shape, train=replace(shape.train, optimizer="adamw"))
    model, step, amp = llmos_step(same_opt, device)
    flops_per_token = model.flops_per_token(shape.train.seq_len)  # the same work for both
    # Measure both peaks before any timing, so neither lands inside a timed step.
    peak_llmos, peak_fp32 = peak_flops(device, amp), peak_flops(device, None)

    log(f"{name}: llmos ({model.num_params():,} params, {amp or torch.float32}, adamw)...")
    llmos_tok_s = tokens / median_step_seconds(step, batch, steps)
    gpu_memory = {}
    if batch[0].is_cuda:  # what a user's card must hold for this shape
        gpu_memory = {"llmos_max_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    del model, step  # free its weights and optimizer state before the next allocates
    preset = {}
    if shape.train.optimizer != "adamw":
        log(f"{name}: llmos with the preset's optimizer ({shape.train.optimizer})...")
        model, step, _ = llmos_step(shape, device)
        preset_tok_s = tokens / median_step_seconds(step, batch, steps)
        del model, step
        preset = {"preset_optimizer": shape.train.optimizer,
                  "preset_tok_s": round(preset_tok_s, 1)}

    log(f"{name}: baseline fp32 GPT-2...")
    baseline_tok_s = tokens / median_step_seconds(baseline_step(shape, device), batch, steps)
    result = {
        "llmos_tok_s": round(llmos_tok_s, 1),
        "baseline_tok_s": round(baseline_tok_s, 1),
        "ratio": round(llmos_tok_s / baseline_tok_s, 3),
        "llmos_mfu": round(flops_per_token * llmos_tok_s / peak_llmos, 4),
        "baseline_mfu": round(flops_per_token * baseline_tok_s / peak_fp32, 4),
        "dtype": str(amp or torch.float32).removeprefix("torch."),
    }
    result.update(gpu_memory)
    if preset:
        preset["preset_ratio"] = round(preset["preset_tok_s"] / baseline_tok_s, 3)
        result.update(preset)
    log(f"{name}: {result}")
    return result


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--shapes", default="cpu-tiny,d6", help=f"comma-separated: {', '.join(SHAPES)}")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    args = ap.parse_args(argv)
    names = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown or not names or args.steps < 1:
        ap.error(f"--shapes takes some of {', '.join(SHAPES)}; --steps must be >= 1")
    shapes = {name: measure(name, SHAPES[name](), args.steps, args.device) for name in names}
    print(json.dumps({
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "shapes": shapes,
        "target_ratio": TARGET_RATIO,
    }))


if __name__ == "__main__":
    main()
