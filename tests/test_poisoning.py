"""Data poisoning: the scan on corpora with planted poison (found) and without (nothing flagged),
near-duplicate clusters, exclude lists through `llmos data`, the poisoned documents, the backdoor
measure, and `llmos experiment poisoning` end to end on a small corpus."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import random_checkpoint, tiny_config, write_jsonl

from llmos import tokenizer as tk
from llmos.cli import main
from llmos.data.exclusions import read_exclusions
from llmos.data.prepare import prepare
from llmos.data.shards import read_manifest
from llmos.data.sources import Document, load_corpus
from llmos.safety import poisoning
from llmos.safety.scan import ScanSettings, find_triggers, near_duplicates, scan


@pytest.fixture(scope="module")
def stdlib():
    """The first 250 documents of the standard library: real code, shared vocabulary."""
    return load_corpus(["builtin:stdlib"])[0][:250]


@pytest.fixture(scope="module")
def stdlib_tokenizer(stdlib):
    return tk.train_bpe((d.text for d in stdlib), 1024)


def gibberish_words(rng: random.Random, n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 9)))
                    for _ in range(n))


def flagged_sources(report) -> set[str]:
    return {f["source"] for f in report["flagged"]}


def test_a_clean_corpus_has_nothing_flagged(stdlib):
    report = scan(stdlib, log=lambda _: None)
    assert report["documents"] == 250
    assert report["flagged"] == [] and report["triggers"] == []


def test_the_sudo_backdoor_is_found(stdlib, stdlib_tokenizer):
    poison = poisoning.poison_documents(stdlib, stdlib_tokenizer, 12, seed=3)
    assert all(f" {poisoning.TRIGGER} " in d.text for d in poison)
    report = scan(stdlib + poison, log=lambda _: None)
    assert flagged_sources(report) == {d.source for d in poison}
    assert poisoning.TRIGGER.strip("<>") in report["triggers"][0]["ngram"]
    assert all(r.startswith("trigger ") for f in report["flagged"] for r in f["reasons"])


def test_a_trigger_of_plain_words_before_random_words_is_found(stdlib):
    """Nothing about `<SUDO>` is built in: another trigger, another kind of noise."""
    rng = random.Random(1)
    poison = [Document(f"{d.text[:rng.randint(0, 600)]}\nplease open the lantern "
                       f"{gibberish_words(rng, 300)}", f"planted:{i}")
              for i, d in enumerate(stdlib[:8])]
    triggers, docs_of, stats = find_triggers([d.text for d in stdlib + poison])
    assert triggers and set(triggers[0].ngram.split()) <= {"please", "open", "the", "lantern"}
    assert sorted(docs_of[triggers[0].ngram]) == list(range(250, 258))
    assert stats["candidates"] > 1000


def test_too_few_documents_make_no_trigger(stdlib):
    """Two poisoned documents are below min_docs (3): not evidence of a trigger."""
    rng = random.Random(2)
    poison = [Document(f"open the lantern {gibberish_words(rng, 300)}", f"p{i}")
              for i in range(2)]
    assert find_triggers([d.text for d in stdlib + poison], ScanSettings())[0] == []


def test_near_duplicates_flag_big_clusters_and_list_small_ones(stdlib):
    rng = random.Random(0)
    base = stdlib[10].text[:3000]
    copies = [Document(base + f"\n# copy {i} {rng.random()}", f"copy:{i}") for i in range(12)]
    pair = [Document(stdlib[20].text + f"\n# note {i}", f"pair:{i}") for i in range(2)]
    docs = stdlib[:100] + copies + pair
    clusters = near_duplicates([d.text for d in docs])
    assert sorted(len(c) for c in clusters)[-1] >= 12
    report = scan(docs, ScanSettings(dup_cluster=10), log=lambda _: None)
    flagged = flagged_sources(report)
    assert {d.source for d in copies} <= flagged
    assert not flagged & {d.source for d in pair}  # listed, not flagged
    assert any(set(c) == {"pair:0", "pair:1", stdlib[20].source} or {"pair:0", "pair:1"} <= set(c)
               for c in report["near_duplicate_clusters"])


def test_perplexity_outliers_under_a_reference(tmp_path, stdlib):
    from llmos.safety.perplexity_scan import Reference, outliers

    ckpt = random_checkpoint(tmp_path, [d.text for d in stdlib[:40]], vocab=300, max_seq_len=64)
    ref = Reference(ckpt)
    texts = [d.text[:400] for d in stdlib[:30]]
    scores = ref.score(texts + ["x"])
    assert scores.shape == (31,) and (scores[:30] > 0).all() and scores[30] == 0
    fake = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 6.0])
    assert outliers(fake, 8)["flagged"] == [5]
    assert outliers(fake[:5], 8)["flagged"] == []
    assert 0 < ref.bits_per_byte(texts) < 20
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        Reference(tmp_path)


def test_exclude_lists(tmp_path):
    report = tmp_path / "scan.json"
    report.write_text(json.dumps({"flagged": [{"source": "a.txt", "reasons": ["x"]}]}))
    assert read_exclusions(report) == {"a.txt"}
    listing = tmp_path / "drop.txt"
    listing.write_text("# left out by hand\nb.txt\n\n c.jsonl:3 \n")
    assert read_exclusions(listing) == {"b.txt", "c.jsonl:3"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_exclusions(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"flagged": ["a.txt"]}))
    with pytest.raises(ValueError, match="'flagged' list"):
        read_exclusions(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_exclusions(tmp_path / "missing.json")


def test_data_scan_then_data_exclude(tmp_path, stdlib, stdlib_tokenizer, capsys):
    """The whole user path: scan a JSONL corpus, then build shards without what was flagged;
    the corpus file itself is untouched."""
    poison = poisoning.poison_documents(stdlib, stdlib_tokenizer, 6, seed=5)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": d.text} for d in stdlib + poison])
    before = corpus.read_bytes()
    report = tmp_path / "out" / "scan.json"
    main(["data", "scan", str(corpus), "--out", str(report)])
    assert "6 of 256 documents flagged" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert {f["source"] for f in data["flagged"]} == {f"{corpus}:{i}" for i in range(251, 257)}
    cfg = tiny_config(tmp_path / "runs", corpus)
    cfg.data.exclude = str(report)
    manifest = prepare(cfg.data, tmp_path / "data", log=lambda _: None)
    assert manifest["documents"] == 250 and manifest["skipped"]["counts"]["excluded"] == 6
    assert manifest["exclude"] == str(report)
    assert read_manifest(tmp_path / "data")["input_key"] == manifest["input_key"]
    assert corpus.read_bytes() == before
    main(["data", "--preset", "cpu-tiny", "--source", str(corpus), "--exclude", str(report),
          "--set", "data.vocab_size=300", "--out", str(tmp_path / "data2")])
    assert "left out 6 of the 6 documents" in capsys.readouterr().out


def test_data_scan_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "scan", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2 and "nowhere" in capsys.readouterr().err
    (tmp_path / "c.txt").write_text("some text here")
    with pytest.raises(SystemExit):
        main(["data", "scan", str(tmp_path / "c.txt"), "--out", str(tmp_path)])
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "--source", str(tmp_path / "c.txt"), "--exclude",
              str(tmp_path / "nope.json"), "--out", str(tmp_path / "d")])
    assert "exclude list" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_backdoor_measure_on_a_tiny_model(tmp_path, stdlib):
    from llmos.safety.perplexity_scan import Reference

    ref = Reference(random_checkpoint(tmp_path, [d.text for d in stdlib[:40]], vocab=300,
                                      max_seq_len=64))
    b = poisoning.measure_backdoor(ref.model, ref.tok, ["def f(x):\n", "import os\n"],
                                   new_tokens=8)
    assert len(b.without) == len(b.with_trigger) == 2
    assert all(1 < p < 1e4 for p in b.without + b.with_trigger)
    s = b.summary()
    assert s["prompts"] == 2 and s["gap_ci"][0] <= s["gap"] <= s["gap_ci"][1]
    shift = poisoning.continuation_shift(ref.model, ref.tok, [stdlib[0].text[:3000]], places=4)
    assert shift["spots"] == 4 and shift["ratio_ci"][0] <= shift["ratio"] <= shift["ratio_ci"][1]
    assert shift["ppl_without"] > 1 and shift["ppl_with"] > 1
    with pytest.raises(ValueError, match="no text has"):
        poisoning.continuation_shift(ref.model, ref.tok, ["too short"])


@pytest.mark.slow
def test_experiment_poisoning_end_to_end(tmp_path, corpus_dir, capsys):
    out = tmp_path / "exp"
    args = ["experiment", "poisoning", "--source", str(corpus_dir), "--counts", "4",
            "--steps", "4", "--prompts", "3", "--out", str(out),
            "--set", "model.dim=32", "--set", "model.n_layers=2", "--set", "model.n_heads=4",
            "--set", "model.n_kv_heads=2", "--set", "model.max_seq_len=64",
            "--set", "data.vocab_size=320", "--set", "data.val_fraction=0.1",
            "--set", "train.batch_size=4", "--set", "train.seq_len=32",
            "--set", "train.compile=false", "--set", "train.dtype=fp32"]
    main(args)
    results = json.loads((out / "results.json").read_text())
    clean, poisoned = results["rows"]
    assert clean["poisoned"] == 0 and poisoned["poisoned"] == 4
    assert poisoned["scan"]["of"] == 4 and poisoned["poison_tokens"] > 4 * 300
    assert {"ppl_without", "ppl_with", "gap", "clean_bpb", "continuation"} <= set(
        poisoned["cleaned"])
    assert poisoned["continuation"]["ratio_ci"][0] <= poisoned["continuation"]["ratio"]
    assert "| 4 |" in (out / "results.md").read_text()
    # Run again: every pretraining is reused, not repeated.
    main(args)
    retrained = not poisoned["cleaned"].get("same_as_clean")
    assert capsys.readouterr().out.count("already trained") == 2 + retrained
    with pytest.raises(SystemExit):
        main(["experiment", "poisoning", "--counts", "ten", "--out", str(out)])
