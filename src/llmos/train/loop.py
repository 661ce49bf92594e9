"""The one training loop. A stage (pretraining, finetuning, reward modelling, ...) supplies
batches and a loss; the loop owns everything else: optimizer steps, schedule, accumulation,
clipping, mixed precision, processes, evaluation, samples, metrics, checkpoints and resume."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from llmos import checkpoint, plots, run_log
from llmos.config import TrainConfig
from llmos.runtime import Runtime, autocast_dtype, compile_problem, peak_flops
from llmos.train import sharding
from llmos.train.optim import build_optimizers, lr_factor, set_lr


@dataclass
class Stage:
    """What a training stage supplies to the loop."""

    name: str
    next_batch: Callable[[], tuple]  # one micro-batch for this process
    loss: Callable[[torch.nn.Module, tuple], torch.Tensor]  # mean loss of a micro-batch
    tokens: Callable[[tuple], int]  # tokens a micro-batch trains on (for throughput)
    data_state: Callable[[], dict]  # the data position, saved for exact resume
    load_data_state: Callable[[dict], None]
    evaluate: Callable[[torch.nn.Module], dict] | None = None  # -> {"val_loss":..., ...}
    sample: Callable[[torch.nn.Module], list[str]] | None = None
    flops_per_token: float = 0.0
    # Extra numbers for each training log line (DPO's rewards and margins, ...): the stage
    # accumulates them in `loss` and this returns their means since the last call.
    train_metrics: Callable[[], dict] | None = None


@dataclass
class LoopResult:
    step: int
    stopped_early: bool
    metrics: dict = field(default_factory=dict)


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to save and exit after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n[{signal.Signals(signum).name}] saving a checkpoint after this step...",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _any_rank(flag: bool, rt: Runtime) -> bool:
    if not rt.distributed:
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _mean_over_ranks(x: float, rt: Runtime) -> float:
    if not rt.distributed:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / rt.world_size


def train(model: torch.nn.Module, cfg: TrainConfig, stage: Stage, rt: Runtime, *,
          ckpt_dir: Path, save_checkpoint: Callable[[torch.nn.Module, dict, dict], None],
          run_dir: Path, resume: bool = False) -> LoopResult:
    """Train `model` for cfg.max_steps optimizer steps. `save_checkpoint(model, info, state)`
    writes a checkpoint (rank 0 only); `info` carries step/tokens/metrics for llmos.json."""
    torch.manual_seed(cfg.seed)
    raw_model = model
    fsdp = cfg.fsdp and rt.distributed  # one process has nothing to shard over
    if cfg.fsdp:
        sharding.check(cfg, stage.name)
    if fsdp:
        sharding.shard(raw_model)
    optimizers = build_optimizers(raw_model, cfg)
    step, tokens_seen, history = 0, 0, []
    if resume:
        state = checkpoint.load_trainer_state(ckpt_dir)
        layout = state.get("optimizer_layout", "plain")
        if layout != (sharding.LAYOUT if cfg.fsdp else "plain"):
            raise ValueError(f"--resume: {ckpt_dir} was trained with"
                             + ("" if layout == sharding.LAYOUT else "out") + " train.fsdp; "
                             "resume it with the same setting (any number of processes)")
        if cfg.fsdp:
            sharding.load_optimizer_states(raw_model, optimizers, state["optimizers"])
        else:
            for opt, sd in zip(optimizers, state["optimizers"]):
                opt.load_state_dict(sd)
        stage.load_data_state(state["data"])
        torch.set_rng_state(state["rng"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        if rt.is_main:
            print(f"resuming {ckpt_dir} at step {step} ({tokens_seen:,} tokens seen)")
    if rt.is_main:
        run_log.drop(run_dir / "metrics.jsonl", stage.name, after_step=step)

    if rt.distributed and not fsdp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if rt.device.startswith("cuda") else None)
    problem = compile_problem(rt.device) if cfg.compile else None
    if problem and rt.is_main:
        print(f"train.compile: {problem}; training without it (slower, same model)")
    fwd_model = torch.compile(model) if cfg.compile and not problem else model
    amp = autocast_dtype(cfg.dtype, rt.device)
    autocast = (lambda: torch.autocast(rt.device.split(":")[0], dtype=amp)) if amp else (
        contextlib.nullcontext)
    peak = peak_flops(rt.device, amp) * rt.world_size
    metrics_file = open(run_dir / "metrics.jsonl", "a") if rt.is_main else None
    last = {}

    def log(record: dict):
        record = {"stage": stage.name, "step": step, "tokens": tokens_seen, **record}
        history.append(record)
        if metrics_file:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    def evaluate():
        if stage.evaluate is None:
            return {}
        raw_model.eval()
        with torch.no_grad(), autocast():
            result = stage.evaluate(raw_model)
        raw_model.train()
        result = {k: _mean_over_ranks(v, rt) for k, v in result.items()}
        log(result)
        if rt.is_main:
            print("  eval " + " ".join(f"{k} {v:.4f}" for k, v in result.items()), flush=True)
        return result

    def whole_model():
        """The model to save or sample from: under FSDP a gathered copy on the main process
        (every process must call this then)."""
        return sharding.gathered_copy(raw_model, rt.is_main) if fsdp else raw_model

    def save(final: bool, gathered: tuple | None = None):
        """`gathered`: (whole_model(),) when the caller has just made it."""
        info = {"step": step, "tokens_seen": tokens_seen, "metrics": last, "final": final}
        whole = gathered[0] if gathered else whole_model()
        # With train.fsdp the state is whole and keyed by name even on one process, so the run
        # resumes on any number of them.
        states = (sharding.optimizer_states(raw_model, optimizers) if cfg.fsdp
                  else [o.state_dict() for o in optimizers])
        state = {"optimizers": states, "data": stage.data_state(), "rng": torch.get_rng_state(),
                 "step": step, "tokens_seen": tokens_seen,
                 "optimizer_layout": sharding.LAYOUT if cfg.fsdp else "plain"}
        if rt.is_main:
            save_checkpoint(whole, info, state)
            _plot(run_dir / "metrics.jsonl", run_dir / "loss.png")
        if rt.distributed:
            dist.barrier()

    raw_model.train()
    stopped = False
    # Throughput excludes this process's first step, which pays one-time costs (allocation,
    # compilation, the measured peak above).
    steps_timed, tokens_timed, seconds_timed = 0, 0, 0.0
    with _StopFlag() as stop:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            set_lr(optimizers, lr_factor(step, cfg))
            loss_sum, step_tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                batch = stage.next_batch()
                sync = micro == cfg.grad_accum - 1 or not rt.distributed
                if fsdp:
                    raw_model.set_requires_gradient_sync(sync)
                with (contextlib.nullcontext() if sync or fsdp else model.no_sync()), autocast():
                    loss = stage.loss(fwd_model, batch) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item()
                step_tokens += stage.tokens(batch)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"loss became {loss_sum} at step {step}; lower train.lr")
            grad_norm = (torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip > 0 else torch.tensor(0.0))
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            lr_now = lr_factor(step, cfg)
            step += 1
            step_tokens *= rt.world_size
            tokens_seen += step_tokens
            dt = time.perf_counter() - t0
            if steps_timed or step > 1 or cfg.max_steps == 1:
                steps_timed, tokens_timed, seconds_timed = (
                    steps_timed + 1, tokens_timed + step_tokens, seconds_timed + dt)
            loss_val = _mean_over_ranks(loss_sum, rt)
            if step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps:
                tok_s = tokens_timed / seconds_timed if seconds_timed else step_tokens / dt
                mfu = stage.flops_per_token * tok_s / peak if peak else 0.0
                eta = (cfg.max_steps - step) * (seconds_timed / steps_timed if steps_timed else dt)
                extra = stage.train_metrics() if stage.train_metrics else {}
                log({"loss": loss_val, "lr_factor": lr_now, "grad_norm": float(grad_norm),
                     "tok_per_s": tok_s, "mfu": mfu, **extra})
                if rt.is_main:
                    print(f"{stage.name} step {step:>5}/{cfg.max_steps} | loss {loss_val:.4f} | "
                          f"lr x{lr_now:.3f} | {tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | "
                          + "".join(f"{k} {v:.3g} | " for k, v in extra.items())
                          + f"ETA {_fmt_time(eta)}", flush=True)
            last["train_loss"] = loss_val
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                last.update(evaluate())
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                save(final=False)
            if _any_rank(stop.requested, rt):
                stopped = True
                break
    gathered = None
    if not stopped:
        last.update(evaluate())
        if stage.sample is not None:
            gathered = (whole_model(),)
            if rt.is_main:
                whole = gathered[0]
                whole.eval()
                for text in stage.sample(whole):
                    print("  sample | " + text.replace("\n", "\n         | "), flush=True)
                whole.train()
    save(final=not stopped, gathered=gathered)
    if metrics_file:
        metrics_file.close()
    if stopped and rt.is_main:
        print(f"stopped at step {step}; checkpoint saved to {ckpt_dir}; continue with --resume")
    return LoopResult(step, stopped, dict(last))


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _plot(metrics: Path, out: Path) -> None:
    """Loss against tokens seen, train and validation, for every stage in the run."""
    plt = plots.pyplot()
    records = run_log.read(metrics)
    fig, ax = plt.subplots(figsize=(7, 4))
    for stage in dict.fromkeys(r["stage"] for r in records):
        train = [(r["tokens"], r["loss"]) for r in records if r["stage"] == stage and "loss" in r]
        val = [(r["tokens"], r["val_loss"]) for r in records
               if r["stage"] == stage and "val_loss" in r]
        if train and min(v for _, v in train) > 0:  # a policy-gradient "loss" is no loss
            ax.plot(*zip(*train), label=f"{stage} train", alpha=0.8)
        if val:
            ax.plot(*zip(*val), "o-", label=f"{stage} validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    plots.save(fig, out)
