"""Data layer: sources -> documents (with skip accounting) -> token shards -> batches."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import types

import numpy as np
import pytest
import torch

from llmos.data.shards import (
    HEADER_BYTES,
    ShardError,
    TokenLoader,
    iter_eval_batches,
    read_manifest,
    read_shard,
    write_manifest,
    write_shards,
)
from llmos.data.sources import (
    CorpusError,
    SkipReport,
    SourceError,
    iter_source,
    load_corpus,
    split_of,
)

# --- sources ----------------------------------------------------------------------------------


def test_stdlib_source_has_many_docs_and_no_tests():
    report = SkipReport()
    docs = list(iter_source("builtin:stdlib", report))
    assert len(docs) > 300
    sources = [d.source for d in docs]
    assert sources == sorted(sources)
    assert "builtin:stdlib:json/decoder.py" in sources
    for source in sources:
        parts = source.removeprefix("builtin:stdlib:").split("/")
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts)


def _write_parquet(path, texts):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path)


@pytest.fixture
def messy_folder(tmp_path):
    """A folder with one file of each kind a real corpus folder tends to contain."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain text document\n")
    (root / "b.md").write_text("# a heading\n\nmarkdown body\n")
    (root / "sub" / "c.py").write_text("def f():\n    return 1\n")
    (root / "d.rst").write_text("Title\n=====\n")
    lines = [
        json.dumps({"text": "jsonl one"}),
        "{not json",
        json.dumps({"other": "no text field"}),
        "",
        json.dumps({"text": "jsonl two"}),
    ]
    (root / "e.jsonl").write_text("\n".join(lines) + "\n")
    _write_parquet(root / "f.parquet", ["parquet row zero", "parquet row one"])
    (root / "g.bin.txt").write_bytes(b"looks like text\x00\x01\x02 but is binary")
    (root / "h.txt").write_bytes("caf\u00e9 in latin-1".encode("latin-1"))
    (root / "i.txt").write_text("   \n\t\n")
    (root / "j.txt").symlink_to(root / "missing-target.txt")
    (root / "k.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "dup.txt").write_text("plain text document\n")  # same text as a.txt
    os.mkfifo(root / "l.txt")  # not a regular file: reading it would block forever
    (root / ".git").mkdir()
    (root / ".git" / "HEAD.txt").write_text("hidden tooling folders are not corpus text")
    return root


def test_folder_reads_every_kind_and_counts_every_skip(messy_folder):
    docs, report = load_corpus([str(messy_folder)])
    texts = {d.text for d in docs}
    assert texts == {
        "plain text document\n",
        "# a heading\n\nmarkdown body\n",
        "def f():\n    return 1\n",
        "Title\n=====\n",
        "jsonl one",
        "jsonl two",
        "parquet row zero",
        "parquet row one",
    }
    assert report.counts == {
        "bad_record": 2,
        "binary": 1,
        "undecodable": 1,
        "empty": 1,
        "broken_symlink": 1,
        "unsupported_type": 1,
        "duplicate": 1,
        "unreadable": 1,
    }
    assert report.examples["bad_record"] == [
        f"{messy_folder}/e.jsonl:2",
        f"{messy_folder}/e.jsonl:3",
    ]
    assert report.examples["binary"] == [f"{messy_folder}/g.bin.txt"]
    assert report.examples["undecodable"] == [f"{messy_folder}/h.txt"]
    assert report.examples["unreadable"] == [f"{messy_folder}/l.txt"]
    assert report.examples["duplicate"] == [f"{messy_folder}/dup.txt"]
    assert [d.source for d in docs if d.text == "jsonl two"] == [f"{messy_folder}/e.jsonl:5"]
    assert json.loads(json.dumps(report.to_dict()))["counts"] == report.counts


def test_permission_denied_file_is_unreadable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permission bits (FIFO case covers this)")
    path = tmp_path / "secret.txt"
    path.write_text("hidden")
    path.chmod(0)
    report = SkipReport()
    assert list(iter_source(str(tmp_path), report)) == []
    assert report.counts == {"unreadable": 1}


def test_max_doc_chars_truncates_and_counts(tmp_path):
    (tmp_path / "long.txt").write_text("x" * 100)
    docs, report = load_corpus([str(tmp_path)], max_doc_chars=10)
    assert [d.text for d in docs] == ["x" * 10]
    assert report.counts == {"truncated": 1}


def test_duplicates_across_sources_are_removed(tmp_path):
    (tmp_path / "one.txt").write_text("same")
    (tmp_path / "two.jsonl").write_text(json.dumps({"text": "same"}) + "\n")
    docs, report = load_corpus([str(tmp_path / "one.txt"), str(tmp_path / "two.jsonl")])
    assert [d.source for d in docs] == [str(tmp_path / "one.txt")]
    assert report.counts == {"duplicate": 1}


def test_no_usable_text_raises_corpus_error_naming_the_spec(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    with pytest.raises(CorpusError) as err:
        load_corpus([str(tmp_path)])
    assert str(tmp_path) in str(err.value)
    assert "empty=1" in str(err.value) and "unsupported_type=1" in str(err.value)


def test_bad_specs_give_clear_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope.*no such file or folder"):
        load_corpus([str(missing)])
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_corpus([str(tmp_path / "pic.png")])
    with pytest.raises(ValueError, match="accepted source forms"):
        load_corpus(["builtin:nonsense"])
    with pytest.raises(ValueError, match="accepted source forms"):
        load_corpus(["https://example.com/data.txt"])


def test_parquet_without_text_column_is_an_error(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(SourceError, match="no 'text' column"):
        load_corpus([str(tmp_path / "t.parquet")])


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
def test_hf_source_without_datasets_says_how_to_install():
    with pytest.raises(SourceError, match=r"pip install datasets.*llmos\[hf\]"):
        load_corpus(["hf:roneneldan/TinyStories"])


def test_hf_source_offline_says_network_is_needed(monkeypatch):
    # Stands in for the datasets library on a machine with no network: load_dataset raises.
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'huggingface.co'")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(SourceError, match="hf: sources need network") as err:
        load_corpus(["hf:roneneldan/TinyStories@10"])
    assert isinstance(err.value.__cause__, ConnectionError)


def test_hf_spec_limit_must_be_a_count():
    with pytest.raises(SourceError, match="positive doc count"):
        iter_source("hf:name@lots", SkipReport())


def test_split_of_is_deterministic_and_roughly_proportional():
    texts = [f"document number {i}" for i in range(4000)]
    first = [split_of(t, 0.1) for t in texts]
    assert first == [split_of(t, 0.1) for t in texts]
    share = first.count("val") / len(texts)
    assert 0.08 < share < 0.12
    assert all(split_of(t, 0.0) == "train" for t in texts[:100])
    assert all(split_of(t, 1.0) == "val" for t in texts[:100])


# --- shards -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size, dtype", [(1000, np.uint16), (70000, np.uint32)])
def test_shards_roundtrip(tmp_path, vocab_size, dtype):
    docs = [[1, 2, 3], [vocab_size - 2] * 5, [], [7]]
    written = write_shards(docs, tmp_path, "train", eot_id=0, vocab_size=vocab_size, shard_tokens=4)
    stream = [t for doc in docs for t in doc + [0]]
    assert [w["file"] for w in written] == [f"train_{i:04d}.bin" for i in range(4)]
    assert [w["tokens"] for w in written] == [4, 4, 4, 1]  # 13 tokens with the end-of-texts
    tokens = np.concatenate([read_shard(tmp_path / w["file"]) for w in written])
    assert tokens.dtype == dtype
    assert tokens.tolist() == stream
    header = (tmp_path / "train_0000.bin").read_bytes()[:HEADER_BYTES]
    assert header[:8] == b"LLMOSTOK"
    assert struct.unpack_from("<IIQ", header, 8) == (1, np.dtype(dtype).itemsize, 4)


def test_rewriting_a_split_removes_stale_shards(tmp_path):
    write_shards([[1] * 10], tmp_path, "train", eot_id=0, vocab_size=10, shard_tokens=4)
    write_shards([[1]], tmp_path, "train", eot_id=0, vocab_size=10, shard_tokens=4)
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == ["train_0000.bin"]


def test_out_of_range_token_id_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        write_shards([[5, 99]], tmp_path, "train", eot_id=0, vocab_size=10)


def test_corrupt_and_truncated_shards_give_clear_errors(tmp_path):
    write_shards([[1, 2, 3]], tmp_path, "train", eot_id=0, vocab_size=10)
    path = tmp_path / "train_0000.bin"
    good = path.read_bytes()
    path.write_bytes(b"GARBAGE!" + good[8:])
    with pytest.raises(ShardError, match="not an llmos token shard"):
        read_shard(path)
    path.write_bytes(good[:-2])
    with pytest.raises(ShardError, match="truncated or corrupt"):
        read_shard(path)
    path.write_bytes(good[:100])
    with pytest.raises(ShardError, match="truncated"):
        read_shard(path)


def test_manifest_roundtrip(tmp_path):
    manifest = {"sources": ["builtin:stdlib"], "skipped": SkipReport().to_dict(), "name": "café"}
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    with pytest.raises(ShardError, match="no manifest.json"):
        read_manifest(tmp_path / "elsewhere")


# --- loaders ----------------------------------------------------------------------------------


@pytest.fixture
def counting_data(tmp_path):
    """A 1000-token train split where token p is p (every 50th slot is the end-of-text 999)."""
    docs = [list(range(i * 50, i * 50 + 49)) for i in range(20)]  # each followed by eot 999
    write_shards(docs, tmp_path, "train", eot_id=999, vocab_size=1000, shard_tokens=128)
    return tmp_path


def test_loader_targets_are_inputs_shifted_by_one(counting_data):
    loader = TokenLoader(counting_data, "train", batch_size=4, seq_len=16)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Row j reads lane j: the stream is cut into 4 lanes of 250 tokens (token p is p here).
    assert x[:, 0].tolist() == [0, 250, 500, 750]
    # Next step, each row carries on exactly where its inputs ended: no token is skipped.
    x2, _ = loader.next_batch()
    assert torch.equal(x2[:, 0], y[:, -1])


def test_loader_covers_each_lane_then_counts_an_epoch(counting_data):
    loader = TokenLoader(counting_data, "train", batch_size=3, seq_len=64)
    assert loader.num_tokens == 1000 and loader.lane_len == 333
    seen = set()
    for _ in range(6):  # 6 steps * 64 tokens pass the end of a 333-token lane once
        x, _ = loader.next_batch()
        seen.update(x.flatten().tolist())
    assert loader.state_dict() == {"cursor": 6 * 64 - 333, "epoch": 1}
    # Every position but the one left over by 1000 = 3 * 333 + 1 (slots 49, 99, ... hold 999).
    assert seen == {p for p in range(999) if p % 50 != 49} | {999}


def test_loader_resume_gives_identical_batches(counting_data):
    loader = TokenLoader(counting_data, "train", batch_size=2, seq_len=32)
    for _ in range(7):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # as it would travel in a checkpoint
    expected = [loader.next_batch() for _ in range(10)]
    resumed = TokenLoader(counting_data, "train", batch_size=2, seq_len=32)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, [resumed.next_batch() for _ in range(10)]):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_two_ranks_together_equal_one_rank_with_the_global_batch(counting_data):
    single = TokenLoader(counting_data, "train", batch_size=6, seq_len=20)
    ranks = [TokenLoader(counting_data, "train", 3, 20, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):  # long enough to wrap around the stream
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))
    assert single.state_dict() == ranks[0].state_dict() == ranks[1].state_dict()


def test_loader_errors_are_clear(tmp_path, counting_data):
    with pytest.raises(ShardError, match="no 'val' shards"):
        TokenLoader(counting_data, "val", batch_size=2, seq_len=8)
    with pytest.raises(ShardError, match="too few"):
        TokenLoader(counting_data, "train", batch_size=2, seq_len=5000)
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(counting_data, "train", batch_size=2, seq_len=8, rank=2, world_size=2)


def test_eval_batches_are_deterministic_and_bounded(counting_data):
    batches = list(
        iter_eval_batches(counting_data, "train", batch_size=4, seq_len=10, max_tokens=95)
    )
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]  # ceil(95 / 10) = 10 windows
    assert batches[0][0][0, :3].tolist() == [0, 1, 2]
    again = list(iter_eval_batches(counting_data, "train", batch_size=4, seq_len=10, max_tokens=95))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    everything = list(iter_eval_batches(counting_data, "train", 64, 10, max_tokens=10**9))
    assert sum(x.numel() for x, _ in everything) == (1000 - 1) // 10 * 10


def test_eval_batches_on_a_tiny_split_give_one_short_window(tmp_path):
    write_shards([[1, 2, 3]], tmp_path, "val", eot_id=0, vocab_size=10)
    [(x, y)] = list(iter_eval_batches(tmp_path, "val", batch_size=8, seq_len=16, max_tokens=100))
    assert x.tolist() == [[1, 2, 3]] and y.tolist() == [[2, 3, 0]]
