"""`llmos import hf`: random-weight Hugging Face models built here (Llama 2, Llama 3 with rope
scaling, Mistral, TinyLlama, SmolLM, an explicit head_dim) import with the same logits and the
same greedy tokens; refused architectures name what is missing; a Llama-3-style chat template
gives transformers' tokens and a mask over exactly the assistant text; LoRA SFT runs on the
imported model."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import processors

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizers_
from llmos.agent.loop import stop_ids
from llmos.cli import main
from llmos.infer.engine import Engine, SamplingParams
from llmos.model import rope_tables

transformers = pytest.importorskip("transformers")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]
# A short Llama-3-like template (the real one adds a dated system preamble and tool prompts).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
RAISES_TEMPLATE = ("{% if messages[0]['role'] != 'user' %}"
                   "{{ raise_exception('Conversations must start with a user message') }}"
                   "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What does len do?"},
    {"role": "assistant", "content": "It counts the items."},
    {"role": "user", "content": "And sum? ünïcode ✓"},
    {"role": "assistant", "content": "It adds them up."},
]


@pytest.fixture(scope="module")
def tok_dir(corpus_dir, tmp_path_factory):
    """A byte-level BPE with Llama 3's special tokens and a Llama-3-like template."""
    texts = [p.read_text() for p in sorted(corpus_dir.glob("*.py"))]
    texts += [json.dumps(CONVERSATION)] * 5
    tok = tokenizers_.train_bpe(texts, 360)
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = "<|begin_of_text|>"  # added to plain encodings, as Llama 3's tokenizer.json does
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    out = tmp_path_factory.mktemp("llama3-tok")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>",
        "model_max_length": 128, "clean_up_tokenization_spaces": False,
        "chat_template": LLAMA3_TEMPLATE}))
    return out


def build_hf(path, tok_dir, kind="llama", dtype=torch.float32, shard=False, **kw):
    """A random-weight Hugging Face model folder, weights large enough for varied greedy output."""
    vocab = tokenizers_.load(tok_dir).get_vocab_size()
    base = dict(vocab_size=vocab + 3, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None,
                tie_word_embeddings=False)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
    torch.manual_seed(0)
    model = cls[1](cls[0](**(base | kw)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    model.to(dtype).save_pretrained(path, max_shard_size="40KB" if shard else "5GB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((tok_dir / name).read_bytes())
    return path


SHAPES = {
    "llama2": dict(num_key_value_heads=4),  # MHA, untied
    "llama3": dict(rope_theta=500000.0, rope_scaling=dict(ROPE_LLAMA3)),
    "mistral": dict(kind="mistral", sliding_window=None),
    "mistral_long_window": dict(kind="mistral", sliding_window=4096),
    "tinyllama_bf16_sharded": dict(num_key_value_heads=1, dtype=torch.bfloat16, shard=True),
    "smollm_tied_fp16": dict(tie_word_embeddings=True, dtype=torch.float16),
    "head_dim_24": dict(head_dim=24),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_import_matches_transformers(shape, tok_dir, tmp_path):
    src = build_hf(tmp_path / shape, tok_dir, **SHAPES[shape])
    if SHAPES[shape].get("shard"):
        assert (src / "model.safetensors.index.json").exists()
    main(["import", "hf", str(src), "--out", str(tmp_path / "ours")])
    ours = checkpoint.load_model(tmp_path / "ours").eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    x = torch.randint(0, ours.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() < 1e-4

    prompt = x[0, :7]
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    want = hf.generate(prompt[None], max_new_tokens=40, do_sample=False)[0, 7:].tolist()
    got = Engine(ours).generate([prompt.tolist()], SamplingParams(40, temperature=0))[0]
    assert got == want and len(set(got)) > 3

    info = checkpoint.read_info(tmp_path / "ours")
    assert info["stage"] == "import" and info["source"] == str(src.resolve())
    assert info["chat_template"] == "model"
    # Our checkpoint is itself a Llama checkpoint transformers reads with the same logits.
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (again(x).logits - hf(x).logits).abs().max().item() < 1e-4


def test_llama3_rope_tables_match_transformers():
    from llmos.config import ModelConfig

    cfg = ModelConfig(dim=64, n_heads=2, rope_theta=500000.0, rope_scaling=dict(ROPE_LLAMA3),
                      max_seq_len=4096)
    hf_cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2,
                                      max_position_embeddings=4096, rope_theta=500000.0,
                                      rope_scaling=dict(ROPE_LLAMA3))
    rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_cfg)
    pos = torch.arange(4096)[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos)
    ours_cos, ours_sin = rope_tables(cfg, 4096)
    assert (ours_cos - cos[0]).abs().max() < 1e-5 and (ours_sin - sin[0]).abs().max() < 1e-5
    plain_cos, _ = rope_tables(ModelConfig(dim=64, n_heads=2, rope_theta=500000.0), 4096)
    assert (plain_cos - ours_cos).abs().max() > 1e-2  # the scaling changes low frequencies


def test_hf_config_round_trips_new_fields():
    from llmos.config import ModelConfig

    cfg = ModelConfig(vocab_size=300, dim=64, n_heads=4, n_kv_heads=2, head_size=24,
                      ffn_dim=192, rope_scaling=dict(ROPE_LLAMA3), rope_theta=500000.0)
    assert checkpoint.model_config_from_hf(checkpoint.hf_config(cfg, 0)) == cfg
    plain = ModelConfig(ffn_dim=ModelConfig().ffn_hidden)  # written exactly as before
    d = checkpoint.hf_config(plain, 0)
    assert "rope_scaling" not in d and d["head_dim"] == plain.dim // plain.n_heads
    assert checkpoint.model_config_from_hf(d) == plain


REFUSED = {
    "qwen2": ({"model_type": "qwen2"}, "attention bias"),
    "gemma": ({"model_type": "gemma"}, "Gemma's norm"),
    "mixtral": ({"model_type": "mixtral"}, "mixture-of-experts"),
    "attention_bias": ({"attention_bias": True}, "attention bias"),
    "mlp_bias": ({"mlp_bias": True}, "MLP bias"),
    "gelu": ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    "yarn": ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
    "experts": ({"num_local_experts": 8}, "mixture of experts"),
    "sliding_window": ({"model_type": "mistral", "sliding_window": 16},
                       "sliding-window attention"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_architectures_are_refused_by_name(case, tok_dir, tmp_path, capsys):
    change, feature = REFUSED[case]
    src = build_hf(tmp_path / "src", tok_dir)
    config = json.loads((src / "config.json").read_text()) | change
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as e:
        main(["import", "hf", str(src), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unsupported architecture" in err and feature in err
    assert not (tmp_path / "out").exists()


def test_bad_folders_are_clear_errors(tok_dir, tmp_path, capsys):
    def fails(src, message):
        with pytest.raises(SystemExit) as e:
            main(["import", "hf", str(src), "--out", str(tmp_path / "out")])
        assert e.value.code == 2 and message in capsys.readouterr().err

    (tmp_path / "file.txt").write_text("x")
    fails(tmp_path / "file.txt", "is not a directory")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no config.json")
    src = build_hf(tmp_path / "src", tok_dir)
    (src / "model.safetensors").unlink()
    fails(src, "no safetensors weights")
    shards = build_hf(tmp_path / "shards", tok_dir, shard=True)
    next(shards.glob("model-0000*.safetensors")).unlink()
    fails(shards, "shards named in the index are missing")


def test_help_covers_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["import", "hf", "--help"])
    text = capsys.readouterr().out
    for flag in ("SRC_DIR", "--out", "--overwrite"):
        assert flag in text


# ---- tokenizer ends and the model's own chat template ------------------------------------------


@pytest.fixture(scope="module")
def imported(tok_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    src = build_hf(root / "src", tok_dir, rope_theta=500000.0, rope_scaling=dict(ROPE_LLAMA3))
    gen = json.loads((src / "generation_config.json").read_text())
    tok = tokenizers_.load(tok_dir)
    gen["eos_token_id"] = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
    (src / "generation_config.json").write_text(json.dumps(gen))
    main(["import", "hf", str(src), "--out", str(root / "ckpt")])
    return root / "ckpt"


def test_end_tokens_come_from_the_config_files(imported):
    tok = tokenizers_.load(imported)
    eot, end = tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|end_of_text|>")
    assert tokenizers_.eot_id(tok) == eot  # tokenizer_config.json's eos_token
    assert stop_ids(tok)[:2] == [eot, end]  # then generation_config.json's
    assert json.loads((imported / "config.json").read_text())["eos_token_id"] == eot


def test_model_template_gives_transformers_tokens_and_assistant_mask(imported):
    tok = tokenizers_.load(imported)
    assert tok.chat_template is not None and tok.chat_template.source == LLAMA3_TEMPLATE
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(imported))
    for msgs, gen in ((CONVERSATION, False), (CONVERSATION[:-1], True)):
        ours = chat_format.render(tok, msgs, add_generation_prompt=gen)
        theirs = hf_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        if not isinstance(theirs, list):  # newer transformers return a BatchEncoding
            theirs = theirs["input_ids"]
        assert ours.ids == list(theirs)
        assert ours.ids[0] == tok.token_to_id("<|begin_of_text|>")
    out = chat_format.render(tok, CONVERSATION)
    trained = tok.decode([i for i, m in zip(out.ids, out.mask) if m], skip_special_tokens=False)
    assert trained == "It counts the items.<|eot_id|>It adds them up.<|eot_id|>"
    # llmos's own checkpoints keep the Python ChatML renderer.
    assert chat_format.template_for(imported.parent / "src") is None


def test_template_errors_are_chat_format_errors():
    t = chat_format.Template(RAISES_TEMPLATE)
    with pytest.raises(chat_format.ChatFormatError, match="must start with a user message"):
        chat_format.template_text(t, [{"role": "assistant", "content": "hi"}])


def test_lora_sft_and_chat_on_an_imported_model(imported, tmp_path, capsys):
    convs = tmp_path / "convs.jsonl"
    with open(convs, "w") as f:
        for i in range(24):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n")
    out = tmp_path / "sft"
    main(["sft", "--model", str(imported), "--data", str(convs), "--out", str(out),
          "--runs-dir", str(tmp_path / "runs"), "--set", "sft.lora_rank=8",
          "--set", "sft.train.max_steps=8", "--set", "sft.train.batch_size=4",
          "--set", "sft.train.seq_len=64", "--set", "sft.train.eval_every=0",
          "--set", "sft.train.warmup_steps=1", "--set", "sft.train.lr=1e-2",
          "--set", "sft.train.log_every=1", "--set", "sft.eval_items=0",
          "--set", "sft.val_fraction=0", "--set", "sft.train.dtype=fp32",
          "--set", "sft.train.compile=false"])
    metrics = [json.loads(line) for line in
               (tmp_path / "runs" / "cpu-tiny" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    info = checkpoint.read_info(out)
    assert info["chat_template"] == "model" and (out / "adapter").exists()
    # The finetuned model keeps the imported template and end tokens.
    tok = tokenizers_.load(out)
    assert tok.chat_template == tokenizers_.load(imported).chat_template
    capsys.readouterr()
    main(["chat", "--model", str(out), "-m", "What is 3 plus 3?", "-n", "8", "-t", "0"])
    assert "assistant>" in capsys.readouterr().out
    main(["generate", "--model", str(imported), "--prompt", "def parse", "-n", "8", "-t", "0"])
    prompt = tokenizers_.load(imported).encode("def parse").ids
    assert prompt[0] == tok.token_to_id("<|begin_of_text|>")  # the model's BOS comes first
    model = checkpoint.load_model(imported)
    want = Engine(model).generate([prompt], SamplingParams(8, 0, stop_tokens=[
        tokenizers_.eot_id(tok)]))[0]
    assert capsys.readouterr().out == "def parse" + tok.decode(want) + "\n"


def test_chat_in_a_fresh_process(imported):
    """The template environment must not rely on transformers having imported jinja2 parts."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llmos", "chat", "--model", str(imported),
                        "-m", "Hi", "-n", "4", "-t", "0", "--no-tools"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "assistant>" in r.stdout
