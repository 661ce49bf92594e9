"""The params file of `llmos export --format run`: one self-describing file in the safetensors
layout that `run.py` (numpy only) reads. docs/export.md documents the layout (format version 2).

Metadata (all values strings, JSON where structured): format, format_version, config (the
model's shape), tokenizer (vocabulary, merges, added tokens, its kind and options: byte-level with
GPT-4's or GPT-2's split, or SentencePiece-style; the ids added around a text),
chat (per-role prefix/suffix derived from the checkpoint's chat template, generation prompt, stop
tokens), dtype and group_size. Tensors carry llmos's own (fused) names; in int8 files each matrix
W is stored as `W.q` (int8) and `W.scale` (float32, one per group of inputs).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizer_
from llmos.export.run import FORMAT, FORMAT_VERSION
from llmos.model import llama3_frequencies

PARAMS_NAME, RUN_NAME = "model.llmos", "run.py"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
SENTINEL = "\x00{}\x00"  # contents no template writes by itself


# ---- tokenizer --------------------------------------------------------------------------------

# The pattern Hugging Face's ByteLevel pre-tokenizer cuts with when use_regex is on (GPT-2's),
# recorded in the params file for reference as SPLIT_PATTERN is for GPT-4's split.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def steps(node: dict | None, key: str) -> list[dict]:
    """The steps of a normalizer, pre-tokenizer or decoder: a Sequence's, one, or none."""
    if not node:
        return []
    return node.get(key, []) if node.get("type") == "Sequence" else [node]


def byte_level_split(pre: list[dict]) -> dict | None:
    """run.py's split for a byte-level pre-tokenizer, or None when it has no such split."""
    kinds = [s.get("type") for s in pre]
    level = pre[-1] if kinds and kinds[-1] == "ByteLevel" else {}
    if not level or level.get("add_prefix_space", True):
        return None
    if kinds == ["Split", "ByteLevel"] and not level.get("use_regex", True):
        split = pre[0]
        if (split.get("pattern", {}).get("Regex") == tokenizer_.SPLIT_PATTERN
                and split.get("behavior") == "Isolated" and not split.get("invert")):
            return {"split": "gpt4", "split_pattern": tokenizer_.SPLIT_PATTERN}
    if level.get("use_regex", True) and (kinds == ["ByteLevel"] or (
            kinds == ["Digits", "ByteLevel"] and pre[0].get("individual_digits"))):
        return {"split": "gpt2", "split_pattern": GPT2_PATTERN, "digits": len(kinds) == 2}
    return None


def sentencepiece_options(norm: list[dict], pre: list[dict], dec: list[dict]) -> dict | None:
    """run.py's options for the SentencePiece-style pipeline, or None when it is not one: spaces
    made "▁" by a Replace normalizer (a Prepend("▁") before it puts one in front of every text
    between special tokens: Llama 2's tokenizer.json) or by a Metaspace pre-tokenizer (newer
    files; its prepend_scheme says where one goes in front), and a decoder that undoes it."""
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    if not pre and norm in ([{"type": "Prepend", "prepend": "▁"}, replace], [replace]):
        opts = {"space_prefix": "every" if len(norm) == 2 else "never", "split_words": False}
    elif not norm and len(pre) == 1 and pre[0].get("type") == "Metaspace" \
            and pre[0].get("replacement") == "▁":
        scheme = pre[0].get("prepend_scheme") or (
            "always" if pre[0].get("add_prefix_space", True) else "never")
        opts = {"space_prefix": scheme, "split_words": pre[0].get("split", True)}
    else:
        return None
    kinds = {d.get("type") for d in dec}
    strips = [(d.get("content"), d.get("start"), d.get("stop")) for d in dec
              if d.get("type") == "Strip"]
    undo = {"type": "Replace", "pattern": {"String": "▁"}, "content": " "} in dec
    meta = [d for d in dec if d.get("type") == "Metaspace"]
    known = {"Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"}
    if not (undo or meta) or kinds - known or strips not in ([], [(" ", 0, 0)], [(" ", 1, 0)]):
        return None  # a decoder run.py does not reproduce
    # Strip(" ", 1, 0), or a Metaspace decoder that put a "▁" in front: one leading space goes.
    opts["strip"] = strips == [(" ", 1, 0)] or any(m.get("prepend_scheme", "always" if m.get(
        "add_prefix_space", True) else "never") != "never" for m in meta)
    return opts


def wrap_ids(tok_json: dict) -> list[list[int]]:
    """The ids the tokenizer adds before and after a text when asked to (Llama's BOS)."""
    hf = Tokenizer.from_str(json.dumps(tok_json))
    bare, full = (hf.encode("a", add_special_tokens=s).ids for s in (False, True))
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return [full[:k], full[k + len(bare):]]
    raise ValueError("run.py cannot reproduce this tokenizer: its post-processor changes the "
                     "text's own tokens")


def tokenizer_meta(tok_json: dict) -> dict:
    """What run.py needs of tokenizer.json; raises ValueError naming what it cannot reproduce.
    run.py implements BPE of two kinds: byte-level with GPT-4's split (llmos's own, Llama 3) or
    GPT-2's (GPT-2; SmolLM cuts digits apart first), and SentencePiece-style (Llama 2,
    TinyLlama, Mistral: "▁" for spaces, byte fallback)."""
    model = tok_json.get("model") or {}
    norm = steps(tok_json.get("normalizer"), "normalizers")
    pre = steps(tok_json.get("pre_tokenizer"), "pretokenizers")
    dec = steps(tok_json.get("decoder"), "decoders")
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model {model.get('type')!r} (run.py implements BPE)")
    if model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        problems.append("BPE options (dropout, subword prefix/suffix)")
    split, sp = byte_level_split(pre), sentencepiece_options(norm, pre, dec)
    if split is not None:
        kind = {"kind": "byte_level", **split}
        if norm:
            problems.append("a " + "+".join(n.get("type") for n in norm) + " normalizer")
        if model.get("byte_fallback"):
            problems.append("byte fallback in a byte-level BPE")
        if [d.get("type") for d in dec] != ["ByteLevel"]:
            problems.append("a decoder other than ByteLevel")
    elif sp is not None:
        kind = {"kind": "sentencepiece", **sp, "byte_fallback": bool(model.get("byte_fallback")),
                "unk": model.get("unk_token"), "fuse_unk": bool(model.get("fuse_unk"))}
        if model.get("byte_fallback") and "ByteFallback" not in [d.get("type") for d in dec]:
            problems.append("byte fallback without a ByteFallback decoder")
    else:
        described = [f"{name} {'+'.join(s.get('type') for s in parts)}"
                     for name, parts in (("normalizer", norm), ("pre-tokenizer", pre),
                                         ("decoder", dec)) if parts]
        problems.append(f"a pipeline ({', '.join(described) or 'nothing'}) that is neither "
                        "byte-level BPE with GPT-4's or GPT-2's split nor SentencePiece-style "
                        "BPE (▁ for spaces)")
    added = tok_json.get("added_tokens", [])
    odd = [t["content"] for t in added if t.get("lstrip") or t.get("rstrip")
           or t.get("single_word") or (norm and t.get("normalized"))]
    if odd:
        problems.append("added tokens matched with lstrip/rstrip/single_word or after "
                        "normalization: " + ", ".join(odd[:5]))
    if problems:
        raise ValueError("run.py cannot reproduce this tokenizer: it has " + "; ".join(problems))
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    return {"vocab": model["vocab"], "merges": merges,
            "added": [{"id": t["id"], "content": t["content"], "special": t["special"]}
                      for t in added],
            **kind, "ignore_merges": bool(model.get("ignore_merges")),
            "wrap": wrap_ids(tok_json)}


# ---- chat format ------------------------------------------------------------------------------


def role_affixes(template: chat_format.Template | None, special_tokens: set[str],
                 end_tokens: list[str]) -> dict:
    """Per-role (prefix, suffix) strings, the generation prompt and the stop tokens, read off
    renders of the chat template (llmos's ChatML when `template` is None, else the model's own
    Jinja) on sentinel contents. Raises ValueError when the template is not of that shape (the
    pieces must rebuild a whole conversation exactly)."""
    def render(roles, gen=False):
        msgs = [{"role": r, "content": SENTINEL.format(i)} for i, r in enumerate(roles)]
        if template is None:
            return chat_format.render_text(msgs, None, gen)[0]
        return chat_format.template_text(template, msgs, None, gen)

    def around(text, i):
        before, _, after = text.partition(SENTINEL.format(i))
        return before, after

    fmt = {}
    for role in ("system", "user"):
        fmt[role] = list(around(render([role]), 0))
    one = render(["user"])
    with_gen = render(["user"], gen=True)
    if not with_gen.startswith(one):
        raise ValueError("the generation prompt does not extend the rendered conversation")
    fmt["generation_prompt"] = with_gen[len(one):]
    pair = render(["user", "assistant"])
    between = around(pair, 0)[1].partition(SENTINEL.format(1))[0]  # user suffix + asst prefix
    fmt["assistant"] = [between[len(fmt["user"][1]):], pair.partition(SENTINEL.format(1))[2]]
    # Check on a longer conversation that prefix + content + suffix per turn rebuilds it.
    roles = ["system", "user", "assistant", "user", "assistant", "user"]
    expected = render(roles, gen=True)
    got = "".join(fmt[r][0] + SENTINEL.format(i) + fmt[r][1] for i, r in enumerate(roles))
    if got + fmt["generation_prompt"] != expected:
        raise ValueError("the chat template is not a fixed prefix and suffix per role")
    stops = sorted(t for t in special_tokens if t and t in fmt["assistant"][1])
    fmt["stop"] = stops + [t for t in end_tokens if t not in stops]
    return fmt


# ---- weights ----------------------------------------------------------------------------------


def quantize(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group of `group` inputs: w ~ q * scale, q in [-127, 127]."""
    out, n = w.shape
    g = w.float().reshape(out, n // group, group)
    scale = g.abs().amax(-1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(g / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(out, n).contiguous(), scale.contiguous()


def rope_frequencies(cfg) -> torch.Tensor:
    """The rotary inverse frequencies as the model computes them, scaling included, so run.py
    needs no knowledge of rope scaling schemes."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    return llama3_frequencies(inv_freq, cfg.rope_scaling) if cfg.rope_scaling else inv_freq


def weight_tensors(model, dtype: str, group: int) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    sd["rope.inv_freq"] = rope_frequencies(model.cfg)
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight")
    out = {}
    for name, w in sd.items():
        if w.dim() == 1 or dtype == "fp32":  # norm gains stay float32
            out[name] = w.contiguous()
        elif dtype == "int8":
            if w.shape[1] % group:
                raise ValueError(f"--group-size {group} does not divide the {w.shape[1]} inputs "
                                 f"of {name}; choose a divisor")
            out[name + ".q"], out[name + ".scale"] = quantize(w, group)
        else:
            out[name] = w.to(DTYPES[dtype]).contiguous()
    return out


# ---- the two files ----------------------------------------------------------------------------


def export_run(model_dir: str | Path, out_dir: str | Path, dtype: str = "fp32",
               group_size: int = 64) -> dict:
    """Write OUT/model.llmos and OUT/run.py; returns their paths and sizes."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if group_size <= 0:
        raise ValueError(f"--group-size must be positive, not {group_size}")
    src = Path(model_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (src / name).exists():
            raise FileNotFoundError(f"{src} is not a checkpoint directory (no {name})")
    tok = tokenizer_meta(json.loads((src / "tokenizer.json").read_text()))
    hf_tok = tokenizer_.load(src)
    ends = [hf_tok.id_to_token(i) for i in tokenizer_.end_ids(hf_tok)]
    tok["eot"] = hf_tok.id_to_token(tokenizer_.eot_id(hf_tok))
    fmt, chat_note = None, None
    try:
        specials = {t["content"] for t in tok["added"]}
        fmt = role_affixes(chat_format.template_for(src), specials, ends)
    except ValueError as e:  # still exported: run.py's generate mode works without it
        chat_note = str(e)
    model = checkpoint.load_model(src)
    c = model.cfg
    config = {"dim": c.dim, "n_layers": c.n_layers, "n_heads": c.n_heads,
              "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim, "ffn_dim": c.ffn_hidden,
              "vocab_size": c.vocab_size, "max_seq_len": c.max_seq_len,
              "rope_theta": c.rope_theta, "norm_eps": c.norm_eps, "tied": c.tie_embeddings}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "dtype": dtype,
            "group_size": str(group_size if dtype == "int8" else 0),
            "config": json.dumps(config), "tokenizer": json.dumps(tok, ensure_ascii=False),
            "chat": json.dumps(fmt, ensure_ascii=False)}
    tensors = weight_tensors(model, dtype, group_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = out / PARAMS_NAME
    tmp = params.with_name(params.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(params)  # a reader never sees half a file
    run = out / RUN_NAME
    shutil.copyfile(Path(__file__).with_name(RUN_NAME), run)
    return {"params": params, "run": run, "params_bytes": params.stat().st_size,
            "chat": fmt is not None, "chat_note": chat_note}
