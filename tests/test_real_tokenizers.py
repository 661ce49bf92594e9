"""Real tokenizer families through `llmos export`: run.py's encoding and decoding equal Hugging
Face `tokenizers` for the SentencePiece-style BPE of Llama 2 / TinyLlama / Mistral and the GPT-2
byte-level BPE of GPT-2 / SmolLM, built here exactly as their tokenizer.json files have them and
trained on the Python standard library; real vocabularies from llama.cpp's test files where they
are present; tiny models with each tokenizer give the engine's greedy tokens in run.py and in
llama.cpp (GGUF)."""

from __future__ import annotations

import json
import os
import random
import re
import sysconfig
from pathlib import Path

import pytest
import torch
from test_export import PARITY, load_run, run_py
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from llmos import chat_format, checkpoint
from llmos import tokenizer as tk
from llmos.config import ModelConfig
from llmos.export.params import export_run, tokenizer_meta
from llmos.infer.engine import Engine, SamplingParams
from llmos.model import Transformer

RUN_PY = Path(__file__).parents[1] / "src" / "llmos" / "export" / "run.py"


@pytest.fixture(scope="module")
def run_mod():
    return load_run(RUN_PY)


# ---- training text: the standard library's sources, plus other scripts -------------------------

UNICODE = [
    "Café naïve résumé — über straße. Ça va? Ελληνικά και русский текст, ſ and ǅ.",
    "中文字符和日本語のテキスト。한국어도 있어요. 😀👍🏽🎉 emoji! ٣٤٥ Ⅻ ½ ²",
] * 30


def corpus(n_files: int = 40, skip: int = 0) -> list[str]:
    """Lines of `n_files` standard-library modules (every 7th file after `skip`, sorted)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[skip::7][:n_files]
    return [line for f in files for line in f.read_text(errors="replace").splitlines() if line]


# ---- the two families, as their tokenizer.json files have them ---------------------------------

SPECIALS = ["<unk>", "<s>", "</s>"]


def added(contents: list[str], ids: list[int]) -> list[dict]:
    return [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for c, i in zip(contents, ids)]


def spm_merges(vocab: dict[str, int]) -> list[list[str]]:
    """Merges as a SentencePiece model's conversion to tokenizer.json lists them: every split of
    a token into two tokens, the tokens in vocabulary order (a SentencePiece vocabulary is sorted
    by score), the splits of one token by their parts' ids."""
    merges = []
    for token in sorted(vocab, key=vocab.get):
        splits = [(token[:k], token[k:]) for k in range(1, len(token))
                  if token[:k] in vocab and token[k:] in vocab]
        merges += [list(p) for p in sorted(splits, key=lambda p: (vocab[p[0]], vocab[p[1]]))]
    return merges


SPM_PIPELINES = {
    # Llama 2, TinyLlama, Mistral 7B v0.1: spaces made "▁" by normalizers, one put in front of
    # every stretch of text (between special tokens).
    "llama2": {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None},
    # Newer conversions (transformers' non-legacy Llama tokenizer, Mistral v0.3): a Metaspace
    # pre-tokenizer putting the "▁" only at the start of the text.
    "mistral": {"normalizer": None, "pre_tokenizer": {
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}},
    # Older Metaspace files: always a "▁" in front, and the text cut into words at each "▁".
    "metaspace": {"normalizer": None, "pre_tokenizer": {
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}},
}
SPM_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def sentencepiece_json(name: str, vocab_size: int = 1500) -> dict:
    """A Llama-style tokenizer: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then pieces
    learnt by BPE within words (as SentencePiece does) from at most 150 characters, so that
    rarer ones take the byte fallback."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  limit_alphabet=150, min_frequency=2, show_progress=False)
    trainer_tok.train_from_iterator(corpus() + UNICODE, trainer=trainer)
    learnt = sorted(trainer_tok.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in learnt:
        vocab.setdefault(token, len(vocab))
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added(SPECIALS, [0, 1, 2]),
        **SPM_PIPELINES[name],
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": SPM_DECODER,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": spm_merges(vocab)},
    }


SMOLLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>"]


def byte_level_json(name: str, vocab_size: int = 1500) -> dict:
    """GPT-2 (ByteLevel with its regex; <|endoftext|> last) or SmolLM (digits cut apart first;
    its special tokens first)."""
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}
    specials = SMOLLM_SPECIALS if name == "smollm" else []
    pre = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
           if name == "smollm" else pre_tokenizers.ByteLevel(add_prefix_space=False))
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    trainer_tok.train_from_iterator(corpus() + UNICODE, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())
    vocab, merges = trained["model"]["vocab"], trained["model"]["merges"]
    if name == "gpt2":
        specials = ["<|endoftext|>"]
        vocab["<|endoftext|>"] = len(vocab)
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added(specials, [vocab[s] for s in specials]),
        "normalizer": None,
        "pre_tokenizer": level if name == "gpt2" else {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, level]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": merges},
    }


FAMILIES = ["llama2", "mistral", "metaspace", "gpt2", "smollm"]


@pytest.fixture(scope="module")
def families() -> dict[str, dict]:
    """{name: tokenizer.json} for every family (about 10 s of training on 2 cores)."""
    return {name: sentencepiece_json(name) if name in SPM_PIPELINES else byte_level_json(name)
            for name in FAMILIES}


def special_tokens(tok_json: dict) -> list[str]:
    return [t["content"] for t in tok_json["added_tokens"]]


def parity_strings(specials: list[str], n_fuzz: int = 3000, seed: int = 0) -> list[str]:
    """The export tests' parity strings, real lines (from modules the tokenizers were not trained
    on) and fuzz: letters, digits of several scripts, every kind of space, newlines, emoji
    (skin tones, flags, ZWJ sequences), CJK, combining marks, "▁" itself, text that looks like a
    byte token, and the family's special tokens."""
    rng = random.Random(seed)
    alphabet = list("aZ 's'T\"0123456789\t\n\r.,;:!?()[]{}<>-_=+*/\\|@#$%^&~`") + [
        "é", "ß", "ſ", "ǅ", "я", "中", "語", "😀", "👍🏽", "🇫🇷", "👩‍💻", "١", "Ⅻ", "½", "\u00a0",
        "\u2003", "\x1c", "\x85", "\u2028", "\x0b", "\u200b", "\u0301", "▁", "<0x41>", "  ",
        "\n\n", "   ", " the", "def ", "return", "12", "2024", "🦙"] + specials
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
            for _ in range(n_fuzz)]
    lines = corpus(20, skip=3)
    real = [" ".join(rng.sample(lines, 3)) for _ in range(300)]
    edges = [s + t for s in ("", " ", "  ", "\n") for t in ("hello", "x", "")]
    edges += [f"{a}{s}{b}" for s in specials for a, b in (("", "hi"), ("hi", ""), (" ", " "),
                                                          ("a ", " b"), ("", ""))]
    return PARITY + UNICODE[:2] + edges + real + fuzz


# ---- (a) run.py's tokenizer against Hugging Face's --------------------------------------------


def check_parity(run_mod, tok_json: dict, strings: list[str]) -> int:
    """Asserts run.py encodes (and decodes) every string as HF `tokenizers` does; returns the
    number of strings compared."""
    hf = Tokenizer.from_str(json.dumps(tok_json))
    ours = run_mod.Tokenizer(tokenizer_meta(tok_json))
    for text in strings:
        want = hf.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == want, repr(text)
        assert ours.decode(want) == hf.decode(want, skip_special_tokens=False), repr(text)
        assert ours.encode(text, wrap=True) == hf.encode(text).ids, repr(text)
    return len(strings)


@pytest.mark.parametrize("name", FAMILIES)
def test_run_py_tokenizes_as_hf_tokenizers(families, run_mod, name):
    tok_json = families[name]
    n = check_parity(run_mod, tok_json, parity_strings(special_tokens(tok_json)))
    assert n > 3000
    meta = tokenizer_meta(tok_json)
    ours = run_mod.Tokenizer(meta)
    if name in SPM_PIPELINES:  # the features these strings exercise are really there
        assert meta["kind"] == "sentencepiece" and meta["byte_fallback"]
        assert ours.encode("🦙")[-4:] == [3 + b for b in "🦙".encode()]  # <0xF0> <0x9F> ...
        assert ours.encode("hi", wrap=True)[0] == 1  # <s>
        # The Prepend normalizer adds a "▁" even before a leading space, so the text round-trips;
        # a Metaspace takes a leading space as its "▁" and the decoder drops it (HF's too).
        spaced = ours.decode(ours.encode(" two  spaces "))
        assert spaced == (" two  spaces " if name == "llama2" else "two  spaces ")
    else:
        assert meta["kind"] == "byte_level" and meta["split"] == "gpt2"
        assert meta.get("digits", False) == (name == "smollm")
        if name == "smollm":  # every digit cut apart before the merges
            assert len(ours.encode("12345")) == 5


@pytest.mark.parametrize("name", FAMILIES)
def test_streamed_text_is_the_whole_decode(families, name):
    """The engine's TextStream decodes a short window a token, not the whole answer: its deltas
    still join to HF's decode of every id, for real text and for random ids (bytes split between
    tokens, leading spaces a decoder strips, special tokens)."""
    from llmos.infer.engine import TextStream

    hf = Tokenizer.from_str(json.dumps(families[name]))
    rng = random.Random(1)
    texts = parity_strings(special_tokens(families[name]), n_fuzz=300)
    runs = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    # Random ids, but no lone byte tokens of a byte fallback: invalid UTF-8 in mid-answer decodes
    # to a different number of U+FFFD as more bytes come, in a whole decode as in a stream.
    first = 3 + 256 if name in SPM_PIPELINES else 0
    runs += [[rng.randrange(first, hf.get_vocab_size()) for _ in range(rng.randint(1, 60))]
             for _ in range(300)]
    for ids in runs:
        stream = TextStream(hf)
        pieces = [stream.push(i) for i in ids]
        whole = hf.decode(ids, skip_special_tokens=False)
        joined = "".join(pieces)
        if whole.endswith("\ufffd"):  # held back until the character is whole
            assert whole.startswith(joined), ids
        else:
            assert joined == whole, ids


def test_unknown_characters_without_byte_fallback(families, run_mod):
    """A SentencePiece-style vocabulary without byte fallback: characters it lacks become the
    unk token, one for a run of them (fuse_unk), as HF does."""
    tok_json = json.loads(json.dumps(families["llama2"]))
    tok_json["model"]["byte_fallback"] = False
    strings = ["🦙", "a🦙🦙b", "中文 字 🦙", "x 🦙 y 🦙🦙🦙", "<s>🦙</s>"]
    assert check_parity(run_mod, tok_json, strings + parity_strings(["<s>"], n_fuzz=500)) > 500
    ours = run_mod.Tokenizer(tokenizer_meta(tok_json))
    assert ours.encode("a🦙🦙b").count(0) == 1


def test_a_metaspace_decoder(families, run_mod):
    """Older files undo the "▁" with a Metaspace decoder (after ByteFallback) instead of
    Replace + Strip; both the current and the legacy spelling of its options decode alike."""
    for meta in ({"prepend_scheme": "always", "split": True}, {"add_prefix_space": True}):
        decoder = {"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁", **meta}]}
        tok_json = {**families["metaspace"], "decoder": decoder}
        assert check_parity(run_mod, tok_json, parity_strings(["<s>"], n_fuzz=500)) > 500


def test_other_tokenizers_are_refused_by_name(families):
    base = families["llama2"]
    cases = [
        ({"normalizer": {"type": "NFKC"}}, "NFKC"),
        ({"pre_tokenizer": {"type": "Whitespace"}}, "Whitespace"),
        ({"model": {**base["model"], "type": "Unigram"}}, "Unigram"),
        ({"decoder": {"type": "WordPiece"}}, "WordPiece"),
        ({"added_tokens": [{**base["added_tokens"][0], "lstrip": True}]}, "lstrip"),
        ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True},
          "normalizer": None}, "ByteLevel"),
    ]
    for change, name in cases:
        with pytest.raises(ValueError, match="run.py cannot reproduce this tokenizer") as e:
            tokenizer_meta({**base, **change})
        assert name in str(e.value)
    # GGUF: llama.cpp has GPT-2's split only without ignore_merges
    from llmos.export.gguf import pre_name
    assert pre_name({"split": "gpt2", "digits": True, "ignore_merges": False}) == "smollm"
    with pytest.raises(ValueError, match="llama.cpp cannot reproduce this tokenizer"):
        pre_name({"split": "gpt2", "digits": False, "ignore_merges": True})


# ---- (b) real vocabularies: llama.cpp's test files ---------------------------------------------

# llama.cpp's source tree ships vocabularies of real models with strings and the ids HF
# `transformers` gave them (models/ggml-vocab-NAME.gguf, .gguf.inp, .gguf.out; written by its
# tests/test-tokenizer-0.py with add_special_tokens=False). They are not on PyPI except inside
# the llama-cpp-python sdist (vendor/llama.cpp/models/): point LLMOS_GGML_VOCAB_DIR at a folder
# holding them, or put them in ~/.cache/llmos/ggml-vocab.
VOCAB_DIR = Path(os.environ.get("LLMOS_GGML_VOCAB_DIR",
                                Path.home() / ".cache" / "llmos" / "ggml-vocab"))


def ggml_vocab(name: str):
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not all(Path(f"{path}{ext}").exists() for ext in ("", ".inp", ".out")):
        pytest.skip(f"{path}(.inp/.out) not found: set LLMOS_GGML_VOCAB_DIR to llama.cpp's "
                    "models/ folder (in the llama-cpp-python sdist under vendor/llama.cpp/)")
    gguf = pytest.importorskip("gguf")
    fields = gguf.GGUFReader(str(path)).fields

    def array(key):
        f = fields[key]
        return [f.parts[i].tobytes().decode() if f.types[-1] == gguf.GGUFValueType.STRING
                else f.parts[i].tolist()[0] for i in f.data]

    sep, raw = "\n__ggml_vocab_test__\n", Path(f"{path}.inp").read_text()
    tests = raw.removesuffix(sep).split(sep)  # as test-tokenizer-0.cpp reads it
    ids = [[int(i) for i in line.split()] for line in Path(f"{path}.out").read_text()
           .splitlines()]
    assert len(tests) == len(ids)
    keys = ("tokens", "token_type", "scores", "merges")
    return {k: array(f"tokenizer.ggml.{k}") for k in keys if f"tokenizer.ggml.{k}" in fields}, \
        list(zip(tests, ids))


def vocab_json(name: str, v: dict) -> dict:
    """tokenizer.json for a llama.cpp vocabulary: Llama's SentencePiece (merges made from the
    scores, as transformers' converter makes them), GPT-2's, or Llama 3's."""
    tokens = v["tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    specials = [i for i, k in enumerate(v["token_type"]) if k in (2, 3)]  # UNKNOWN, CONTROL
    base = {"version": "1.0", "added_tokens": added([tokens[i] for i in specials], specials),
            "post_processor": None}
    if name == "llama-spm":
        order = sorted(range(len(tokens)), key=lambda i: -v["scores"][i])
        normal = {tokens[i]: rank for rank, i in enumerate(order) if v["token_type"][i] == 1}
        merges = [m for m in spm_merges(normal)]
        ranked = {t: r for r, t in enumerate(sorted(normal, key=normal.get))}
        merges = sorted(merges, key=lambda m: ranked["".join(m)])
        return {**base, **SPM_PIPELINES["llama2"], "decoder": SPM_DECODER,
                "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True,
                          "byte_fallback": True, "vocab": vocab, "merges": merges}}
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": name == "gpt-2"}
    pre = level if name == "gpt-2" else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tk.SPLIT_PATTERN}, "behavior": "Isolated",
         "invert": False}, level]}
    return {**base, "normalizer": None, "pre_tokenizer": pre, "decoder": level,
            "model": {"type": "BPE", "ignore_merges": name == "llama-bpe", "vocab": vocab,
                      "merges": [m.split(" ", 1) for m in v["merges"]]}}


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "llama-bpe"])
def test_real_vocabularies_give_transformers_ids(run_mod, name):
    """Llama 2's, GPT-2's and Llama 3's real vocabularies: run.py gives the ids transformers gave
    on llama.cpp's test strings (and so does HF `tokenizers` on the tokenizer.json built here,
    which checks the conversion)."""
    v, cases = ggml_vocab(name)
    tok_json = vocab_json(name, v)
    hf = Tokenizer.from_str(json.dumps(tok_json))
    ours = run_mod.Tokenizer(tokenizer_meta(tok_json))
    for text, want in cases:
        assert hf.encode(text, add_special_tokens=False).ids == want, repr(text)
        assert ours.encode(text) == want, repr(text)
        assert ours.decode(want) == hf.decode(want, skip_special_tokens=False)
    assert len(cases) > 30
    specials = [t["content"] for t in tok_json["added_tokens"]][:20]
    assert check_parity(run_mod, tok_json, parity_strings(specials, n_fuzz=1000)) > 1000


# ---- (c) end to end: tiny models with each tokenizer -------------------------------------------

# A chat template of the Zephyr/TinyLlama shape (role tag, content, the eos token), simple enough
# that the export can store it as a prefix and suffix per role.
TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token"
            " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}"
            "{% endif %}")
PROMPTS = ["def f(x):\n    return", "Café 中文 🦙 12345", " two  spaces"]


@pytest.fixture(scope="module")
def checkpoints(families, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{family: (checkpoint dir, exported params file)}: random models (dim 64, 2 layers) with
    each family's tokenizer.json and a tokenizer_config.json like the model's own."""
    root = tmp_path_factory.mktemp("real")
    out = {}
    for seed, name in enumerate(FAMILIES):
        tok_dir = root / f"tok-{name}"
        tok_dir.mkdir()
        (tok_dir / "tokenizer.json").write_text(json.dumps(families[name], ensure_ascii=False))
        sp = name in SPM_PIPELINES
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "bos_token": "<s>" if sp else "<|endoftext|>",
                  "eos_token": "</s>" if sp else "<|endoftext|>",
                  "unk_token": "<unk>" if sp else None, "chat_template": TEMPLATE,
                  "clean_up_tokenization_spaces": False}
        (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
        torch.manual_seed(seed)
        vocab = Tokenizer.from_str(json.dumps(families[name])).get_vocab_size()
        model = Transformer(ModelConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=4,
                                        n_kv_heads=2, max_seq_len=160))
        model.reset_parameters(std=0.3)  # peaked logits, varied greedy output
        ckpt = checkpoint.save(root / name, model, tok_dir, {"chat_template": "model"})
        out[name] = (ckpt, export_run(ckpt, root / f"out-{name}")["params"])
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_tokens_match_the_engine(checkpoints, run_mod, name):
    ckpt, params = checkpoints[name]
    model, tok = checkpoint.load_model(ckpt), tk.load(ckpt)
    gen = run_mod.Generator(params)
    assert gen.meta["format_version"] == "2"
    for text in PROMPTS:
        ids = tok.encode(text).ids  # as `llmos generate` encodes a prompt: with the BOS
        assert gen.tok.encode(text, wrap=True) == ids
        want = Engine(model).generate([ids], SamplingParams(max_new_tokens=32, temperature=0))[0]
        assert len(set(want)) > 5
        assert list(gen.stream(ids, 32)) == want
    # The command line prints the text that continues the prompt, up to the end token.
    eot = tk.eot_id(tok)
    cont = want[:want.index(eot)] if eot in want else want
    whole, prompt = (tok.decode(x, skip_special_tokens=False) for x in (ids + cont, ids))
    assert whole.startswith(prompt)
    # Byte tokens that make no UTF-8 character: HF's ByteFallback writes one U+FFFD per byte of
    # the run, Python's decoder (run.py's) one per invalid sequence (docs/export.md).
    same = re.compile("\ufffd+")
    out = run_py(params, "-i", PROMPTS[-1], "-t", "0", "-n", "32")
    assert same.sub("\ufffd", out) == same.sub("\ufffd", whole[len(prompt):])


@pytest.mark.parametrize("name", ["llama2", "mistral", "smollm"])
def test_chat_prompt_equals_the_models_template(checkpoints, run_mod, name):
    ckpt, params = checkpoints[name]
    tok = tk.load(ckpt)
    gen = run_mod.Generator(params)
    fmt = gen.meta["chat"]
    assert fmt["user"] == ["<|user|>\n", tok.id_to_token(tk.eot_id(tok)) + "\n"]
    conversations = [
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi 🦙"}],
        [{"role": "user", "content": " 2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "and  3+3?\n"}],
    ]
    for messages in conversations:
        want = chat_format.render(tok, messages, add_generation_prompt=True).ids
        assert gen.tok.encode(run_mod.render_chat(fmt, messages)) == want


# ---- (d) GGUF: the tokenizer llama.cpp expects for each family ----------------------------------


@pytest.fixture(scope="module")
def ggufs(checkpoints, tmp_path_factory) -> dict[str, dict]:
    pytest.importorskip("gguf")
    from llmos.export.gguf import export_gguf
    root = tmp_path_factory.mktemp("gguf")
    return {name: export_gguf(ckpt, root / name) for name, (ckpt, _) in checkpoints.items()}


def gguf_fields(path: Path) -> dict:
    import gguf
    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items()}


@pytest.mark.parametrize("name", FAMILIES)
def test_gguf_tokenizer_metadata(checkpoints, families, ggufs, name):
    meta, tok_json = gguf_fields(ggufs[name]["gguf"]), families[name]
    vocab = tok_json["model"]["vocab"]
    tokens = meta["tokenizer.ggml.tokens"]
    assert all(tokens[i] == t for t, i in vocab.items())
    types = meta["tokenizer.ggml.token_type"]
    if name in SPM_PIPELINES:
        assert meta["tokenizer.ggml.model"] == "llama" and ggufs[name]["pre"] == "llama"
        assert "tokenizer.ggml.merges" not in meta
        assert types[:3] == [2, 3, 3] and set(types[3:259]) == {6}  # UNKNOWN, CONTROL, BYTE
        assert set(types[259:]) == {1}
        assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
                meta["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
        assert meta["tokenizer.ggml.add_bos_token"] is True
        assert meta["tokenizer.ggml.add_space_prefix"] is True
        # The scores order merges as the ranks do: a token made by an earlier merge scores higher.
        scores, merges = meta["tokenizer.ggml.scores"], tok_json["model"]["merges"]
        made = [vocab["".join(m)] for m in merges]
        firsts = list(dict.fromkeys(made))
        assert all(scores[a] > scores[b] for a, b in zip(firsts, firsts[1:]))
    else:
        assert meta["tokenizer.ggml.model"] == "gpt2"
        assert meta["tokenizer.ggml.pre"] == {"gpt2": "gpt-2", "smollm": "smollm"}[name]
        assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in tok_json["model"]["merges"]]
        assert meta["tokenizer.ggml.add_bos_token"] is False
        specials = [tok_json["model"]["vocab"][s] for s in special_tokens(tok_json)]
        assert {types[i] for i in specials} == {3}


def llama_cpp_can_match(name: str, text: str, specials: list[str]) -> bool:
    """Whether llama.cpp's SentencePiece tokenizer can give HF's ids: it puts a space in front
    of the text and after every special token (add_space_prefix), as the Prepend normalizer
    does; a Metaspace puts one only where the text does not start with a space (or a "▁"
    written in it: "always"), and only at the start of the whole text ("first")."""
    if name == "llama2" or name not in SPM_PIPELINES:
        return True
    parts = re.split("|".join(re.escape(s) for s in specials), text)
    if name == "mistral":
        return len(parts) == 1 and not text.startswith((" ", "▁"))
    return not any(p.startswith((" ", "▁")) for p in parts)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_llama_cpp_tokenizes_and_generates_as_llmos(checkpoints, families, ggufs, name):
    """llama.cpp's own tokenizer on the GGUF gives HF's ids (where its SentencePiece rule can,
    see llama_cpp_can_match) on the parity strings, and its greedy tokens on the f32 file equal
    the engine's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    ckpt = checkpoints[name][0]
    model, tok = checkpoint.load_model(ckpt).eval(), tk.load(ckpt)
    f32 = 0  # GGML_TYPE_F32: a float32 KV cache (llama.cpp's default is float16)
    llm = llama_cpp.Llama(str(ggufs[name]["gguf"]), n_ctx=160, n_threads=2, logits_all=True,
                          type_k=f32, type_v=f32, verbose=False)
    specials = special_tokens(families[name])
    strings = parity_strings(specials, n_fuzz=2000, seed=1)
    compared = 0
    for text in strings:
        if llama_cpp_can_match(name, text, specials):
            want = tok.encode(text, add_special_tokens=False).ids
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == want, repr(text)
            compared += 1
    assert compared > len(strings) // 3
    for text in PROMPTS:
        ids = tok.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == ids or \
            not llama_cpp_can_match(name, text, specials)
        want = Engine(model).generate([ids], SamplingParams(max_new_tokens=32, temperature=0))[0]
        llm.reset()
        llm.eval(ids)
        got = []
        for _ in range(32):  # greedy on llama.cpp's logits, the token ids fed in directly
            got.append(int(llm.scores[llm.n_tokens - 1].argmax()))
            llm.eval([got[-1]])
        assert got == want, text
