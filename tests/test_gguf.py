"""`llmos export --format gguf`: the GGUF file has what llama.cpp reads, and the Modelfile."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llmos import checkpoint, cli
from llmos import tokenizer as tk
from llmos.chat_format import CHAT_TEMPLATE
from llmos.export.gguf import export_gguf, permute, unpermute
from llmos.export.ollama import go_template
from llmos.infer.engine import Engine, SamplingParams

gguf = pytest.importorskip("gguf")

from test_export import SCALED, make_checkpoint  # noqa: E402

T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(name, outtype): (checkpoint dir, export result)}."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for name in ("tied", "untied", "scaled"):
        ckpt = make_checkpoint(root, name)
        for outtype in ("f32", "f16", "q8_0") if name == "tied" else ("f32",):
            out[name, outtype] = (ckpt, export_gguf(ckpt, root / f"{name}-{outtype}", outtype))
    return out


def value(f):
    """A GGUFReader field as a Python value (ReaderField.contents() is newer than gguf 0.10)."""
    V = gguf.GGUFValueType

    def one(part, kind):
        return bytes(part).decode("utf-8") if kind == V.STRING else part[0].item()

    if f.types[0] == V.ARRAY:
        return [one(f.parts[i], f.types[-1]) for i in f.data]
    return one(f.parts[f.data[0]], f.types[0])


def fields(reader) -> dict:
    return {k: value(f) for k, f in reader.fields.items()}


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("name", ["tied", "untied", "scaled"])
def test_metadata(exported, name):
    ckpt, r = exported[name, "f32"]
    c = checkpoint.load_model(ckpt).cfg
    meta = fields(gguf.GGUFReader(r["gguf"]))
    tok = tk.load(ckpt)
    want = {
        "general.architecture": "llama", "general.file_type": 0,
        "llama.vocab_size": c.vocab_size, "llama.context_length": 160,
        "llama.embedding_length": 64, "llama.block_count": 2,
        "llama.feed_forward_length": c.ffn_hidden, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.attention.key_length": c.head_dim,
        "llama.attention.value_length": c.head_dim,
        "llama.rope.dimension_count": c.head_dim, "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "dbrx",
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": tk.eot_id(tok),
        "tokenizer.ggml.eot_token_id": tok.token_to_id("<|im_end|>"),
        "tokenizer.ggml.padding_token_id": tok.token_to_id("<|pad|>"),
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    for key, value in want.items():
        assert meta[key] == value, key
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    assert c.head_dim == (32 if name == "scaled" else 16)


@pytest.mark.parametrize("name", ["tied", "untied", "scaled"])
def test_tensor_names_shapes_and_permutation(exported, name):
    ckpt, r = exported[name, "f32"]
    model = checkpoint.load_model(ckpt)
    c, hf = model.cfg, checkpoint.to_hf_state_dict(model)
    got = tensors(gguf.GGUFReader(r["gguf"]))
    names = {"token_embd.weight", "output_norm.weight"}
    for i in range(2):
        names |= {f"blk.{i}.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v",
                                                   "attn_output", "ffn_norm", "ffn_gate",
                                                   "ffn_up", "ffn_down")}
    names |= {"output.weight"} if name == "untied" else set()
    names |= {"rope_freqs.weight"} if name == "scaled" else set()
    assert set(got) == names
    q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes = {"token_embd": (c.vocab_size, 64), "output": (c.vocab_size, 64),
              "attn_q": (q_out, 64), "attn_k": (kv_out, 64), "attn_v": (kv_out, 64),
              "attn_output": (64, q_out), "ffn_gate": (c.ffn_hidden, 64),
              "ffn_up": (c.ffn_hidden, 64), "ffn_down": (64, c.ffn_hidden)}
    for n, t in got.items():
        assert t.tensor_type == T.F32, n
        kind = n.split(".")[-2]
        if kind in shapes:  # GGML lists dimensions fastest first: ne = (in, out)
            assert tuple(int(d) for d in t.shape) == shapes[kind][::-1], n
            assert t.data.shape == shapes[kind], n
        else:
            assert t.data.ndim == 1, n
    as_torch = {n: torch.from_numpy(np.array(t.data)) for n, t in got.items()}
    for i in range(2):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k = as_torch[b + "attn_q.weight"], as_torch[b + "attn_k.weight"]
        assert not torch.equal(q, hf[p + "self_attn.q_proj.weight"])  # it is permuted ...
        assert torch.equal(unpermute(q, c.n_heads), hf[p + "self_attn.q_proj.weight"])
        assert torch.equal(unpermute(k, c.n_kv_heads), hf[p + "self_attn.k_proj.weight"])
        assert torch.equal(as_torch[b + "attn_v.weight"], hf[p + "self_attn.v_proj.weight"])
        assert torch.equal(as_torch[b + "ffn_down.weight"], hf[p + "mlp.down_proj.weight"])
    assert torch.equal(as_torch["token_embd.weight"], hf["model.embed_tokens.weight"])
    if name == "untied":
        assert torch.equal(as_torch["output.weight"], hf["lm_head.weight"])
    if name == "scaled":  # llama.cpp divides each rotary frequency by its factor
        f = as_torch["rope_freqs.weight"]
        assert f.shape == (c.head_dim // 2,) and f[-1] == pytest.approx(8.0)
        assert torch.all((f >= 1) & (f <= 8))
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
        angles = torch.outer(torch.arange(160).float(), inv / f)
        assert torch.allclose(torch.cat([angles, angles], -1).cos(), model.rope_cos, atol=1e-5)


def test_permutation_turns_rotate_half_into_interleaved_rope():
    """q.k after rotate-half rope on the original rows equals q.k after GGML's interleaved rope
    (pairs 2i, 2i+1) on the permuted rows: the permutation is what llama.cpp needs."""
    torch.manual_seed(0)
    H, hd, dim, pos = 2, 8, 16, 5
    wq, x = torch.randn(H * hd, dim), torch.randn(dim)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    cos, sin = (pos * inv).cos(), (pos * inv).sin()

    def rotate_half(v):  # [H, hd]
        a, b = v[:, :hd // 2], v[:, hd // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def interleaved(v):
        a, b = v[:, 0::2], v[:, 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).reshape(H, hd)

    hf = rotate_half((wq @ x).reshape(H, hd))
    gg = interleaved((permute(wq, H) @ x).reshape(H, hd))
    assert torch.allclose(permute(hf.reshape(-1, 1), H).reshape(H, hd), gg, atol=1e-6)
    assert torch.equal(unpermute(permute(wq, H), H), wq)


def test_f16_and_q8_0(exported):
    ckpt, r16 = exported["tied", "f16"]
    _, r8 = exported["tied", "q8_0"]
    _, r32 = exported["tied", "f32"]
    f32 = tensors(gguf.GGUFReader(r32["gguf"]))
    sizes = [r["gguf_bytes"] for r in (r32, r16, r8)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert fields(gguf.GGUFReader(r8["gguf"]))["general.file_type"] == 7
    for r, qtype in ((r16, T.F16), (r8, T.Q8_0)):
        for n, t in tensors(gguf.GGUFReader(r["gguf"])).items():
            want = np.array(f32[n].data)
            if want.ndim == 1:  # norms stay float32
                assert t.tensor_type == T.F32 and np.array_equal(t.data, want), n
                continue
            assert t.tensor_type == qtype, n
            got = gguf.quants.dequantize(np.array(t.data), qtype)
            assert got.shape == want.shape, n
            # Q8_0: blocks of 32 with one scale, max |w| / 127: the error is half a step at most
            blocks = np.abs(want).reshape(want.shape[0], -1, 32).max(-1, keepdims=True)
            step = (blocks / 127).repeat(32, -1).reshape(want.shape)
            tol = 0.5 * step + 1e-3 * np.abs(want) + 1e-7 if qtype == T.Q8_0 else \
                1e-3 * np.abs(want) + 1e-7
            assert np.all(np.abs(got - want) <= tol), n


def test_tokenizer_round_trips(exported):
    ckpt, r = exported["tied", "f32"]
    tok = tk.load(ckpt)
    meta = fields(gguf.GGUFReader(r["gguf"]))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == tok.get_vocab_size()
    assert tokens == [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    special = {tok.token_to_id(t) for t in tk.SPECIAL_TOKENS}
    assert [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL] == sorted(special)
    assert all(t == gguf.TokenType.NORMAL for i, t in enumerate(types) if i not in special)
    merges = json.loads((Path(ckpt) / "tokenizer.json").read_text())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m)
                                             for m in merges]
    # Encoding with the stored vocabulary and merges (run.py's BPE, which is tested against
    # the HF tokenizer) gives the HF tokenizer's ids.
    from test_export import load_run
    run = load_run(Path(__file__).parents[1] / "src/llmos/export/run.py")
    ours = run.Tokenizer({
        "vocab": {t: i for i, t in enumerate(tokens) if types[i] == gguf.TokenType.NORMAL},
        "merges": [m.split(" ", 1) for m in meta["tokenizer.ggml.merges"]],
        "added": [{"id": i, "content": tokens[i], "special": True} for i in sorted(special)]})
    for text in ("The quick brown fox", "def f(x):\n    return 1", "Café 中文 😀 12345",
                 "<|im_start|>user\nhi<|im_end|>"):
        assert ours.encode(text) == tok.encode(text, add_special_tokens=False).ids


def test_modelfile(exported):
    _, r = exported["tied", "f32"]
    text = r["modelfile"].read_text()
    assert text.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # llmos's own format: the whole ChatML with tools (its rendering: test_ollama_template.py).
    assert template == go_template(None, tools=True)
    assert "{{-" not in template  # trimming would eat the format's newlines


def test_cli_and_refusals(exported, tmp_path, capsys):
    ckpt, _ = exported["tied", "f32"]
    cli.main(["export", "--format", "gguf", str(ckpt), str(tmp_path / "o"), "--outtype", "q8_0"])
    out = capsys.readouterr().out
    assert "model.gguf" in out and "q8_0" in out and "Modelfile" in out
    assert (tmp_path / "o" / "model.gguf").exists() and (tmp_path / "o" / "Modelfile").exists()
    with pytest.raises(ValueError, match="outtype"):
        export_gguf(ckpt, tmp_path / "x", "q4_0")
    with pytest.raises(FileNotFoundError):
        export_gguf(tmp_path, tmp_path / "y")
    scaled = Path(exported["scaled", "f32"][0])
    config = json.loads((scaled / "config.json").read_text())
    bad = tmp_path / "yarn"
    bad.mkdir()
    for f in scaled.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    assert SCALED["rope_scaling"]["rope_type"] == config["rope_scaling"]["rope_type"]
    config["rope_scaling"]["rope_type"] = "yarn"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rope"):
        export_gguf(bad, tmp_path / "z")
    # a tokenizer llama.cpp cannot reproduce (neither byte-level nor SentencePiece-style) is
    # refused by name
    tok_json = json.loads((bad / "tokenizer.json").read_text())
    tok_json["pre_tokenizer"] = {"type": "Whitespace"}
    (bad / "tokenizer.json").write_text(json.dumps(tok_json))
    with pytest.raises(ValueError, match="llama.cpp cannot reproduce this tokenizer.*Whitespace"):
        export_gguf(bad, tmp_path / "z")


def test_imported_bos_and_q8_0_fallback(exported, tmp_path):
    """A checkpoint whose tokenizer_config names a BOS keeps it (the chat template may render
    it); a matrix whose rows are no multiple of Q8_0's 32-wide blocks is stored f16."""
    from llmos.export.gguf import encode_tensor
    src = Path(exported["tied", "f32"][0])
    copy = tmp_path / "bos"
    copy.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["bos_token"] = "<|im_start|>"
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    meta = fields(gguf.GGUFReader(export_gguf(copy, tmp_path / "o")["gguf"]))
    assert meta["tokenizer.ggml.bos_token_id"] == tk.load(copy).token_to_id("<|im_start|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False  # this tokenizer does not add it
    w = torch.randn(4, 48)
    assert encode_tensor(gguf, "x", w, "q8_0")[1] == T.F16
    assert encode_tensor(gguf, "x", w[:, :32], "q8_0")[1] == T.Q8_0


# ---- llama.cpp itself (llama-cpp-python builds from source: not in CI) ------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tied", "untied", "scaled"])
def test_llama_cpp_greedy_parity(exported, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    ckpt, r = exported[name, "f32"]
    model, tok = checkpoint.load_model(ckpt).eval(), tk.load(ckpt)
    f32 = 0  # GGML_TYPE_F32: a float32 KV cache (llama.cpp's default is float16)
    llm = llama_cpp.Llama(str(r["gguf"]), n_ctx=160, n_threads=2, logits_all=True,
                          type_k=f32, type_v=f32, verbose=False)
    for text in ("The quick brown", "def f(x):\n", "Café 中文 😀 12345"):
        ids = tok.encode(text, add_special_tokens=False).ids
        want = Engine(model).generate([ids], SamplingParams(max_new_tokens=40, temperature=0))[0]
        assert len(want) == 40
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            ref = model(torch.tensor([ids]))[0, -1].numpy()
        diff = np.abs(llm.scores[llm.n_tokens - 1] - ref).max()
        print(f"{name} {text!r}: max |logit difference| {diff:.2e}")
        assert diff < 1e-4, text
        got = []
        for _ in range(40):  # greedy on llama.cpp's logits, token ids fed in directly
            got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([got[-1]])
        assert got == want, text


@pytest.mark.slow
def test_llama_cpp_f16_and_q8_0_logits(exported):
    """llama.cpp on the smaller files, with its default float16 KV cache: within 0.2% (f16) and
    3% (q8_0) of the logits' range of llmos's fp32 logits (measured 0.06% and 1.5%)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    ckpt, _ = exported["tied", "f32"]
    model, tok = checkpoint.load_model(ckpt).eval(), tk.load(ckpt)
    ids = tok.encode("The quick brown fox", add_special_tokens=False).ids
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0, -1].numpy()
    for outtype, tol in (("f16", 0.002), ("q8_0", 0.03)):
        llm = llama_cpp.Llama(str(exported["tied", outtype][1]["gguf"]), n_ctx=160,
                              n_threads=2, logits_all=True, verbose=False)
        llm.eval(ids)
        got = llm.scores[llm.n_tokens - 1]
        assert np.abs(got - ref).max() < tol * np.ptp(ref), outtype
        assert got.argmax() == ref.argmax(), outtype


@pytest.mark.slow
def test_llama_cpp_tokenizer_matches(exported):
    """llama.cpp's BPE with the `dbrx` pre-tokenizer gives the HF tokenizer's ids."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from test_export import PARITY, TEXT
    ckpt, r = exported["tied", "f32"]
    tok = tk.load(ckpt)
    llm = llama_cpp.Llama(str(r["gguf"]), vocab_only=True, verbose=False)
    rng = random.Random(0)
    alphabet = list("aZ 's'T\"0123456789\t\n\r.,;:!?()[]{}<>-_=+*/\\|@#$%^&~`") + [
        "é", "ß", "ſ", "ǅ", "я", "中", "😀", "👍🏽", "١", "Ⅻ", "½", "\u00a0", "\u2003", "\x1c",
        "\x85", "\u2028", "\x0b", "\u200b", "\u0301", "<|im_start|>", "<|im_end|>", "  ", "\n\n"]
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) for _ in range(3000)]
    for text in PARITY + TEXT[:6] + fuzz:
        want = tok.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == want, repr(text)
