"""`llmos export --format run`: the params file and the numpy-only run.py agree with llmos."""

from __future__ import annotations

import ast
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmos import chat_format, checkpoint, cli
from llmos import tokenizer as tk
from llmos.config import ModelConfig
from llmos.export.params import export_run
from llmos.infer.engine import Engine, SamplingParams
from llmos.model import Transformer

TEXT = [
    "The quick brown fox jumps over the lazy dog. It's 2024; we've 12345 items, they'll see.",
    "Café naïve résumé — über straße. Ça va? Ελληνικά και русский текст.",
    "中文字符和日本語のテキスト。한국어도 있어요. 😀👍🏽🎉 emoji!",
    "def f(x):\n    return x ** 2  # square\n\n\tif a != b: print('ok')\n",
    "Numbers: 3.14159, 1e-5, 100000, 42nd, ٣٤٥, Ⅻ, ½.  Spaces   and\n\n\nnewlines\r\n.",
    "I'M HERE, YOU'RE THERE, HE'D GO, SHE'LL COME, WE'VE DONE, IT'S DONE, DON'T.",
] * 20

PARITY = [
    "", " ", "  ", "hello", " hello world", "Hello, World!", "it's they're we've I'm you'll he'd",
    "IT'S THEY'RE", "'s 't 're", "naïve café résumé", "Ελληνικά русский", "中文 日本語 한국어",
    "😀 👍🏽 🇫🇷 emoji", "1 12 123 1234 12345 123456789", "3.14159 -42 1e10 0x1F", "٣٤٥ Ⅻ ½ ²",
    "a\nb\n\nc\r\nd", "   leading and trailing   ", "tabs\tand\t\ttabs", "x  \n  y", "end \n",
    "def f(x):\n    return [x * k for k in range(10)]\n", "if (a != b) { return a->c; }",
    "<|im_start|>user\nHi<|im_end|>\n", "<think>hm</think> ok", "a<|endoftext|>b",
    "\u00a0nbsp\u2003em\u3000ideo", "\x1cfile\x1fsep", "ſtraße 'ſ", "$$$ ... !!! ???",
    "mixed123abc456", "🙂🙂🙂", "e\u0301 combining", "\ufeffbom", "a\x00b", "\n\n\n",
    "Don't stop   believing\t\n  ", "https://example.com/a?b=c&d=e#f",
]


def load_run(path: Path):
    spec = importlib.util.spec_from_file_location(f"run_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Imported models may have wider heads than dim / n_heads and Llama 3.1's rope scaling.
SCALED = {"head_size": 32, "rope_scaling": {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16}}


def make_checkpoint(root: Path, name: str) -> Path:
    tok_dir = root / "tok"
    if not (tok_dir / "tokenizer.json").exists():
        tk.save(tk.train_bpe(TEXT, 400), tok_dir, max_len=160)
    tok = tk.load(tok_dir)
    torch.manual_seed({"tied": 0, "untied": 1, "scaled": 2}[name])
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), dim=64, n_layers=2,
                                    n_heads=4, n_kv_heads=2, max_seq_len=160,
                                    tie_embeddings=name != "untied",
                                    **(SCALED if name == "scaled" else {})))
    model.reset_parameters(std=0.3)  # large weights: peaked logits, varied greedy output
    return checkpoint.save(root / name, model, tok_dir, {})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (checkpoint dir, params file)} for fp32 tied/untied and the smaller dtypes."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in ("tied", "untied", "scaled"):
        ckpt = make_checkpoint(root, name)
        out[name] = (ckpt, export_run(ckpt, root / f"out-{name}")["params"])
    for dtype in ("fp16", "bf16", "int8"):
        out[dtype] = (out["tied"][0], export_run(out["tied"][0], root / f"out-{dtype}",
                                                  dtype=dtype, group_size=32)["params"])
    return out


@pytest.fixture(scope="module")
def run_mod(exported):
    return load_run(exported["tied"][1].with_name("run.py"))


def prompts(tok):
    return [tok.encode(t, add_special_tokens=False).ids
            for t in ("The quick brown", "def f(x):\n", "Café 中文 😀 12345")]


# ---- (a) tokenizer ----------------------------------------------------------------------------


def test_tokenizer_matches_hf_tokenizers(exported, run_mod):
    meta, _ = run_mod.read_params(exported["tied"][1])
    ours, hf = run_mod.Tokenizer(meta["tokenizer"]), tk.load(exported["tied"][0])
    rng = random.Random(0)
    alphabet = list("aZ 's'T\"0123456789\t\n\r.,;:!?()[]{}<>-_=+*/\\|@#$%^&~`") + [
        "é", "ß", "ſ", "ǅ", "я", "中", "😀", "👍🏽", "١", "Ⅻ", "½", "\u00a0", "\u2003", "\x1c",
        "\x85", "\u2028", "\x0b", "\u200b", "\u0301", "<|im_start|>", "<|im_end|>", "  ", "\n\n"]
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) for _ in range(3000)]
    for text in PARITY + TEXT[:6] + fuzz:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids, repr(text)
        assert ours.decode(ids) == text == hf.decode(ids, skip_special_tokens=False)


# ---- (b) logits -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tied", "untied", "scaled"])
def test_fp32_logits_match_the_model(exported, run_mod, name):
    ckpt, params = exported[name]
    model, tok = checkpoint.load_model(ckpt).eval(), tk.load(ckpt)
    meta, tensors = run_mod.read_params(params)
    ours = run_mod.Transformer(meta["config"], tensors)
    for ids in prompts(tok):
        with torch.no_grad():
            want = model(torch.tensor([ids]))[0].numpy()
        np.testing.assert_allclose(ours.forward(ids, 0, all_logits=True), want, atol=1e-4)
        # The cached path: a prefix first, then one token at a time.
        ours.forward(ids[:2], 0)
        for pos in range(2, len(ids)):
            last = ours.forward([ids[pos]], pos)
        np.testing.assert_allclose(last, want[-1], atol=1e-4)


# ---- (c) greedy generation as a separate process ----------------------------------------------


def run_py(params: Path, *args: str, python: str = sys.executable) -> str:
    proc = subprocess.run([python, str(params.with_name("run.py")), str(params), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and "tokens/s" in proc.stderr
    return proc.stdout[:-1]


@pytest.mark.parametrize("name", ["tied", "untied", "scaled"])
def test_greedy_tokens_match_the_engine(exported, run_mod, name):
    ckpt, params = exported[name]
    model, tok = checkpoint.load_model(ckpt), tk.load(ckpt)
    gen = run_mod.Generator(params)
    texts = ["The quick brown", "def f(x):\n", "Café 中文 😀 12345"]
    for text, ids in zip(texts, prompts(tok)):
        want = Engine(model).generate([ids], SamplingParams(max_new_tokens=64, temperature=0))[0]
        assert len(want) == 64 and len(set(want)) > 5
        assert list(gen.stream(ids, 64)) == want
        if name == "tied":  # the command line prints exactly the continuation, up to the eot
            eot = tk.eot_id(tok)
            out = run_py(params, "-i", text, "-t", "0", "-n", "64")
            assert out == tok.decode(want[:want.index(eot)] if eot in want else want,
                                     skip_special_tokens=False)


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus(exported, run_mod):
    params = exported["tied"][1]
    a = run_py(params, "-i", "The", "-t", "1", "-p", "0.9", "-s", "7", "-n", "20")
    assert a == run_py(params, "-i", "The", "-t", "1", "-p", "0.9", "-s", "7", "-n", "20")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000) * 3
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    nucleus = set(order[before < 0.8].tolist())  # the full-sort definition (Engine's)
    picks = {run_mod.sample(logits, 1.0, 0.8, rng) for _ in range(3000)}
    assert picks <= nucleus and len(picks) > len(nucleus) // 2
    assert run_mod.sample(logits, 1.0, 1e-9, rng) == int(np.argmax(logits))
    assert run_mod.sample(logits, 0.0, 0.8, rng) == int(np.argmax(logits))


# ---- (d) smaller weights ----------------------------------------------------------------------


def stored_weights_model(ckpt: Path, params: Path) -> Transformer:
    """The llmos model with the weights as the params file stores them (rounded, dequantized)."""
    from safetensors.torch import load_file

    stored = load_file(str(params))
    model = checkpoint.load_model(ckpt).eval()
    sd = model.state_dict()
    for name in sd:
        if name + ".q" in stored:
            q, s = stored[name + ".q"], stored[name + ".scale"]
            sd[name] = (q.float().reshape(*s.shape, -1) * s[..., None]).reshape(q.shape)
        elif name in stored:
            sd[name] = stored[name].float()
    if model.cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["embed.weight"]
    model.load_state_dict(sd)
    return model


@pytest.mark.parametrize("dtype,rel", [("fp16", 0.005), ("bf16", 0.05), ("int8", 0.1)])
def test_smaller_dtypes_give_close_logits(exported, run_mod, dtype, rel):
    ckpt, params = exported[dtype]
    model, tok = checkpoint.load_model(ckpt).eval(), tk.load(ckpt)
    rounded = stored_weights_model(ckpt, params)
    meta, tensors = run_mod.read_params(params)
    assert meta["dtype"] == dtype
    ours = run_mod.Transformer(meta["config"], tensors)
    for ids in prompts(tok):
        with torch.no_grad():
            want = model(torch.tensor([ids]))[0].numpy()
            exact = rounded(torch.tensor([ids]))[0].numpy()
        got = ours.forward(ids, 0, all_logits=True)
        # run.py computes exactly what the stored weights say...
        np.testing.assert_allclose(got, exact, atol=1e-4)
        # ...and rounding the weights moves the logits (spread over about +-10 with these
        # large random weights) by a small fraction of their range: measured max errors are
        # 0.2% (fp16), 3% (bf16), 7% (int8, groups of 32) of the largest logit.
        assert np.abs(got - want).max() < rel * np.abs(want).max()
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8
        if dtype == "int8":  # int8 kept in memory, dequantized per product: the same numbers
            kept = run_mod.Transformer(meta["config"], tensors, keep_int8=True)
            assert isinstance(kept.layers[0][1], tuple)
            np.testing.assert_allclose(kept.forward(ids, 0, all_logits=True), got, atol=1e-5)
    if dtype == "int8":
        assert run_py(params, "-i", "The", "-t", "0", "-n", "8", "-k") == \
            run_py(params, "-i", "The", "-t", "0", "-n", "8")


def tensor_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items()
               if k != "__metadata__")


def test_int8_is_about_four_times_smaller(exported):
    from safetensors.numpy import load_file

    fp32, int8 = exported["tied"][1], exported["int8"][1]
    ratio = tensor_bytes(fp32) / tensor_bytes(int8)
    assert 3.4 < ratio < 4.0  # int8 plus one float32 scale per 32 weights; norms stay float32
    assert fp32.stat().st_size > 3 * int8.stat().st_size  # metadata (tokenizer) included
    tensors = load_file(str(int8))  # safetensors itself reads the file
    assert tensors["layers.0.attn.wqkv.weight.q"].dtype == np.int8
    assert tensors["layers.0.attn.wqkv.weight.scale"].shape == (128, 2)


# ---- (e), (f) the run file: short, numpy only -------------------------------------------------


def test_run_py_is_short_and_imports_only_numpy(exported):
    source = exported["tied"][1].with_name("run.py").read_text()
    assert len(source.splitlines()) <= 500
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"numpy"}


@pytest.mark.slow
def test_run_py_works_in_a_fresh_venv_with_only_numpy(exported, tmp_path):
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    py = str(env / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "numpy"], check=True, timeout=300)
    params = exported["tied"][1]
    assert run_py(params, "-i", "The quick", "-t", "0", "-n", "16", python=py) == \
        run_py(params, "-i", "The quick", "-t", "0", "-n", "16")
    # Which installed packages does a chat run actually load? (Startup's own modules aside.)
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import runpy, sys\n"
        "before = set(sys.modules)\n"
        "sys.argv = [sys.argv[1], sys.argv[2], '-m', 'chat', '-i', 'Hi', '-t', '0', '-n', '8']\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "files = [getattr(sys.modules[m], '__file__', None) or '' for m in set(sys.modules) - "
        "before]\n"
        "print(sorted({f.split('site-packages')[1].split('/')[1] for f in files "
        "if 'site-packages' in f}), file=sys.stderr)\n")
    proc = subprocess.run([py, str(probe), str(params.with_name("run.py")), str(params)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()  # it answered
    assert ast.literal_eval(proc.stderr.strip().splitlines()[-1]) == ["numpy"]


# ---- (g) chat ---------------------------------------------------------------------------------


def test_chat_prompt_equals_the_chatml_renderer(exported, run_mod):
    ckpt, params = exported["tied"]
    tok = tk.load(ckpt)
    meta, _ = run_mod.read_params(params)
    fmt, ours = meta["chat"], run_mod.Tokenizer(meta["tokenizer"])
    assert fmt["stop"] == ["<|im_end|>", "<|endoftext|>"]
    conversations = [
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi 😀"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "and 3+3?\n"}],
    ]
    for messages in conversations:
        want = chat_format.render(tok, messages, add_generation_prompt=True).ids
        assert ours.encode(run_mod.render_chat(fmt, messages)) == want
    # The command line answers one turn and stops at the end-of-turn token.
    messages = conversations[0]
    ids = chat_format.render(tok, messages, add_generation_prompt=True).ids
    stops = [tok.token_to_id("<|im_end|>"), tk.eot_id(tok)]
    want = Engine(checkpoint.load_model(ckpt)).generate(
        [ids], SamplingParams(max_new_tokens=40, temperature=0, stop_tokens=stops))[0]
    out = run_py(params, "-m", "chat", "-y", "You are terse.", "-i", "Hi 😀", "-t", "0",
                 "-n", "40")
    assert out == tok.decode(want, skip_special_tokens=False)


# ---- (h) bad input ----------------------------------------------------------------------------


def test_export_command_explains_its_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--format", "--dtype", "--group-size"):
        assert flag in text


def test_bad_input_is_a_clear_error(exported, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(tmp_path), str(tmp_path / "out")])
    assert e.value.code == 2
    assert "is not a checkpoint directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", str(exported["tied"][0]), str(tmp_path / "out"), "--dtype", "int4"])
    assert "unknown dtype 'int4'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", str(exported["tied"][0]), str(tmp_path / "out"), "--dtype", "int8",
                  "--group-size", "48"])
    assert "does not divide" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.llmos").exists()
    bogus = tmp_path / "bogus.llmos"
    bogus.write_bytes((2).to_bytes(8, "little") + b"{}")
    proc = subprocess.run([sys.executable, str(exported["tied"][1].with_name("run.py")),
                           str(bogus)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not an llmos params file" in proc.stderr
