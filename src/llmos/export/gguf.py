"""`llmos export --format gguf`: OUT/model.gguf for llama.cpp and OUT/Modelfile for Ollama.

The GGUF file is what llama.cpp's convert_hf_to_gguf.py writes for a Llama checkpoint:

- architecture `llama` and the `llama.*` hyperparameters llama.cpp reads;
- tensors under llama.cpp's names, with q and k permuted from Hugging Face's rotate-half rotary
  layout to GGML's interleaved one (`permute`, as LlamaModel.permute in the convert script);
- Llama 3.1 rope scaling as llama.cpp stores it: a `rope_freqs.weight` tensor of per-frequency
  divisors (the convert script's `generate_extra_tensors`), no rope-scaling keys;
- the tokenizer as llama.cpp's tokenizers read it: byte-level BPE as a `gpt2` vocabulary (tokens,
  types: special added tokens are CONTROL; merges; `tokenizer.ggml.pre` naming llama.cpp's
  pre-tokenizer for the split, see `pre_name`), SentencePiece-style BPE as a `llama` one
  (tokens, scores that order merges as the merge ranks do, types: <0xNN> are BYTE);
- the chat template (Jinja) as `tokenizer.chat_template`.

The Modelfile says the same chat format in Ollama's Go-template syntax, with its stop tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizer_
from llmos.export.ollama import GGUF_NAME, modelfile
from llmos.export.params import role_affixes, rope_frequencies, tokenizer_meta

MODELFILE_NAME = "Modelfile"
OUTTYPES = ("f32", "f16", "q8_0")

# llama.cpp's pre-tokenizer for a `gpt2` vocabulary is chosen by name (llama-vocab.cpp). For
# GPT-4's cl100k split, the one llmos trains with (tokenizer.SPLIT_PATTERN, with (?i:...) spelled
# out as [sS] classes), two names select it; they differ in `ignore_merges` (a whole piece found
# in the vocabulary is taken without merging), which llama.cpp turns on for llama-bpe (Llama 3's
# tokenizer.json has ignore_merges: true) and off for dbrx (as in the tokenizers llmos trains).
# GPT-2's split is "gpt-2"; "smollm" cuts every digit apart first, as SmolLM's Digits step does.
PRE = {("gpt4", False, False): "dbrx", ("gpt4", False, True): "llama-bpe",
       ("gpt2", False, False): "gpt-2", ("gpt2", True, False): "smollm"}


def gguf_module():
    try:
        import gguf
    except ImportError as e:  # an optional dependency: pip install 'llmos[gguf]'
        raise SystemExit("--format gguf needs the gguf package: pip install 'llmos[gguf]' "
                         "(or pip install gguf)") from e
    return gguf


# ---- weights ----------------------------------------------------------------------------------


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q or k projection from rotate-half order (the first half of each head's dims
    pairs with the second half) to GGML's interleaved order (dims 2i and 2i+1 pair)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `permute`."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama_cpp_tensors(model) -> dict[str, torch.Tensor]:
    """The model's weights (float32) under llama.cpp's tensor names, q/k permuted."""
    c = model.cfg
    hf = checkpoint.to_hf_state_dict(model)
    out = {"token_embd.weight": hf["model.embed_tokens.weight"]}
    for i in range(c.n_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out |= {
            b + "attn_norm.weight": hf[p + "input_layernorm.weight"],
            b + "attn_q.weight": permute(hf[p + "self_attn.q_proj.weight"], c.n_heads),
            b + "attn_k.weight": permute(hf[p + "self_attn.k_proj.weight"], c.n_kv_heads),
            b + "attn_v.weight": hf[p + "self_attn.v_proj.weight"],
            b + "attn_output.weight": hf[p + "self_attn.o_proj.weight"],
            b + "ffn_norm.weight": hf[p + "post_attention_layernorm.weight"],
            b + "ffn_gate.weight": hf[p + "mlp.gate_proj.weight"],
            b + "ffn_up.weight": hf[p + "mlp.up_proj.weight"],
            b + "ffn_down.weight": hf[p + "mlp.down_proj.weight"],
        }
    out["output_norm.weight"] = hf["model.norm.weight"]
    if not c.tie_embeddings:  # tied: llama.cpp reuses token_embd when output.weight is absent
        out["output.weight"] = hf["lm_head.weight"]
    if c.rope_scaling:
        out["rope_freqs.weight"] = rope_factors(c)
    return {k: v.contiguous() for k, v in out.items()}


def rope_factors(cfg) -> torch.Tensor:
    """Llama 3.1 rope scaling as llama.cpp applies it: each rotary frequency divided by a factor
    (1 for short waves, `factor` for long ones, a blend between)."""
    kind = cfg.rope_scaling.get("rope_type")
    if kind != "llama3":
        raise ValueError(f"rope scaling {kind!r}: GGUF export supports llama3 rope scaling only")
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    return (inv_freq / rope_frequencies(cfg)).float()


def encode_tensor(gguf, name: str, w: torch.Tensor, outtype: str):
    """(numpy data, GGML type) for one tensor; norms, rope factors and any matrix whose rows do
    not split into Q8_0 blocks of 32 stay float32 / become float16."""
    T = gguf.GGMLQuantizationType
    a = w.float().numpy()
    if a.ndim == 1 or outtype == "f32":
        return a.astype(np.float32), T.F32
    if outtype == "q8_0" and a.shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0:
        return gguf.quants.quantize(a, T.Q8_0), T.Q8_0
    return a.astype(np.float16), T.F16


# ---- tokenizer --------------------------------------------------------------------------------


def vocabulary(gguf, tok: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF types: added special tokens CONTROL, other added tokens
    USER_DEFINED, the rest NORMAL; ids the tokenizer lacks (a padded embedding) are UNUSED."""
    TT = gguf.TokenType
    by_id: dict[int, tuple[str, int]] = {i: (t, TT.NORMAL) for t, i in tok["vocab"].items()}
    for t in tok["added"]:
        by_id[t["id"]] = (t["content"], TT.CONTROL if t["special"] else TT.USER_DEFINED)
    if max(by_id) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(by_id)} but the model's vocabulary "
                         f"is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", TT.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return tokens, types


def pre_name(tok: dict) -> str:
    """llama.cpp's name for a byte-level tokenizer's split (split, digits, ignore_merges)."""
    key = (tok["split"], tok.get("digits", False), tok["ignore_merges"])
    if key not in PRE:
        raise ValueError("llama.cpp cannot reproduce this tokenizer: no pre-tokenizer of "
                         f"llama.cpp has {tok['split']}'s split with ignore_merges "
                         f"{tok['ignore_merges']}")
    return PRE[key]


def piece_scores(tok: dict, vocab_size: int) -> list[float]:
    """Scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose joined
    text is the vocabulary entry of highest score, where Hugging Face's BPE merges the pair of
    lowest rank. A token scores minus the rank of the first merge that makes it, so both pick
    the same pair; files converted from SentencePiece list every split of a token as a merge,
    so a joined text in the vocabulary always is a merge. Tokens no merge makes score lowest."""
    scores = [-float(len(tok["merges"]) + 1)] * vocab_size
    for rank in range(len(tok["merges"]) - 1, -1, -1):
        i = tok["vocab"].get("".join(tok["merges"][rank]))
        if i is not None and i < vocab_size:
            scores[i] = -float(rank)
    return scores


def write_tokenizer(gguf, w, tok: dict, src: Path, hf_tok, vocab_size: int) -> str:
    """The tokenizer keys; returns the pre-tokenizer's name (`llama` for SentencePiece)."""
    tokens, types = vocabulary(gguf, tok, vocab_size)
    eot = tokenizer_.eot_id(hf_tok)
    bos, add_bos = bos_token(src, hf_tok, eot)
    if tok["kind"] == "sentencepiece":
        name = "llama"
        for i, text in enumerate(tokens):  # byte-fallback tokens and the unknown token
            if types[i] == gguf.TokenType.NORMAL and tok["byte_fallback"] \
                    and re.fullmatch(r"<0x[0-9A-F]{2}>", text):
                types[i] = int(gguf.TokenType.BYTE)
            elif text == tok["unk"]:
                types[i] = int(gguf.TokenType.UNKNOWN)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(piece_scores(tok, vocab_size))
        w.add_token_types(types)
        # llama.cpp puts a space before the text and after each special token when this is on:
        # the Prepend normalizer exactly, a Metaspace "always"/"first" only where the text does
        # not already start with a space (docs/export.md).
        w.add_add_space_prefix(tok["space_prefix"] != "never")
        if tok["unk"] is not None and hf_tok.token_to_id(tok["unk"]) is not None:
            w.add_unk_token_id(hf_tok.token_to_id(tok["unk"]))
    else:
        name = pre_name(tok)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(name)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges([" ".join(m) for m in tok["merges"]])
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eot)
    if "<|im_end|>" in tok["vocab"] or any(t["content"] == "<|im_end|>" for t in tok["added"]):
        w.add_eot_token_id(hf_tok.token_to_id("<|im_end|>"))
    pad = hf_tok.token_to_id("<|pad|>")
    w.add_pad_token_id(eot if pad is None else pad)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(bool(tok["wrap"][1]))
    return name


def bos_token(src: Path, hf_tok, eot: int) -> tuple[int, bool]:
    """(BOS id, whether the tokenizer adds it). llmos tokenizers have none: the id names the eot
    (GPT-2's convention; without any, llama.cpp would take id 11) and is never added. An
    imported model's BOS (tokenizer_config.json's bos_token) is kept, and added to a prompt as
    its tokenizer adds it, so its chat template's {{ bos_token }} renders the right text."""
    config = src / "tokenizer_config.json"
    text = json.loads(config.read_text()).get("bos_token") if config.exists() else None
    text = text.get("content") if isinstance(text, dict) else text
    bos = hf_tok.token_to_id(text) if isinstance(text, str) else None
    if bos is None:
        return eot, False
    return bos, hf_tok.encode("a", add_special_tokens=True).ids[:1] == [bos]


# ---- the two files ----------------------------------------------------------------------------


def export_gguf(model_dir: str | Path, out_dir: str | Path, outtype: str = "f32") -> dict:
    """Write OUT/model.gguf and OUT/Modelfile; returns their paths, the size and the notes."""
    gguf = gguf_module()
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown --outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    src = Path(model_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (src / name).exists():
            raise FileNotFoundError(f"{src} is not a checkpoint directory (no {name})")
    try:
        tok = tokenizer_meta(json.loads((src / "tokenizer.json").read_text()))
    except ValueError as e:  # the same tokenizers run.py reads are the ones llama.cpp's can
        raise ValueError(str(e).replace("run.py cannot", "llama.cpp cannot")) from e
    hf_tok = tokenizer_.load(src)
    model = checkpoint.load_model(src)
    c = model.cfg
    tensors = llama_cpp_tensors(model)  # raises on rope scaling llama.cpp does not read

    template = chat_format.template_for(src)
    jinja = template.source if template is not None else chat_format.CHAT_TEMPLATE
    specials = {t["content"] for t in tok["added"]}
    ends = [hf_tok.id_to_token(i) for i in tokenizer_.end_ids(hf_tok)]
    fmt, chat_note = None, None
    try:
        fmt = role_affixes(template, specials, ends)
    except ValueError as e:
        chat_note = f"the chat template has no fixed per-role format ({e})"
    stops = fmt["stop"] if fmt else ends
    modelfile_text = modelfile(fmt, stops, chat_note, tools=template is None)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / GGUF_NAME
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(src.resolve().name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.ffn_hidden)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_theta))
    w.add_layer_norm_rms_eps(float(c.norm_eps))

    pre = write_tokenizer(gguf, w, tok, src, hf_tok, c.vocab_size)
    w.add_chat_template(jinja)

    types_written = {}
    try:
        for name, t in tensors.items():
            data, qtype = encode_tensor(gguf, name, t, outtype)
            w.add_tensor(name, data, raw_dtype=qtype)
            types_written[name] = qtype.name
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.chmod(0o644)
        tmp.replace(path)  # a reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)

    mf = out / MODELFILE_NAME
    mf.write_text(modelfile_text)
    return {"gguf": path, "modelfile": mf, "gguf_bytes": path.stat().st_size,
            "pre": pre, "types": types_written, "chat_note": chat_note}
