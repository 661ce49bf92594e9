import json

import pytest
import torch

from llmos import checkpoint
from llmos.config import ModelConfig
from llmos.model import Transformer


def small(**kw):
    base = dict(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return ModelConfig(**(base | kw))


def test_config_validates_heads():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(dim=64, n_heads=4, n_kv_heads=3).validate()
    assert ModelConfig(dim=96).ffn_hidden == 256  # 8/3 * 96 = 256, already a multiple of 64


def test_causal_no_future_leak():
    torch.manual_seed(0)
    m = Transformer(small()).eval()
    x = torch.randint(0, 300, (1, 20))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 300
    assert torch.allclose(m(x)[0, :10], m(y)[0, :10], atol=1e-6)
    assert not torch.allclose(m(x)[0, 10:], m(y)[0, 10:])


def test_param_and_flops_accounting():
    cfg = small(tie_embeddings=False)
    m = Transformer(cfg)
    per_layer = 64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * cfg.ffn_hidden + 2 * 64
    assert m.num_params() == 2 * 300 * 64 + 2 * per_layer + 64
    assert m.num_params(embedding=False) == 2 * per_layer + 64
    matmul = 2 * (per_layer - 2 * 64) + 300 * 64
    assert m.flops_per_token(64) == 6 * matmul + 12 * 2 * 64 * 64


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_loads_checkpoint_with_same_logits(tmp_path, tied):
    transformers = pytest.importorskip("transformers")
    from llmos import tokenizer as tk

    torch.manual_seed(0)
    m = Transformer(small(tie_embeddings=tied, rope_theta=5000.0)).eval()
    tok = tk.train_bpe(["hello world " * 50, "def f(x): return x"], 300)
    tk.save(tok, tmp_path / "tok", max_len=64)
    checkpoint.save(tmp_path / "ckpt", m, tmp_path / "tok", {"stage": "test"})
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        ours, theirs = m(x), hf(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    # ...and back: our loader reads what we wrote.
    again = checkpoint.load_model(tmp_path / "ckpt")
    assert torch.equal(again(x), ours)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied and cfg["num_key_value_heads"] == 2
