"""Supervised finetuning: packing and its masks, the stage end to end, LoRA adapters."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import pretrained_tiny, write_jsonl

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizers_
from llmos.data.records import Conversation
from llmos.model import Transformer
from llmos.train import lora, sft


def qa(i: int) -> list[dict]:
    return [{"role": "user", "content": f"What does alpha_{i} return?"},
            {"role": "assistant", "content": f"It returns the beta of gamma after {i} steps."}]


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir):
    # a 128-token window: room to pack a few conversations per row
    return pretrained_tiny(tmp_path_factory, corpus_dir, "sftbase", max_steps=4, max_seq_len=128)


def chats(messages: list[list[dict]]) -> list[dict]:
    return [{"messages": m} for m in messages]


def test_packed_rows_give_the_losses_of_separate_conversations(base):
    cfg, ckpt = base
    tok = tokenizers_.load(ckpt)
    model = checkpoint.load_model(ckpt).eval()
    convs = [Conversation(qa(i), "t") for i in range(6)]
    packed = sft.pack(tok, convs, seq_len=128, seed=0)
    assert packed.conversations == 6 and len(packed.x) < 6  # several share a row
    with torch.no_grad():
        total = float(sft.packed_loss(model, (packed.x, packed.y, packed.pos, packed.seg), "sum"))
        alone = 0.0
        for c in convs:
            r = chat_format.render(tok, c.messages)
            x = torch.tensor([r.ids[:-1]])
            y = torch.tensor([[t if m else -100 for t, m in zip(r.ids[1:], r.mask[1:])]])
            alone += float(model(x, y, loss_reduction="sum"))
    assert total == pytest.approx(alone, rel=1e-4)
    # Only assistant tokens are trained: the mask marks the answer and <|im_end|>.
    trained = tok.decode(packed.y[packed.y != -100].tolist(), skip_special_tokens=False)
    assert "returns the beta" in trained and "What does" not in trained


def test_a_conversation_longer_than_a_row_is_counted_not_cut(base):
    _, ckpt = base
    tok = tokenizers_.load(ckpt)
    long = [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "ok"}]
    packed = sft.pack(tok, [Conversation(long, "t"), Conversation(qa(1), "t")], 128, 0)
    assert (packed.conversations, packed.too_long) == (1, 1)


def test_sft_end_to_end_records_its_parent_and_learns(base, tmp_path):
    cfg, ckpt = base
    data = write_jsonl(tmp_path / "chats.jsonl", chats([qa(i) for i in range(40)]))
    cfg.sft.sources = [str(data)]
    cfg.sft.val_fraction = 0.2
    cfg.sft.eval_items = 0
    for k, v in dict(max_steps=60, batch_size=4, seq_len=128, warmup_steps=2, lr=1e-2,
                     eval_every=0, log_every=5, dtype="fp32").items():
        setattr(cfg.sft.train, k, v)
    out = sft.run(cfg, ckpt, tmp_path / "sft")
    info = checkpoint.read_info(out)
    assert info["stage"] == "sft" and info["parent"] == str(ckpt) and info["final"]
    assert info["data"]["train_conversations"] + info["data"]["heldout_conversations"] == 40
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["stage"] == "sft" and "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    template = json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    assert template == chat_format.CHAT_TEMPLATE
    # The finetuned model answers a training question in the chat format.
    model, tok = checkpoint.load_model(out), tokenizers_.load(out)
    from llmos.agent.loop import engine_stream, final_text, respond
    from llmos.infer.engine import Engine, SamplingParams
    events = list(respond(engine_stream(Engine(model)), tok, qa(3)[:1],
                          SamplingParams(max_new_tokens=24, temperature=0.0)))
    assert final_text(events).startswith("It returns the beta of")


def test_lora_trains_only_adapters_and_merges_back(base, tmp_path):
    cfg, ckpt = base
    data = write_jsonl(tmp_path / "chats.jsonl", chats([qa(i % 5) for i in range(20)]))
    cfg.sft.sources, cfg.sft.eval_items, cfg.sft.lora_rank = [str(data)], 0, 4
    for k, v in dict(max_steps=10, batch_size=4, seq_len=128, warmup_steps=1, lr=1e-2,
                     eval_every=0, dtype="fp32").items():
        setattr(cfg.sft.train, k, v)
    out = sft.run(cfg, ckpt, tmp_path / "sft-lora")
    assert (out / "adapter" / "adapter_model.safetensors").exists()  # PEFT's layout
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4

    base_model = checkpoint.load_model(ckpt)
    merged_saved = checkpoint.load_model(out)
    # Embeddings are not adapted: they stay exactly the parent's.
    assert torch.equal(base_model.embed.weight, merged_saved.embed.weight)
    assert not torch.equal(base_model.layers[0].attn.wqkv.weight,
                           merged_saved.layers[0].attn.wqkv.weight)
    # Base + adapter, merged here, equals the merged checkpoint the stage wrote.
    lora.load_adapter(base_model, out / "adapter")
    merged_here = lora.merge(base_model)
    x = torch.randint(0, merged_here.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(merged_here(x), merged_saved(x), atol=1e-5, rtol=1e-5)


def test_lora_starts_at_the_base_model():
    cfg = tiny_model_cfg()
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, 8))
    before = model(x).detach()
    n = lora.add_adapters(model, rank=2, alpha=4, names=["wqkv", "wo", "w13", "w2"])
    assert 0 < n < model.num_params() // 2
    assert all(not p.requires_grad for name, p in model.named_parameters()
               if "parametrizations" not in name or name.endswith("original"))
    torch.testing.assert_close(model(x), before)


def tiny_model_cfg():
    from llmos.config import ModelConfig
    return ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=32)
