"""`llmos import hf DIR`: a local Hugging Face Llama-family checkpoint -> an llmos checkpoint.

    llmos import hf ~/models/TinyLlama-1.1B-Chat --out runs/imported/tinyllama

Reads config.json (model_type llama, or mistral without a short sliding window), the weights
(model.safetensors, or shards listed in model.safetensors.index.json; bf16/fp16 become fp32),
tokenizer.json and tokenizer_config.json (copied as they are, with chat_template.jinja and
generation_config.json when present), and writes the directory `checkpoint.save` writes, with
llmos.json recording stage "import", the source and `"chat_template": "model"` so chat and SFT
render with the model's own template. Anything llmos's Llama cannot represent is refused by name
before a tensor is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizers_
from llmos.model import Transformer


def weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (src / "model.safetensors").exists():
        names = ["model.safetensors"]
    else:
        names = sorted(p.name for p in src.glob("*.safetensors"))
    if not names:
        pickles = any(src.glob("*.bin")) or any(src.glob("*.pt"))
        raise FileNotFoundError(
            f"{src} has no safetensors weights (model.safetensors, or shards listed in "
            "model.safetensors.index.json)"
            + ("; pytorch_model.bin is not read: it is a pickle, convert it to safetensors"
               if pickles else ""))
    missing = [n for n in names if not (src / n).exists()]
    if missing:
        raise FileNotFoundError(f"{src}: weight shards named in the index are missing: "
                                + ", ".join(missing))
    return [src / n for n in names]


def read_weights(files: list[Path]) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor as fp32, and the source dtype(s) for the record."""
    sd, dtypes = {}, set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                dtypes.add(str(t.dtype).removeprefix("torch."))
                sd[name] = t.float()
    return sd, ",".join(sorted(dtypes))


def import_hf(src: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory (expected a Hugging Face model folder)")
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src} has no config.json: not a Hugging Face model folder")
    hf = json.loads((src / "config.json").read_text())
    try:
        cfg = checkpoint.model_config_from_hf(hf)  # refuses, by name, what we cannot represent
    except KeyError as e:
        raise ValueError(f"{src}/config.json lacks {e}") from None
    if not (src / "tokenizer.json").exists():
        raise FileNotFoundError(f"{src} has no tokenizer.json (a fast tokenizer is needed; a "
                                "tokenizer.model alone is not read)")
    out = Path(out) if out else Path("runs/imported") / src.resolve().name
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; use --out for another folder or "
                              "--overwrite to replace it")
    tok = tokenizers_.load(src)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model only "
                         f"{cfg.vocab_size} embeddings")

    sd, dtype = read_weights(weight_files(src))
    with torch.device("meta"):  # no random init of weights about to be replaced (seconds per 1B)
        model = Transformer(cfg)
    try:
        ours = checkpoint.from_hf_state_dict(sd, cfg)
        del sd  # the unfused q/k/v and gate/up copies go now, not after saving
        model.load_state_dict(ours, strict=True, assign=True)
    except (KeyError, RuntimeError) as e:  # a missing tensor, or one of the wrong shape
        raise ValueError(f"{src}: the weights do not match config.json: {e}") from None
    if cfg.tie_embeddings:  # assign gave each name its own Parameter
        model.lm_head.weight = model.embed.weight
    info = {"stage": "import", "source": str(src.resolve()), "source_format": "hf",
            "source_model_type": hf.get("model_type"), "source_dtype": dtype,
            "chat_template": "model" if chat_format.read_template(src) else "chatml",
            "model": asdict(cfg), "params": model.num_params()}
    return checkpoint.save(out, model, src, info)

