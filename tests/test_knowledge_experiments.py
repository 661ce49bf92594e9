"""The knowledge experiments: fictitious people and their facts are deterministic under a seed,
no held-out phrasing reaches training, the scorers read a model's answers right, and both
experiments run end to end on a tiny model."""

from __future__ import annotations

import json
import random

import pytest

from llmos.cli import main
from llmos.data.sources import split_of
from llmos.experiments import fictional, runs, scoring
from llmos.experiments import knowledge_extraction as ke
from llmos.experiments import reversal_curse as rc
from llmos.infer.engine import Engine, SamplingParams
from tests.conftest import random_checkpoint

TINY = ["--set", "model.dim=32", "--set", "model.n_layers=2", "--set", "model.n_heads=4",
        "--set", "model.n_kv_heads=2", "--set", "model.max_seq_len=256",
        "--set", "data.vocab_size=400", "--set", "train.batch_size=4", "--set",
        "train.seq_len=64", "--set", "train.compile=false", "--set", "train.dtype=fp32",
        "--set", "train.eval_tokens=256"]


def test_people_are_unique_and_drawn_from_the_seed():
    a = fictional.people(300, random.Random(1))
    assert a == fictional.people(300, random.Random(1)) != fictional.people(300, random.Random(2))
    assert len({p.name for p in a}) == 300
    more = fictional.people(50, random.Random(1), taken={p.name for p in a})
    assert not {p.name for p in more} & {p.name for p in a}
    descs = fictional.descriptions(200, random.Random(0))
    assert len(set(descs)) == 200 and all(d.startswith("the ") for d in descs)
    women = fictional.people(30, random.Random(0), women_only=True)
    assert all(p.female and p.name.split()[0] in fictional.FEMALE for p in women)
    with pytest.raises(ValueError, match="more than"):
        fictional.people(10**6, random.Random(0))


def test_reversal_items_are_deterministic_and_held_out():
    one, two = rc.build(12, 10, seed=3), rc.build(12, 10, seed=3)
    assert one["sentences"] == two["sentences"]
    assert [(i.prompt, i.answer, i.wrong) for i in one["items"]] == [
        (i.prompt, i.answer, i.wrong) for i in two["items"]]
    assert one["sentences"] != rc.build(12, 10, seed=4)["sentences"]
    assert not set(rc.TRAIN_FRAMES) & set(rc.TEST_FRAMES)

    training = "\n".join(one["sentences"])
    for item in one["items"]:
        if item.tags["subset"] != "in_context":
            # a held-out question is never a training sentence's opening
            assert item.prompt not in training, item.prompt
        assert item.answer not in item.wrong and len(item.wrong) == len(set(item.wrong))
    # the untrained order never appears: a name-to-description description is never followed
    # by its person's name, and a description-to-name name never by its description
    desc_of = one["desc_of"]

    def name_first(p):
        return {s.index(p.name) < s.lower().index(desc_of[p.name])
                for s in one["sentences"] if p.name in s}
    assert all(name_first(p) == {True} for p in one["subsets"]["name_to_description"])
    assert all(name_first(p) == {False} for p in one["subsets"]["description_to_name"])
    assert all(name_first(p) == {True, False} for p in one["subsets"]["both"])
    # 12 people x 4 phrasings x 2 directions for each subset, and 10 x 2 x 2 in context
    by = {}
    for i in one["items"]:
        by.setdefault((i.tags["subset"], i.tags["direction"]), []).append(i)
    assert {k: len(v) for k, v in by.items() if k[0] != "in_context"} == {
        (s, d): 48 for s in rc.SUBSETS for d in ("forward", "reverse")}
    for i in by[("in_context", "reverse")]:  # the fact and the wrong answers' facts are shown
        shown = i.prompt.lower()
        assert i.answer.strip().lower() in shown and all(w.strip().lower() in shown
                                                         for w in i.wrong)


def test_training_documents_hold_every_sentence_once_a_round_and_stay_in_training():
    sentences = [f"Fact number {k} is true." for k in range(37)]
    docs = rc.documents(sentences, rounds=3, val_fraction=0.3, seed=0)
    assert all(split_of(d, 0.3) == "train" for d in docs)
    counts = {s: sum(d.count(s) for d in docs) for s in sentences}
    assert set(counts.values()) == {3}
    held = rc.held_out_documents([("Ann Vale", "the poet of the iron map")], 5, 0.3, seed=0)
    assert len(held) == 5 and all(split_of(d, 0.3) == "val" for d in held)
    with pytest.raises(ValueError, match="no document landed"):
        runs.in_split(lambda: "always the same", "val", 0.0, tries=5)


def test_the_shared_tokenizer_follows_the_experiment_text(tmp_path, capsys):
    texts = [f"Ann Vale was born in Port Alder in {1900 + k}." for k in range(50)]
    path = runs.shared_tokenizer(tmp_path, texts, 300)
    first = (tmp_path / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    assert runs.shared_tokenizer(tmp_path, texts, 300) == path  # the same text: reused
    assert (tmp_path / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == first
    runs.shared_tokenizer(tmp_path, texts + ["Zebedee Quartermain works in Westerly."], 300)
    assert "training the tokenizer again" in capsys.readouterr().out


def test_biographies_single_augmented_and_questions():
    data = ke.build(40, seed=1, val_fraction=0.05)
    assert data["single"] == ke.build(40, seed=1, val_fraction=0.05)["single"]
    bios = data["bios"]
    for bio, text in zip(bios, data["single"]):
        name = bio.person.name
        assert text.startswith(name) and text.count(name) == 1  # pronouns after
        assert all(v in text for v in bio.attributes().values())
        assert split_of(text, 0.05) == "train"
    assert len(data["augmented"]) == 5 * len(bios)
    for k, text in enumerate(data["augmented"]):
        bio = bios[k // 5]
        assert text.count(bio.person.name) == 6  # the full name in every sentence
    assert all(split_of(t, 0.05) == "val" for t in data["held_out"])
    # questions are taught about the training half only, and asked about both halves
    test_names = {b.person.name for b in data["test_half"]}
    taught = "\n".join(data["qa_docs"])
    assert not any(n in taught for n in test_names)
    assert all(b.person.name in taught for b in data["train_half"])
    asked = {(i.tags["half"], i.tags["attribute"]) for i in data["items"]}
    assert asked == {(h, a) for h in ("train", "test") for a in (*ke.ATTRIBUTES, "person")}
    item = next(i for i in data["items"] if i.tags["attribute"] == "employer")
    assert item.prompt.endswith("\nAnswer:") and item.answer.startswith(" ")
    # a taught pair reads exactly as a question and its scored answer do
    for i in data["items"]:
        if i.tags["half"] == "train":
            assert i.prompt + i.answer in taught, i.prompt
    assert 0 < ke.name_blind(data["test_half"])["major"] < 1


def test_scores_follow_greedy_decoding(tmp_path):
    texts = ["Daphne Vale is the poet of the iron map. " * 3, "Who is it? It is Ann. " * 3]
    ckpt = random_checkpoint(tmp_path / "m", texts, vocab=300, max_seq_len=64)
    from llmos import checkpoint, tokenizer

    model = checkpoint.load_model(ckpt).eval()
    tok = tokenizer.load(ckpt / "tokenizer.json")
    prompt = "Daphne Vale is"
    ids = [tokenizer.eot_id(tok)] + tok.encode(prompt).ids
    greedy = Engine(model).generate([ids], SamplingParams(4, temperature=0.0))[0]
    # the longest start of the greedy answer whose text tokenizes back to the same tokens
    k = next(k for k in range(4, 0, -1) if tok.encode(tok.decode(greedy[:k])).ids == greedy[:k])
    own = tok.decode(greedy[:k])
    other = next(tok.decode([t]) for t in range(tok.get_vocab_size()) if t != greedy[0]
                 and tok.decode([t]).strip() and tok.encode(tok.decode([t])).ids == [t])
    items = [scoring.Item("d", prompt, own, [other]), scoring.Item("d", prompt, other, [own])]
    rows = scoring.score(model, tok, items)
    assert rows[0]["exact"] and not rows[1]["exact"]
    assert rows[0]["first"] == (rows[0]["logprob"] > rows[1]["logprob"]) != rows[1]["first"]
    assert rows[0]["logprob"] == pytest.approx(rows[1]["wrong_logprob"], abs=1e-3)
    assert rows[0]["choices"] == 2 and rows[0]["who"] == "d"


def test_summarize_hand_made_rows():
    rows = [{"who": w, "exact": e, "first": f, "choices": 10, "logprob": lp,
             "wrong_logprob": -5.0}
            for w, e, f, lp in [("a", True, True, -1.0), ("a", True, True, -2.0),
                                ("b", False, True, -4.0), ("b", False, False, -6.0)]]
    m = scoring.summarize(rows)
    assert m["n"] == 4 and m["people"] == 2
    assert m["accuracy"] == 0.5 and m["rank_accuracy"] == 0.75 and m["chance"] == 0.1
    assert m["logprob_gap"] == pytest.approx((4 + 3 + 1 - 1) / 4)
    assert m["ci"][0] <= 0.5 <= m["ci"][1] and m["gap_ci"][0] <= m["logprob_gap"]
    assert scoring.summarize([]) == {"n": 0}


@pytest.mark.slow
def test_reversal_curse_end_to_end(tmp_path, corpus_dir, capsys):
    out = tmp_path / "rc"
    args = ["experiment", "reversal-curse", "--source", str(corpus_dir), "--people", "10",
            "--rounds", "1", "--reading", "20", "--steps", "4", "--out", str(out), *TINY]
    main(args)
    results = json.loads((out / "results.json").read_text())
    assert set(results["subsets"]) == {*rc.SUBSETS, "in_context"}
    for m in results["subsets"].values():
        assert set(m) == {"forward", "reverse"}
        assert {"accuracy", "ci", "rank_accuracy", "logprob_gap"} <= set(m["forward"])
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 4 * 10 * 8 + 60 * 4
    assert (out / "reversal.png").stat().st_size > 0
    assert "| name to description |" in (out / "results.md").read_text()
    main(args)  # the run is reused, not repeated
    assert "already trained" in capsys.readouterr().out
    # continuing a base checkpoint on the facts alone
    main(["experiment", "reversal-curse", "--people", "10", "--rounds", "1", "--steps", "3",
          "--reading", "0",
          "--base", str(out / "pretrained" / "base"), "--out", str(tmp_path / "ft"), *TINY])
    ft = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert ft["mode"] == "finetune" and ft["steps"] == 3
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["experiment", "reversal-curse", "--people", "3", "--out", str(out)])
    assert "--people must be at least 10" in capsys.readouterr().err


@pytest.mark.slow
def test_knowledge_extraction_end_to_end(tmp_path, capsys):
    out = tmp_path / "ke"
    main(["experiment", "knowledge-extraction", "--people", "24", "--steps", "4",
          "--qa-steps", "2", "--conditions", "single,mixed", "--out", str(out), *TINY])
    results = json.loads((out / "results.json").read_text())
    assert set(results["conditions"]) == {"single", "mixed"}
    for m in results["conditions"].values():
        assert m["test"]["people"] == 12 and m["test"]["n"] == 72
        assert m["inverse"]["n"] == 12 and set(m["per_attribute"]) == set(ke.ATTRIBUTES)
    assert (out / "single-qa" / "base" / "model.safetensors").exists()
    assert not (out / "mixed-qa").exists()
    assert "| single |" in (out / "results.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["experiment", "knowledge-extraction", "--conditions", "bogus", "--out", str(out)])
    assert "choose from single, augmented, mixed" in capsys.readouterr().err


def test_an_interrupted_run_stops_the_experiment(tmp_path, monkeypatch, capsys):
    from llmos.train import pretrain

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "llmos.json").write_text(json.dumps({"step": 3, "final": False}))
    monkeypatch.setattr(pretrain, "run", lambda cfg, **kw: saved)  # as after a Ctrl-C
    with pytest.raises(SystemExit) as stop:
        main(["experiment", "reversal-curse", "--people", "10", "--rounds", "1", "--reading",
              "0", "--out", str(tmp_path / "rc"), *TINY])
    assert stop.value.code == 130
    assert "stopped at a checkpoint before its last step" in capsys.readouterr().err
    assert not (tmp_path / "rc" / "results.json").exists()
