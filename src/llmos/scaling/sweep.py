"""`llmos scaling sweep` and `collect`: train a plan's runs as ordinary `llmos pretrain` runs,
and gather their final validation losses into SWEEP/runs.jsonl for `llmos scaling fit`.

    SWEEP/sweep.json        the plan (plan.py)
    SWEEP/data/             token shards and tokenizer, prepared once and shared by every run
    SWEEP/runs/NAME/        one pretraining run: data -> ../../data, base/ its checkpoint,
                            train.log its output, metrics.jsonl its curve
    SWEEP/runs.jsonl        one line per finished run

Each run is a separate process (`python -m llmos pretrain ...`, or the `torchrun` line of
`--emit-jobs` on a cluster), so a sweep killed mid-run leaves that run's checkpoint to resume
(Ctrl-C and SIGTERM save one) and the finished runs untouched.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig, load_config
from llmos.data.prepare import prepare
from llmos.scaling.plan import counted


def run_dir(sweep: Path, run: dict) -> Path:
    return sweep / "runs" / run["name"]


def status(sweep: Path, run: dict) -> str:
    """'done', 'partial' (a resumable checkpoint) or 'new'."""
    base = run_dir(sweep, run) / "base"
    if not (base / "llmos.json").exists():
        return "new"
    if checkpoint.read_info(base).get("final"):
        return "done"
    return "partial" if (base / "trainer_state").exists() else "new"


def pretrain_args(sweep: Path, plan: dict, run: dict, state: str) -> list[str]:
    """The `llmos pretrain` arguments that train this run (after `-m llmos`)."""
    args = ["pretrain", "--preset", plan["preset"], "--name", run["name"],
            "--runs-dir", str(sweep / "runs")]
    for source in plan["sources"]:
        args += ["--source", source]
    for key, value in [*plan["overrides"], *run["overrides"].items()]:
        args += ["--set", f"{key}={value}"]
    if state == "partial":
        args.append("--resume")
    elif state == "new" and (run_dir(sweep, run) / "base").exists():
        args.append("--overwrite")  # a first save cut short: nothing to resume from
    return args


def config_of(plan: dict, sweep: Path) -> RunConfig:
    """The run configuration every run of the sweep starts from."""
    cfg = load_config(plan["preset"], [f"{k}={v}" for k, v in plan["overrides"]])
    cfg.data.sources = list(plan["sources"])
    size_vocabulary(cfg, sweep)
    return cfg


def size_vocabulary(cfg: RunConfig, sweep: Path) -> None:
    """The model's vocabulary is the tokenizer's (a small corpus may not fill data.vocab_size):
    read it from the sweep's data when prepared, else take data.vocab_size."""
    tok = sweep / "data" / "tokenizer"
    cfg.model.vocab_size = (tokenizers_.load(tok).get_vocab_size() if tok.exists()
                            else cfg.data.vocab_size)


def measured(sweep: Path, run: dict, counting: str) -> dict:
    """A finished run's line for runs.jsonl."""
    info = checkpoint.read_info(run_dir(sweep, run) / "base")
    m = info.get("metrics", {})
    tokens = info.get("tokens_seen", run["tokens"])
    # C = 6ND with N counted as the sweep counts it: the runs of a profile share it.
    n = counted(run, counting)
    row = {"name": run["name"], "params": run["params"], "params_nonembed": run["params_nonembed"],
           "tokens": tokens, "flops": 6 * n * tokens, "loss": m["val_loss"], "bpb": m["val_bpb"]}
    if "budget" in run:
        row["budget"] = run["budget"]
    return row


def prepare_data(sweep: Path, cfg: RunConfig) -> None:
    """Shards and tokenizer once for the whole sweep (and the vocabulary size it plans with)."""
    prepare(cfg.data, sweep / "data")
    size_vocabulary(cfg, sweep)


def link_data(sweep: Path, plan: dict) -> None:
    """Each run's data folder points at the sweep's."""
    for run in plan["runs"]:
        d = run_dir(sweep, run)
        d.mkdir(parents=True, exist_ok=True)
        link = d / "data"
        if not link.exists():
            link.symlink_to(Path("..") / ".." / "data")


def emit_jobs(sweep: Path, plan: dict, out: Path) -> int:
    """One `torchrun` line per run not yet done; returns how many."""
    lines = []
    for run in plan["runs"]:
        state = status(sweep, run)
        if state == "done":
            continue
        args = pretrain_args(sweep, plan, run, state)
        lines.append(shlex.join(["torchrun", "--standalone", "--nproc_per_node",
                                 str(plan["nproc"]), "-m", "llmos", *args]))
    out.write_text("".join(line + "\n" for line in lines))
    return len(lines)


class Interrupted(Exception):
    pass


def _say(line: str) -> None:
    print(line, flush=True)  # a sweep's output is often a log file, read while it runs


def run_all(sweep: Path, plan: dict, jobs: int = 1, log=_say) -> list[dict]:
    """Train every run not yet done, `jobs` processes at a time (each with its share of the
    cores); a failed run is reported and the others go on. Returns the failures."""
    todo = [(r, status(sweep, r)) for r in plan["runs"]]
    todo = [(r, s) for r, s in todo if s != "done"]
    done = len(plan["runs"]) - len(todo)
    log(f"sweep: {len(plan['runs'])} runs, {done} done, {len(todo)} to train"
        + (f", {jobs} at a time" if jobs > 1 else ""))
    env = dict(os.environ)
    if jobs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    children: set[subprocess.Popen] = set()
    stopping = []
    failures = []

    def train_one(item):
        run, state = item
        if stopping:
            return
        d = run_dir(sweep, run)
        t0 = time.perf_counter()
        with open(d / "train.log", "a") as out:
            child = subprocess.Popen([sys.executable, "-m", "llmos",
                                      *pretrain_args(sweep, plan, run, state)],
                                     stdout=out, stderr=subprocess.STDOUT, env=env,
                                     # Ctrl-C reaches the sweep alone, which passes on one
                                     # SIGINT: a second would stop a run before it saves.
                                     start_new_session=True)
            children.add(child)
            code = child.wait()
            children.discard(child)
        seconds = time.perf_counter() - t0
        if stopping:
            return
        if code != 0:
            failures.append({"name": run["name"], "code": code, "log": str(d / "train.log")})
            log(f"  {run['name']}: failed (exit {code}); see {d / 'train.log'}")
            return
        m = checkpoint.read_info(d / "base").get("metrics", {})
        log(f"  {run['name']}: val loss {m.get('val_loss', float('nan')):.4f}, bpb "
            f"{m.get('val_bpb', float('nan')):.4f}, {seconds:.0f} s")

    pool = ThreadPoolExecutor(max_workers=jobs)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        list(pool.map(train_one, todo))
    except KeyboardInterrupt:
        stopping.append(True)
        for child in list(children):
            child.send_signal(signal.SIGINT)  # the run saves a checkpoint and exits
        for child in list(children):
            child.wait()
        raise Interrupted("sweep interrupted: the runs in progress saved checkpoints; run the "
                          "same command again to continue") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.shutdown(wait=True)
    return failures


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def collect(sweep: Path) -> tuple[list[dict], list[str]]:
    """Every finished run's line for runs.jsonl (written to SWEEP/runs.jsonl), and the names of
    the runs not finished. Held-out runs (`llmos scaling predict --check`) stay out of it: a
    refit must not see the runs that test it."""
    plan = json.loads((sweep / "sweep.json").read_text())
    rows, missing = [], []
    for run in plan["runs"]:
        if run.get("held_out"):
            continue
        if status(sweep, run) != "done":
            missing.append(run["name"])
            continue
        rows.append(measured(sweep, run, plan.get("counting", "total")))
    tmp = sweep / "runs.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(sweep / "runs.jsonl")
    return rows, missing
