"""Pretraining text mixed into SFT (train/text_mix.py), and the grown held-out sets."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from conftest import pretrained_tiny, write_jsonl

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.data.records import Conversation, prompt_of
from llmos.data.shards import TokenLoader
from llmos.train import sft, text_mix


def qa(i: int) -> list[dict]:
    return [{"role": "user", "content": f"What does alpha_{i} return?"},
            {"role": "assistant", "content": f"It returns the beta of gamma after {i} steps."}]


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir):
    return pretrained_tiny(tmp_path_factory, corpus_dir, "mixbase", max_steps=4, max_seq_len=128)


def mixed(ckpt, text_rows=2, seq_len=64):
    tok = tokenizers_.load(ckpt)
    packed = sft.pack(tok, [Conversation(qa(i), "t") for i in range(12)], seq_len, 0)
    rows = sft.RowLoader(packed, 3, 0, "cpu")
    text = TokenLoader(text_mix.text_data_dir("", ckpt), "train", text_rows, seq_len)
    return text_mix.MixedLoader(rows, text)


def test_a_mixed_batch_holds_conversations_then_whole_text_rows(base):
    _, ckpt = base
    x, y, pos, seg, is_text = mixed(ckpt).next_batch()
    assert x.shape == y.shape == pos.shape == seg.shape == (5, 64)
    assert is_text.tolist() == [False] * 3 + [True] * 2
    assert (y[3:] != -100).all() and (y[:3] == -100).any()  # text: every token trained
    assert (pos[3:] == torch.arange(64)).all() and (seg[3:] == 0).all()
    assert (x[3:, 1:] == y[3:, :-1]).all()  # the next-token shift of one window


def test_the_mixed_loss_is_the_conversations_mean_plus_the_weighted_text_mean(base):
    _, ckpt = base
    model = checkpoint.load_model(ckpt).eval()
    batch = mixed(ckpt).next_batch()
    x, y, pos, seg, is_text = batch
    with torch.no_grad():
        got = float(text_mix.mixed_loss(model, batch, 0.5, sft.attention_mask))
        conv = float(sft.packed_loss(model, (x[:3], y[:3], pos[:3], seg[:3])))
        text = float(model(x[3:], y[3:]))
    assert got == pytest.approx(conv + 0.5 * text, rel=1e-5)


def test_the_mixed_loader_resumes_where_it_stopped(base):
    _, ckpt = base
    a = mixed(ckpt)
    for _ in range(3):
        a.next_batch()
    b = mixed(ckpt)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for want, got in zip(a.next_batch(), b.next_batch()):
        assert torch.equal(want, got)


def test_sft_with_text_reports_validation_bits_per_byte(base, tmp_path):
    cfg, ckpt = copy.deepcopy(base[0]), base[1]
    cfg.sft.sources = [str(write_jsonl(tmp_path / "c.jsonl",
                                       [{"messages": qa(i)} for i in range(30)]))]
    cfg.sft.val_fraction, cfg.sft.eval_items, cfg.sft.text_rows = 0.2, 0, 2
    for k, v in dict(max_steps=4, batch_size=3, seq_len=64, warmup_steps=1, eval_every=2,
                     dtype="fp32").items():
        setattr(cfg.sft.train, k, v)
    out = sft.run(cfg, ckpt, tmp_path / "sft")
    metrics = checkpoint.read_info(out)["metrics"]
    assert 0 < metrics["val_bpb"] < 20 and metrics["val_loss"] > 0
    assert "text" in checkpoint.load_trainer_state(out)["data"]  # the text cursor, for resume


def test_text_from_elsewhere_is_refused_by_name(base, tmp_path):
    cfg, ckpt = base
    assert text_mix.text_data_problem(text_mix.text_data_dir("", ckpt), ckpt) is None
    assert "no manifest.json" in text_mix.text_data_problem(tmp_path / "nothing", ckpt)
    other = tmp_path / "data"
    shutil.copytree(text_mix.text_data_dir("", ckpt), other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert "another tokenizer" in text_mix.text_data_problem(other, ckpt)
    cfg = copy.deepcopy(cfg)
    cfg.sft.text_rows, cfg.sft.text_data = 2, str(other)  # named by the user: an error
    cfg.sft.train.seq_len = 64
    with pytest.raises(ValueError, match="sft.text_rows=0"):
        sft.run(cfg, ckpt, tmp_path / "sft")
    assert not (tmp_path / "sft").exists()


def test_held_out_tasks_have_enough_questions_none_of_them_trained_on():
    from llmos.data.builtin.assistant import HELDOUT_AT_LEAST, IDENTITY_HELDOUT, assistant_dataset

    train, heldout = assistant_dataset()
    for task in ("mental2", "python"):
        assert sum(c.task == task for c in heldout) >= HELDOUT_AT_LEAST
    trained_subjects = {c.subject for c in train}
    assert not trained_subjects & {c.subject for c in heldout}
    trained_prompts = {m["content"] for c in train for m in prompt_of(c) if m["role"] == "user"}
    assert not trained_prompts & set(IDENTITY_HELDOUT)
    assert all(c.source == "builtin:assistant:heldout" for c in heldout)
