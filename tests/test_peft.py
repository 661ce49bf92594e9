"""LoRA adapters in PEFT's layout, checked against the real `peft` and `transformers`: llmos's
adapters load with `PeftModel.from_pretrained` onto the transformers model of the same base and
give llmos's logits; adapters made with `peft` (fused parts and not, rsLoRA, per-module ranks
and alphas, lm_head) load in llmos with peft's logits, merged or not; what llmos cannot
represent is refused naming the field; llmos's earlier adapter.json layout still loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmos import checkpoint
from llmos.config import ModelConfig
from llmos.model import Transformer
from llmos.train import lora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLMOS_TARGETS = ["wqkv", "wo", "w13", "w2"]


def tiny_cfg() -> ModelConfig:
    # q (32 rows), k and v (16 each) and gate/up (48 each) all differ: a part taken from the
    # wrong rows of a fused matrix cannot go unnoticed.
    return ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
                       max_seq_len=32, tie_embeddings=False)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A random base model written as transformers reads it: config.json + model.safetensors."""
    torch.manual_seed(0)
    model = Transformer(tiny_cfg())
    model.reset_parameters(std=0.2)  # large enough that logits vary token to token
    d = tmp_path_factory.mktemp("base")
    (d / "config.json").write_text(json.dumps(checkpoint.hf_config(model.cfg, eos_token_id=0)))
    save_file(checkpoint.to_hf_state_dict(model), str(d / "model.safetensors"))
    return d


def hf_model(base_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()


def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, tiny_cfg().vocab_size, (2, 12), generator=g)


@torch.no_grad()
def llmos_logits(model):
    return model.eval()(tokens())


@torch.no_grad()
def hf_logits(model):
    return model(tokens()).logits


def randomize_llmos_b(model):
    torch.manual_seed(2)
    for update in lora.adapters(model).values():
        update.B.data.normal_(std=0.3)


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


# ---- llmos -> peft -----------------------------------------------------------------------------


def test_llmos_adapter_loads_in_peft_with_the_same_logits(base_dir, tmp_path):
    model = checkpoint.load_model(base_dir)
    before = llmos_logits(model)
    lora.add_adapters(model, rank=4, alpha=8, names=LLMOS_TARGETS)
    randomize_llmos_b(model)
    ours = llmos_logits(model)
    assert max_diff(ours, before) > 0.1  # the adapter changes the model, so the test can fail
    lora.save_adapter(model, tmp_path / "adapter", 4, 8, LLMOS_TARGETS, str(base_dir))

    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", 4, 8)
    assert sorted(cfg["target_modules"]) == sorted(ALL)
    assert cfg["base_model_name_or_path"] == str(base_dir.resolve())
    theirs = peft.PeftModel.from_pretrained(hf_model(base_dir), str(tmp_path / "adapter"))
    # Every module got its adapter (none left at peft's zero-B initialization).
    assert sum(name.endswith("lora_B.default.weight") for name, _ in
               theirs.named_parameters()) == 2 * len(ALL)
    diff = max_diff(hf_logits(theirs.eval()), ours)
    print(f"llmos -> peft: max logit difference {diff:.2e}")
    assert diff < 1e-4


def test_llmos_adapter_round_trips_at_its_own_rank(base_dir, tmp_path):
    model = checkpoint.load_model(base_dir)
    lora.add_adapters(model, rank=3, alpha=5, names=LLMOS_TARGETS)
    randomize_llmos_b(model)
    lora.save_adapter(model, tmp_path, 3, 5, LLMOS_TARGETS, "some/base")
    again = checkpoint.load_model(base_dir)
    meta = lora.load_adapter(again, tmp_path)
    assert meta["format"] == "peft" and meta["base"] == "some/base"
    # The parts of wqkv and w13 share one A, so they join back into one rank-3 adapter.
    for name, update in lora.adapters(again).items():
        original = lora.adapters(model)[name]
        assert torch.equal(update.A, original.A) and torch.equal(update.B, original.B)
        assert update.scale == pytest.approx(5 / 3)
    torch.testing.assert_close(llmos_logits(again), llmos_logits(model), atol=0, rtol=0)


# ---- peft -> llmos -----------------------------------------------------------------------------

PEFT_CONFIGS = {
    "all-modules": dict(r=4, lora_alpha=8, target_modules=ALL),
    # q and v without k: wqkv gets a block-diagonal adapter with k's rows at zero; per-module
    # rank and alpha; rsLoRA's alpha / sqrt(r)
    "parts-rslora-patterns": dict(r=4, lora_alpha=6, target_modules=["q_proj", "v_proj",
                                                                     "up_proj", "o_proj"],
                                  use_rslora=True, rank_pattern={"v_proj": 2},
                                  alpha_pattern={"layers.1.self_attn.q_proj": 3}),
    "lm-head": dict(r=2, lora_alpha=2, target_modules=["down_proj", "lm_head"]),
    "one-layer": dict(r=2, lora_alpha=4, target_modules=["k_proj", "gate_proj"],
                      layers_to_transform=[1]),
}


def peft_adapter(base_dir, out, **kw):
    """An adapter made and saved by peft, its B matrices randomized (peft starts them at zero);
    returns the peft model's logits."""
    torch.manual_seed(3)
    model = peft.get_peft_model(hf_model(base_dir), peft.LoraConfig(task_type="CAUSAL_LM", **kw))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.3)
    model.save_pretrained(str(out))
    return hf_logits(model.eval())


@pytest.mark.parametrize("kind", PEFT_CONFIGS)
def test_peft_adapter_loads_in_llmos_with_the_same_logits(base_dir, tmp_path, kind):
    theirs = peft_adapter(base_dir, tmp_path / "adapter", **PEFT_CONFIGS[kind])
    assert max_diff(theirs, hf_logits(hf_model(base_dir))) > 0.1  # the adapter matters
    model = checkpoint.load_model(base_dir)
    meta = lora.load_adapter(model, tmp_path / "adapter")
    assert meta["format"] == "peft"
    ours = llmos_logits(model)
    diff = max_diff(ours, theirs)
    print(f"peft -> llmos ({kind}): max logit difference {diff:.2e}")
    assert diff < 1e-4
    merged = llmos_logits(lora.merge(model))
    assert not lora.adapters(model)
    assert max_diff(merged, theirs) < 1e-4


def test_partial_parts_become_a_block_diagonal_adapter(base_dir, tmp_path):
    peft_adapter(base_dir, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = checkpoint.load_model(base_dir)
    lora.load_adapter(model, tmp_path)
    update = lora.adapters(model)["layers.0.attn.wqkv"]
    assert update.A.shape == (8, 32) and update.B.shape == (64, 8)
    assert not update.B[32:48].any()  # k's rows: no adapter, no change
    assert not update.B[:32, 4:].any() and not update.B[48:, :4].any()


# ---- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, field", [
    (dict(use_dora=True), "use_dora"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(bias="lora_only"), "bias"),
])
def test_peft_features_llmos_cannot_represent_are_refused_by_name(base_dir, tmp_path, kw, field):
    peft_adapter(base_dir, tmp_path, r=2, lora_alpha=4, target_modules=["q_proj"], **kw)
    model = checkpoint.load_model(base_dir)
    with pytest.raises(ValueError, match=field):
        lora.load_adapter(model, tmp_path)
    assert not lora.adapters(model)  # refused before anything was attached


def test_unsupported_modules_and_configs_are_refused(base_dir, tmp_path):
    peft_adapter(base_dir, tmp_path, r=2, lora_alpha=4, target_modules=["embed_tokens"])
    with pytest.raises(ValueError, match="lora_embedding_A"):
        lora.load_adapter(checkpoint.load_model(base_dir), tmp_path)
    cfg_path = tmp_path / "adapter_config.json"
    peft_adapter(base_dir, tmp_path, r=2, lora_alpha=4, target_modules=["q_proj"])
    for edit, field in [({"peft_type": "IA3"}, "peft_type"),
                        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
                        ({"r": 3}, "r=3")]:
        cfg = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps(cfg | edit))
        with pytest.raises(ValueError, match=field):
            lora.load_adapter(checkpoint.load_model(base_dir), tmp_path)
        cfg_path.write_text(json.dumps(cfg))


def test_a_changed_base_weight_saved_with_the_adapter_is_refused(base_dir, tmp_path):
    # With lm_head targeted peft saves lm_head's whole base weight too, and loads it over the
    # base's: equal to ours it is ignored (above), different it is refused.
    peft_adapter(base_dir, tmp_path, r=2, lora_alpha=4, target_modules=["lm_head"])
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    weights["base_model.model.lm_head.base_layer.weight"][0, 0] += 1.0
    save_file(weights, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="its own lm_head weights"):
        lora.load_adapter(checkpoint.load_model(base_dir), tmp_path)


def test_lm_head_adapters_need_untied_embeddings(base_dir, tmp_path):
    # Merged into a tied lm_head, the update would change the embedding matrix too.
    peft_adapter(base_dir, tmp_path, r=2, lora_alpha=4, target_modules=["lm_head"])
    tied = checkpoint.load_model(base_dir)
    tied.cfg.tie_embeddings = True
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        lora.load_adapter(tied, tmp_path)
    with pytest.raises(ValueError, match="untied"):
        lora.add_adapters(tied, rank=2, alpha=4, names=["lm_head"])


def test_an_adapter_for_another_model_is_refused(base_dir, tmp_path):
    peft_adapter(base_dir, tmp_path, r=2, lora_alpha=4, target_modules=["gate_proj"])
    other = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=64, max_seq_len=32))
    with pytest.raises(ValueError, match="gate_proj: lora_B has 48 rows"):
        lora.load_adapter(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load_adapter(other, tmp_path / "nothing")


# ---- llmos's earlier layout --------------------------------------------------------------------


def test_the_earlier_adapter_json_layout_still_loads(base_dir, tmp_path):
    model = checkpoint.load_model(base_dir)
    lora.add_adapters(model, rank=2, alpha=4, names=["wqkv", "w2"])
    randomize_llmos_b(model)
    # What llmos wrote before the PEFT layout: its parameter names, rank/alpha/targets in JSON.
    save_file(lora.adapter_state(model), str(tmp_path / "adapter.safetensors"))
    (tmp_path / "adapter.json").write_text(json.dumps(
        {"rank": 2, "alpha": 4, "targets": ["wqkv", "w2"], "base": "b"}))
    again = checkpoint.load_model(base_dir)
    assert lora.load_adapter(again, tmp_path)["rank"] == 2
    torch.testing.assert_close(llmos_logits(again), llmos_logits(model), atol=0, rtol=0)


# ---- end to end: llmos sft --lora-rank -> AutoPeftModelForCausalLM ---------------------------


def test_a_lora_sft_run_loads_in_peft_from_its_adapter_folder(tmp_path_factory, tmp_path,
                                                              corpus_dir):
    from conftest import pretrained_tiny, write_jsonl

    from llmos.train import sft

    cfg, ckpt = pretrained_tiny(tmp_path_factory, corpus_dir, "peftbase", max_steps=2,
                                max_seq_len=128)
    chats = [{"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                           {"role": "assistant", "content": f"It is {i + 1}."}]}
             for i in range(12)]
    cfg.sft.sources = [str(write_jsonl(tmp_path / "chats.jsonl", chats))]
    cfg.sft.eval_items, cfg.sft.lora_rank, cfg.sft.lora_alpha = 0, 4, 8
    for k, v in dict(max_steps=6, batch_size=4, seq_len=128, warmup_steps=1, lr=3e-2,
                     eval_every=0, dtype="fp32").items():
        setattr(cfg.sft.train, k, v)
    out = sft.run(cfg, ckpt, tmp_path / "sft-lora")
    # base_model_name_or_path names the parent, so the adapter folder alone is enough.
    theirs = peft.AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter")).eval()
    x = torch.randint(0, cfg.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = checkpoint.load_model(out).eval()(x)
        base = checkpoint.load_model(ckpt).eval()(x)
        diff = max_diff(theirs(x).logits, merged)
    print(f"sft run -> peft: max logit difference {diff:.2e}")
    assert max_diff(merged, base) > 1e-3  # training moved the adapters off zero
    assert diff < 1e-4


def test_llmos_import_peft_writes_a_merged_checkpoint(tmp_path, capsys):
    """`llmos import peft`: a peft adapter folded into its base, a checkpoint that loads like
    any other and gives the peft model's logits."""
    from test_export import make_checkpoint

    from llmos.cli import main

    base = make_checkpoint(tmp_path, "untied")
    theirs = peft_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL)
    main(["import", "peft", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")])
    assert "merged" in capsys.readouterr().out  # the base came from the adapter's own config
    model = checkpoint.load_model(tmp_path / "merged")
    assert not lora.adapters(model)
    assert max_diff(llmos_logits(model), theirs) < 1e-4
    info = checkpoint.read_info(tmp_path / "merged")
    assert info["stage"] == "adapter" and info["parent"] == str(base)
    assert info["lora"] == {"format": "peft", "rank": 4, "alpha": 8}
    with pytest.raises(SystemExit):  # an existing output is not replaced unasked
        main(["import", "peft", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")])
    assert "--overwrite" in capsys.readouterr().err
