"""Where the compute runs: device, precision, processes, and the machine's measured peak."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> Runtime:
    """One process, or one of several started by `torchrun` (which sets RANK/WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device == "cpu" and world > 1:
        # Processes on one machine share its cores; oversubscribing threads slows all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(
            os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Runtime(rank, world, local, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(setting: str, device: str) -> torch.dtype | None:
    """The autocast dtype for a `train.dtype` setting, or None for plain fp32."""
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting != "auto":
        raise ValueError(f"dtype must be auto, fp32 or bf16, not {setting!r}")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # On CPUs with native bf16 dot products, bf16 matmuls run ~3x faster than fp32 (docs/LOG.md).
    return torch.bfloat16 if cpu_has_bf16() else None


@functools.cache
def peak_flops(device: str, dtype: torch.dtype | None) -> float:
    """Measured matmul throughput (FLOP/s) of this machine at this precision: the denominator
    of MFU. Measured rather than looked up, so MFU means the same on any CPU or GPU."""
    dt = dtype or torch.float32
    n = 4096 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    # Best of many short trials: one slow trial (a noisy neighbour, a clock ramping up) must not
    # lower the peak, or MFU would read high for the whole run.
    reps, best = 10, float("inf")
    for _ in range(10):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot work here, or None. On CPU, inductor writes C++ and needs a
    compiler (Debian: `apt-get install g++`); better to say so and train eagerly than crash."""
    if device.startswith("cuda"):
        return None
    import shutil

    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if any(n and shutil.which(n) for n in names):
        return None
    return "no C++ compiler (g++, c++, clang++ or $CXX) for torch.compile on CPU"
