"""Pretraining quality: the cpu-tiny speedrun's validation bits per byte against classical
compressors on the same validation text.

Trains the preset end to end (data, tokenizer, model) as `llmos pretrain` does, reads the final
val bpb from the checkpoint, and compresses the validation split with gzip -9, xz -9e, and
xz -9e given the training text as context (what xz spends on the validation text once it has
seen the training text: the fair rival for a model trained on that text).

    python benchmarks/pretrain_quality.py                        the full run (~10 min on 2 cores)
    python benchmarks/pretrain_quality.py --set train.max_steps=20   a quick smoke run
    python benchmarks/pretrain_quality.py --compressors-only         just the compressor figures

Prints one JSON line on stdout; training progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import lzma
import sys
import time

from llmos import checkpoint
from llmos.config import DataConfig, RunConfig, load_config
from llmos.data.prepare import split_documents
from llmos.data.shards import read_manifest
from llmos.data.sources import load_corpus

PRESET = "cpu-tiny"
RUN_NAME = "bench-quality"
XZ_PRESET = 9 | lzma.PRESET_EXTREME  # `xz -9e`; its 64 MiB window holds the whole train text


def split_texts(data: DataConfig) -> tuple[bytes, bytes]:
    """(train, val) text as UTF-8, split exactly as `llmos.data.prepare` splits the corpus."""
    docs, _ = load_corpus(data.sources, data.max_doc_chars)
    train, val = split_documents(docs, data.val_fraction)
    join = lambda part: "".join(d.text for d in part).encode("utf-8")  # noqa: E731
    return join(train), join(val)


def xz_size(data: bytes) -> int:
    return len(lzma.compress(data, preset=XZ_PRESET))


def compressor_bpb(train: bytes, val: bytes) -> dict:
    bits = lambda n: round(8 * n / len(val), 4)  # noqa: E731
    log(f"compressors: {len(val):,} val bytes, {len(train):,} train bytes of context...")
    # With context: the extra bytes xz needs for the val text after the train text.
    with_context = xz_size(train + val) - xz_size(train)
    return {
        "gzip9_bpb": bits(len(gzip.compress(val, compresslevel=9))),
        "xz9e_bpb": bits(xz_size(val)),
        "xz9e_with_train_context_bpb": bits(with_context),
    }


def pretrain(cfg: RunConfig) -> dict:
    """Run the pretraining stage; its wall time, tokens seen, val bpb and eval coverage."""
    from llmos.train import pretrain as stage  # only now: it pulls in the whole trainer

    t0 = time.perf_counter()
    # The stage reports to stdout; this benchmark's stdout carries only its JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        ckpt_dir = stage.run(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    info = checkpoint.read_info(ckpt_dir)
    return {
        "wall_s": round(wall, 1),
        "train_tokens_seen": info["tokens_seen"],
        "val_bpb": round(info["metrics"]["val_bpb"], 4),
        "val_eval_fraction": round(eval_fraction(cfg), 4),
    }


def eval_fraction(cfg: RunConfig) -> float:
    """Share of the val tokens that the stage's evaluation scores. Evaluation stops after
    train.eval_tokens and at the last full window, so below 1 the model and the compressors
    are measured on different text (nearly always close enough, but worth seeing)."""
    val_tokens = read_manifest(cfg.run_dir / "data")["splits"]["val"]["tokens"]
    seq = cfg.train.seq_len
    windows = min((val_tokens - 1) // seq, -(-cfg.train.eval_tokens // seq))
    return windows * seq / val_tokens if windows else 1.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. train.max_steps=20 (repeatable)")
    ap.add_argument("--runs-dir", default="runs", help="where the bench-quality run is written")
    ap.add_argument("--compressors-only", action="store_true",
                    help="skip training; print only the compressor figures")
    args = ap.parse_args(argv)
    cfg = load_config(PRESET, args.overrides)
    cfg.name, cfg.runs_dir = RUN_NAME, args.runs_dir

    figures = compressor_bpb(*split_texts(cfg.data))
    log(f"compressors: {figures}")
    trained = {"wall_s": None, "train_tokens_seen": None, "val_bpb": None,
               "val_eval_fraction": None}
    if not args.compressors_only:
        trained = pretrain(cfg)
    val_bpb, rival = trained["val_bpb"], figures["xz9e_with_train_context_bpb"]
    print(json.dumps({
        "benchmark": "pretrain_quality",
        "preset": PRESET,
        **trained,
        **figures,
        "beats_xz_with_context": None if val_bpb is None else val_bpb < rival,
        "ratio_vs_xz_context": None if val_bpb is None else round(val_bpb / rival, 4),
    }))


if __name__ == "__main__":
    main()
