"""Token shards on disk, and the loaders that turn them into training batches.

Shard format
------------
A data directory holds ``manifest.json`` and, per split, files ``{split}_{index:04d}.bin``
(``train_0000.bin``, ``train_0001.bin``, ``val_0000.bin`` ...). Each shard is::

    offset  size  field
    0       8     magic b"LLMOSTOK"
    8       4     format version, uint32 little-endian (= 1)
    12      4     dtype code, uint32 LE: 2 = uint16 tokens, 4 = uint32 tokens (bytes per token)
    16      8     token count, uint64 LE
    24      232   zero
    256     ...   the tokens, little-endian, `count` of them

Tokens are uint16 when the vocabulary has at most 65536 ids, else uint32. Every document is
followed by the end-of-text token, so a split's stream is ``doc EOT doc EOT ...``; the shards of
a split, in index order, are one stream cut every ``shard_tokens`` tokens (a document may
straddle two shards). The fixed header lets a reader memory-map the tokens without parsing.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

MAGIC = b"LLMOSTOK"
VERSION = 1
HEADER_BYTES = 256
_HEADER = struct.Struct("<8sIIQ")  # magic, version, dtype code, token count
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A shard or manifest that is missing, corrupt or truncated."""


# --- writing ----------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest shard dtype that holds every id of the vocabulary."""
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:04d}.bin"


def _atomic_write(path: Path, chunks: Iterable[bytes]) -> str:
    """Write chunks to path via a temp file + rename, so readers never see a half file.

    Returns the sha256 of what was written.
    """
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def _write_one_shard(path: Path, tokens: np.ndarray) -> str:
    header = _HEADER.pack(MAGIC, VERSION, tokens.dtype.itemsize, len(tokens))
    header += b"\0" * (HEADER_BYTES - len(header))
    return _atomic_write(path, [header, memoryview(tokens).cast("B")])


def _check_ids(doc: np.ndarray, vocab_size: int) -> None:
    # A token id outside the vocabulary would wrap silently in uint16 or crash the embedding
    # much later, far from its cause.
    if doc.size and (doc.min() < 0 or doc.max() >= vocab_size):
        raise ValueError(
            f"token id out of range [0, {vocab_size}): min {doc.min()}, max {doc.max()}"
        )


def write_shards(
    token_docs: Iterable[list[int]],
    out_dir: Path,
    split: str,
    eot_id: int,
    vocab_size: int,
    shard_tokens: int = 2**24,
) -> list[dict]:
    """Write documents (each followed by eot_id) as shards of shard_tokens tokens each.

    Returns one entry per shard, in order: {"file": name, "tokens": n, "sha256": hex of the file}.
    Older shards of the same split that this call did not rewrite are removed, so a loader
    never mixes two runs.
    """
    if not 0 <= eot_id < vocab_size:
        raise ValueError(f"eot_id {eot_id} is outside the vocabulary of size {vocab_size}")
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    buffer = np.empty(shard_tokens, dtype=dtype)
    filled = 0
    written: list[dict] = []

    def flush(n: int) -> None:
        name = shard_name(split, len(written))
        sha = _write_one_shard(out_dir / name, buffer[:n])
        written.append({"file": name, "tokens": int(n), "sha256": sha})

    for doc in token_docs:
        ids = np.asarray(doc, dtype=np.int64)
        _check_ids(ids, vocab_size)
        ids = np.append(ids, eot_id).astype(dtype)
        # Fill the buffer, spilling the rest of a long document into the next shards.
        start = 0
        while start < len(ids):
            take = min(shard_tokens - filled, len(ids) - start)
            buffer[filled : filled + take] = ids[start : start + take]
            filled += take
            start += take
            if filled == shard_tokens:
                flush(filled)
                filled = 0
    if filled:
        flush(filled)
    _remove_stale_shards(out_dir, split, keep={w["file"] for w in written})
    return written


def _split_shards(data_dir: Path, split: str) -> list[Path]:
    """The split's shard files in index order (names are zero-padded, so sorting is enough)."""
    pattern = f"{split}_[0-9][0-9][0-9][0-9].bin"
    return sorted(Path(data_dir).glob(pattern))


def _remove_stale_shards(out_dir: Path, split: str, keep: set[str]) -> None:
    for path in _split_shards(out_dir, split):
        if path.name not in keep:
            path.unlink()


# --- reading ----------------------------------------------------------------------------------


def read_shard(path: Path) -> np.ndarray:
    """The tokens of one shard as a read-only memory map, after checking header and size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"shard {path} does not exist") from None
    if len(header) < HEADER_BYTES:
        raise ShardError(f"shard {path} is truncated: {len(header)} bytes, shorter than a header")
    magic, version, code, count = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise ShardError(f"{path} is not an llmos token shard (magic {magic!r}, want {MAGIC!r})")
    if version != VERSION:
        raise ShardError(f"shard {path} has format version {version}; this llmos reads {VERSION}")
    if code not in _DTYPES:
        raise ShardError(f"shard {path} has unknown dtype code {code} (want 2 or 4): corrupt")
    dtype = _DTYPES[code]
    expected = HEADER_BYTES + count * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ShardError(
            f"shard {path} is truncated or corrupt: header says {count} tokens "
            f"({expected} bytes) but the file has {actual} bytes"
        )
    if count == 0:
        return np.empty(0, dtype=dtype)  # np.memmap refuses a zero-length map
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def write_manifest(out_dir: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(Path(out_dir) / MANIFEST, [text.encode("utf-8")])


def read_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise ShardError(f"no {MANIFEST} in {out_dir}: run `llmos data` to build the data first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path} is not valid JSON: {e}") from e


class _TokenStream:
    """A split's shards read as one long token array, without concatenating them in memory."""

    def __init__(self, data_dir: Path, split: str):
        paths = _split_shards(data_dir, split)
        if not paths:
            raise ShardError(f"no '{split}' shards ({split}_0000.bin ...) in {data_dir}")
        self.shards = [read_shard(p) for p in paths]
        # starts[i] = stream position of shard i's first token; starts[-1] = total length.
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.num_tokens = int(self.starts[-1])
        if self.num_tokens == 0:
            raise ShardError(f"the '{split}' shards in {data_dir} hold no tokens")

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream, crossing shard borders as needed."""
        out = np.empty(length, dtype=np.int64)
        done = 0
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while done < length:
            offset = start + done - int(self.starts[shard])
            take = min(length - done, len(self.shards[shard]) - offset)
            out[done : done + take] = self.shards[shard][offset : offset + take]
            done += take
            shard += 1
        return out

    def read_cyclic(self, start: int, length: int) -> np.ndarray:
        """Like read, but past the end the stream starts over (start is taken modulo length)."""
        pieces = []
        pos = start % self.num_tokens
        while length > 0:
            take = min(length, self.num_tokens - pos)
            pieces.append(self.read(pos, take))
            length -= take
            pos = 0
        return np.concatenate(pieces)


class TokenLoader:
    """Deterministic batches of (x, y) int64 tensors [batch_size, seq_len] from a split's shards.

    The split's shards form one stream, cut into G = world_size * batch_size equal lanes, one per
    row of the global batch. Each step, row j takes the window of seq_len + 1 tokens at
    ``j * lane_len + cursor``, then the cursor moves on by seq_len, so a row continues where it
    stopped and no token is skipped. Rows come from G different places in the corpus: with
    documents longer than a batch (source files often are) a batch of consecutive windows would
    be one or two documents, and its gradient that much noisier. When the cursor passes the lane
    length it starts over and the epoch counts up (the last ``num_tokens % G`` tokens fall
    outside every lane). Rank r gets rows r*B:(r+1)*B of the global batch; the walk depends only
    on the global batch size, so 2 ranks x 8 rows see exactly what 1 rank x 16 rows sees, which
    lets a run resume on a different number of GPUs.

    Within a lane the walk is in stream order, so shuffle documents before writing shards.
    """

    def __init__(self, data_dir, split: str, batch_size: int, seq_len: int, rank=0, world_size=1):
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size and seq_len must be positive ({batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.stream = _TokenStream(Path(data_dir), split)
        if self.stream.num_tokens <= seq_len:
            raise ShardError(
                f"the '{split}' split has {self.stream.num_tokens} tokens, too few for one "
                f"window of seq_len + 1 = {seq_len + 1}; lower seq_len or add data"
            )
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        # A corpus too small for G full windows gets overlapping lanes (the stream is cyclic).
        self.lane_len = max(self.stream.num_tokens // (world_size * batch_size), seq_len)
        self.cursor = 0  # offset of the next window within every lane
        self.epoch = 0

    @property
    def num_tokens(self) -> int:
        return self.stream.num_tokens

    @property
    def tokens_per_step(self) -> int:
        """Tokens one global step trains on (all ranks together)."""
        return self.world_size * self.batch_size * self.seq_len

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        first_row = self.rank * self.batch_size
        rows = [
            self.stream.read_cyclic((first_row + i) * self.lane_len + self.cursor, self.seq_len + 1)
            for i in range(self.batch_size)
        ]
        windows = torch.from_numpy(np.stack(rows))
        self.cursor += self.seq_len
        if self.cursor >= self.lane_len:
            self.cursor -= self.lane_len
            self.epoch += 1
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        cursor = int(state["cursor"])
        if not 0 <= cursor < self.lane_len:
            raise ValueError(
                f"saved cursor {cursor} is outside this split's lanes of {self.lane_len} tokens; "
                "was the data rebuilt, or the global batch size changed, since the checkpoint?"
            )
        self.cursor = cursor
        self.epoch = int(state["epoch"])


def iter_eval_batches(
    data_dir, split: str, batch_size: int, seq_len: int, max_tokens: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches over the start of a split, the same every call, for validation.

    Windows are consecutive (stride seq_len) and never wrap; it stops once max_tokens target
    tokens have been yielded or the split runs out, so the last batch may have fewer rows. A
    split shorter than seq_len + 1 gives a single shorter window rather than nothing, so a tiny
    validation set still gets a loss.
    """
    stream = _TokenStream(Path(data_dir), split)
    full_windows = (stream.num_tokens - 1) // seq_len
    wanted = -(-max_tokens // seq_len)  # ceil: the last window may pass max_tokens a little
    if full_windows == 0:
        if stream.num_tokens < 2 or max_tokens <= 0:
            return
        window = torch.from_numpy(stream.read(0, stream.num_tokens))[None]
        yield window[:, :-1].contiguous(), window[:, 1:].contiguous()
        return
    n_windows = min(full_windows, wanted)
    for first in range(0, n_windows, batch_size):
        rows = [
            stream.read(i * seq_len, seq_len + 1)
            for i in range(first, min(first + batch_size, n_windows))
        ]
        windows = torch.from_numpy(np.stack(rows))
        yield windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
