"""Corpus -> tokenizer -> token shards, with a manifest that makes the step reusable.

`prepare` is idempotent: the manifest records a key over the corpus content and the settings,
and a second call with the same inputs returns the existing shards without re-tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from llmos import tokenizer as tokenizers_
from llmos.config import DataConfig
from llmos.data.exclusions import read_exclusions
from llmos.data.shards import read_manifest, write_manifest, write_shards
from llmos.data.sources import Document, load_corpus, split_of

FORMAT_VERSION = 1
CHUNK_CHARS = 16_384  # piece size when documents must be cut to get a validation split


def _input_key(doc_hashes: list[str], cfg: DataConfig) -> str:
    tokenizer = (
        f"file:{tokenizers_.file_hash(cfg.tokenizer)}" if cfg.tokenizer else f"bpe:{cfg.vocab_size}"
    )
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, tokenizer, cfg.val_fraction]).encode())
    for d in doc_hashes:
        h.update(d.encode())
    return h.hexdigest()[:16]


def _chunk(doc: Document) -> list[Document]:
    """Cut a document at line breaks into pieces of about CHUNK_CHARS characters."""
    pieces, start = [], 0
    text = doc.text
    while start < len(text):
        end = text.find("\n", start + CHUNK_CHARS)
        end = len(text) if end < 0 else end + 1
        pieces.append(Document(text[start:end], f"{doc.source}#{len(pieces)}"))
        start = end
    return pieces


def split_documents(docs: list[Document], val_fraction: float):
    train = [d for d in docs if split_of(d.text, val_fraction) == "train"]
    val = [d for d in docs if split_of(d.text, val_fraction) == "val"]
    if not val and val_fraction > 0:
        # A corpus of a few big files (one novel, say) rarely puts a whole file in validation;
        # cutting the documents into pieces gives the split something to choose from.
        pieces = [p for d in docs for p in _chunk(d)]
        train = [d for d in pieces if split_of(d.text, val_fraction) == "train"]
        val = [d for d in pieces if split_of(d.text, val_fraction) == "val"]
        if not val and len(pieces) > 1:
            val, train = pieces[-1:], pieces[:-1]
    return train, val


def prepare(cfg: DataConfig, out_dir: str | Path, log=print) -> dict:
    out = Path(out_dir)
    t0 = time.perf_counter()
    exclude = read_exclusions(cfg.exclude) if cfg.exclude else set()
    docs, report = load_corpus(cfg.sources, cfg.max_doc_chars, exclude)
    if exclude:
        left_out = report.counts.get("excluded", 0)
        log(f"data: left out {left_out} of the {len(exclude)} documents {cfg.exclude} names"
            + ("" if left_out == len(exclude) else " (the others are not in the sources)"))
    doc_hashes = [hashlib.sha256(d.text.encode()).hexdigest() for d in docs]
    key = _input_key(doc_hashes, cfg)
    if (out / "manifest.json").exists():
        old = read_manifest(out)
        files = [s["file"] for split in old.get("splits", {}).values() for s in split["shards"]]
        if old.get("input_key") == key and all((out / f).exists() for f in files):
            log(
                f"data: reusing {out} ({old['splits']['train']['tokens']:,} train tokens; "
                f"inputs unchanged)"
            )
            return old

    train, val = split_documents(docs, cfg.val_fraction)
    # The loader walks the shards in order; a deterministic shuffle by content hash keeps
    # neighbouring files (one package's modules, one book's chapters) from arriving together.
    train.sort(key=lambda d: hashlib.sha256(d.text.encode()).digest())
    if not val:
        raise ValueError(
            "the corpus is too small for a validation split: add text, or set "
            "data.val_fraction higher"
        )
    tok_dir = out / "tokenizer"
    if cfg.tokenizer:
        tok = tokenizers_.load(cfg.tokenizer)
        log(f"data: using tokenizer {cfg.tokenizer} ({tok.get_vocab_size():,} tokens)")
    else:
        t = time.perf_counter()
        tok = tokenizers_.train_bpe((d.text for d in train), cfg.vocab_size)
        log(
            f"data: trained a {tok.get_vocab_size():,}-token BPE tokenizer in "
            f"{time.perf_counter() - t:.1f}s"
        )
    tokenizers_.save(tok, tok_dir, max_len=1 << 30)
    eot, vocab = tokenizers_.eot_id(tok), tok.get_vocab_size()

    splits = {}
    for name, part in (("train", train), ("val", val)):
        ids = (e.ids for e in _encode_in_batches(tok, [d.text for d in part]))
        shards = write_shards(ids, out, name, eot_id=eot, vocab_size=vocab)
        splits[name] = {
            "documents": len(part),
            "chars": sum(len(d.text) for d in part),
            "bytes": sum(len(d.text.encode()) for d in part),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "input_key": key,
        "sources": cfg.sources,
        "exclude": cfg.exclude or None,
        "documents": len(docs),
        "skipped": report.to_dict(),
        "tokenizer": {
            "path": "tokenizer/tokenizer.json",
            "vocab_size": vocab,
            "eot_id": eot,
            "sha256": tokenizers_.file_hash(tok_dir / "tokenizer.json"),
            "trained": not cfg.tokenizer,
        },
        "val_fraction": cfg.val_fraction,
        "splits": splits,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_manifest(out, manifest)
    tr = splits["train"]
    log(
        f"data: {len(docs):,} documents ({report.total} skipped) -> {tr['tokens']:,} train / "
        f"{splits['val']['tokens']:,} val tokens, {tr['bytes'] / max(1, tr['tokens']):.2f} "
        f"bytes/token, in {time.perf_counter() - t0:.1f}s -> {out}"
    )
    if report.total:
        log(f"data: skipped {report.summary()}")
    return manifest


def _encode_in_batches(tok, texts: list[str], batch: int = 512):
    for i in range(0, len(texts), batch):
        yield from tok.encode_batch(texts[i : i + batch], add_special_tokens=False)


def copy_tokenizer(data_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(data_dir / "tokenizer" / name, dest / name)
