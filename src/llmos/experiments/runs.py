"""What every experiment does around its models: write a corpus, share one tokenizer between runs,
and pretrain (or continue pretraining) a run that is reused when finished and resumed when
interrupted."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.data.sources import split_of
from llmos.train import pretrain


def write_jsonl(path: Path, texts: Iterable[str]) -> Path:
    """One {"text": ...} line per document, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    tmp.replace(path)
    return path


def shuffled(texts: Iterable[str], seed: int) -> list[str]:
    """The documents in a random order, as a scraped corpus would come."""
    out = list(texts)
    random.Random(seed).shuffle(out)
    return out


def in_split(make: Callable[[], str], split: str, val_fraction: float,
             tries: int = 10_000) -> str:
    """A document from `make` (which draws afresh each call) that the data pipeline puts in
    `split`: the split goes by the text's hash, and a fact an experiment teaches must not land
    in validation (nor a held-out one in training)."""
    for _ in range(tries):
        text = make()
        if split_of(text, val_fraction) == split:
            return text
    raise ValueError(f"no document landed in {split!r} after {tries} tries "
                     f"(data.val_fraction {val_fraction})")


def packed(pieces: list[str], per_document: int, val_fraction: float, rng: random.Random,
           sep: str = " ") -> list[str]:
    """The pieces (fact sentences, question-answer pairs) in a random order, joined
    `per_document` at a time into training documents: each piece appears once, and every
    document lands in the training split (its pieces are reordered until it does)."""
    order = rng.sample(pieces, len(pieces))
    chunks = [order[i:i + per_document] for i in range(0, len(order), per_document)]
    if len(chunks) > 1 and len(chunks[-1]) < max(2, per_document // 2):
        chunks[-2] += chunks.pop()  # a short document has few orders to draw from
    return [in_split(lambda c=c: sep.join(rng.sample(c, len(c))), "train", val_fraction)
            for c in chunks]


def shared_tokenizer(out: Path, texts: Iterable[str], vocab_size: int) -> str:
    """One BPE tokenizer trained on `texts` for every run of an experiment (so their figures
    compare), trained once and reused while the texts and vocab_size stay the same."""
    texts = list(texts)
    h = hashlib.sha256(str(vocab_size).encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    tok_dir, stamp = out / "tokenizer", out / "tokenizer" / "inputs.sha256"
    have = (tok_dir / "tokenizer.json").exists()
    if have and stamp.exists() and stamp.read_text() != h.hexdigest():
        print(f"{tok_dir}: the experiment's text changed; training the tokenizer again")
        have = False
    if not have:
        tokenizers_.save(tokenizers_.train_bpe(texts, vocab_size), tok_dir, max_len=1 << 30)
    stamp.write_text(h.hexdigest())  # (a tokenizer from before stamps is taken as it is)
    return str(tok_dir / "tokenizer.json")


def pretrain_run(base_cfg: RunConfig, out: Path, name: str, sources: list[str], *,
                 tokenizer: str = "", exclude: str = "", init_from: str = "",
                 train: dict | None = None) -> Path:
    """OUT/NAME/base, pretrained on `sources` with base_cfg's settings (and `train`'s overrides
    of its train section), or continued from `init_from`'s weights. A finished run with the same
    settings and data is reused; an interrupted one continues where it stopped; one trained
    with other settings or data (an earlier run of the experiment with other options) is
    trained again."""
    cfg = RunConfig.from_dict(base_cfg.to_dict())
    cfg.name, cfg.runs_dir = name, str(out)
    cfg.data.sources, cfg.data.tokenizer, cfg.data.exclude = sources, tokenizer, exclude
    cfg.train.init_from = init_from
    for key, value in (train or {}).items():
        setattr(cfg.train, key, value)
    cfg.train.eval_every = min(cfg.train.eval_every, cfg.train.max_steps)
    info = checkpoint.read_info(cfg.run_dir / "base")
    try:
        ckpt = pretrain.run(cfg, resume=bool(info) and not info.get("final"))
    except pretrain.AlreadyTrained as e:
        print(f"{name}: {e}")
        return cfg.run_dir / "base"
    except pretrain.StaleCheckpoint as e:
        print(f"{name}: {e}: training it again")
        ckpt = pretrain.run(cfg, overwrite=True)
    if not checkpoint.read_info(ckpt).get("final"):
        # Ctrl-C or SIGTERM saved the run part-way: stop here rather than measure it.
        raise Stopped(f"{name} stopped at a checkpoint before its last step; run the same "
                      "command again to continue it")
    return ckpt


class Stopped(Exception):
    """A run was interrupted (and saved); the experiment goes no further."""
