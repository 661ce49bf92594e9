"""Shared fixtures: a small corpus made on the spot, and a run config sized for tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmos.config import load_config


def make_corpus(folder, n_docs: int = 40, seed: int = 0):
    """Varied, learnable text: small Python-like functions with docstrings."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "count", "value", "index", "items", "total",
             "name", "parse", "build", "merge", "split", "token", "window", "buffer"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = []
        for _ in range(rng.randint(3, 8)):
            a, b, c = rng.sample(words, 3)
            lines.append(f"def {a}_{b}({c}, n={rng.randint(0, 99)}):\n"
                         f'    """Return the {b} of {c} after {rng.randint(2, 9)} steps."""\n'
                         f"    return [{c} * k for k in range(n)]\n")
        (folder / f"mod_{i:03d}.py").write_text("\n".join(lines))
    return folder


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def tiny_config(runs_dir, corpus, name="t", **train):
    """A model small enough to train a few steps in about a second."""
    cfg = load_config("cpu-tiny", [
        "model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
        "model.max_seq_len=64", "data.vocab_size=320", "data.val_fraction=0.1",
        "train.batch_size=4", "train.seq_len=32", "train.max_steps=6", "train.warmup_steps=2",
        "train.eval_every=3", "train.eval_tokens=256", "train.log_every=1", "train.dtype=fp32",
        "train.compile=false", "sft.train.compile=false",
    ])
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.name, cfg.runs_dir, cfg.data.sources = name, str(runs_dir), [str(corpus)]
    return cfg


# ---- a real browser: Debian's chromium driven by Playwright (no browser download) -----------

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # screenshots


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for one test module; skips, saying why, where it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def write_jsonl(path, rows):
    """One line per row: dicts as JSON, strings as they are (to write malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def random_checkpoint(root, texts: list[str], vocab: int, max_seq_len: int):
    """A checkpoint with random weights (dim 32, 2 layers, grouped-query attention) and a BPE
    tokenizer trained on `texts`: real files for code that reads checkpoints, not for quality."""
    import torch

    from llmos import checkpoint
    from llmos import tokenizer as tk
    from llmos.config import ModelConfig
    from llmos.model import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=max_seq_len, tie_embeddings=False)
    tk.save(tk.train_bpe(texts, vocab), root / "tok", max_len=max_seq_len)
    return checkpoint.save(root / "ckpt", Transformer(cfg).eval(), root / "tok",
                           {"stage": "test"})


def pretrained_tiny(tmp_path_factory, corpus, name: str, max_steps: int = 3,
                    max_seq_len: int = 64):
    """(config, checkpoint) of a tiny model pretrained a few steps: a parent for later stages."""
    from llmos.train import pretrain

    cfg = tiny_config(tmp_path_factory.mktemp("runs"), corpus, name=name, max_steps=max_steps)
    cfg.model.max_seq_len = max_seq_len
    return cfg, pretrain.run(cfg)


# ---- databases: a fresh SQLite file, and a fresh database on a real PostgreSQL server --------

POSTGRES_ENV = "LLMOS_TEST_POSTGRES_URL"  # .ci/run starts a server and sets this (.ci/postgres)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A URL to an empty database: a SQLite file, or a new database created on the PostgreSQL
    server named by $LLMOS_TEST_POSTGRES_URL (dropped afterwards). The PostgreSQL case skips,
    saying why, when no server is configured (`export LLMOS_TEST_POSTGRES_URL=$(.ci/postgres)`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'llmos.db'}"
        return
    import os
    import uuid

    server = os.environ.get(POSTGRES_ENV)
    if not server:
        pytest.skip(f"no PostgreSQL server: set {POSTGRES_ENV} (.ci/postgres starts one)")
    from sqlalchemy import create_engine, text

    admin = create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    name = f"llmos_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield server.rsplit("/", 1)[0] + "/" + name

    _drop_database(admin, name)
    admin.dispose()


def _drop_database(admin, name, tries=20):
    """Drop a test database, its lingering connections too. FORCE must also end an autovacuum
    worker that may be visiting the new database, which a role without pg_signal_backend may
    not do (CI failed on this once); such a worker is gone within moments, so try again."""
    import time

    from sqlalchemy import exc, text

    for attempt in range(tries):
        try:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except exc.DBAPIError:
            if attempt == tries - 1:
                raise
            time.sleep(0.25)
