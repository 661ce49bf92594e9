"""Checkpoint directories: Hugging Face–compatible, written atomically, resumable.

    DIR/config.json            Llama config keys (`LlamaForCausalLM`)
    DIR/model.safetensors      Llama tensor names, fp32
    DIR/tokenizer.json         + tokenizer_config.json (chat template)
    DIR/llmos.json             stage, parent, step, tokens seen, data manifest hash, config, metrics
    DIR/trainer_state/         (resumable runs) optimizer, data position, RNG: tensors in
                               safetensors, structure in JSON; no pickles anywhere

A checkpoint is first written to a sibling temporary directory and then renamed into place, so a
crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llmos import tokenizer as tokenizers_
from llmos.config import ModelConfig
from llmos.model import Transformer

# ---- Hugging Face names and config ------------------------------------------------------------


def hf_config(cfg: ModelConfig, eos_token_id: int) -> dict:
    d = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }
    if cfg.rope_scaling:  # the key transformers 4 reads; transformers 5 reads it too
        d["rope_scaling"] = dict(cfg.rope_scaling)
    return d


# What other architectures need that our Llama lacks, so a refusal can name it.
NEEDS = {
    "qwen2": "attention bias (q/k/v projections with a bias)",
    "qwen3": "q/k normalization (RMSNorm on queries and keys)",
    "gemma": "Gemma's norm ((1 + weight) RMSNorm), GeGLU and scaled embeddings",
    "gemma2": "Gemma's norm ((1 + weight) RMSNorm), logit soft-capping and sliding windows",
    "gemma3": "Gemma's norm ((1 + weight) RMSNorm), q/k normalization and sliding windows",
    "mixtral": "a mixture-of-experts feed-forward",
    "qwen2_moe": "a mixture-of-experts feed-forward",
    "phi": "parallel attention/MLP blocks, LayerNorm and partial rotary embeddings",
    "phi3": "fused qkv/gate_up tensors and LongRoPE scaling",
    "gpt2": "learned absolute positions, LayerNorm and a GELU MLP",
}


def unsupported(d: dict) -> list[str]:
    """The features of a Hugging Face config that llmos's Llama cannot represent (empty = ok)."""
    kind = d.get("model_type")
    if kind not in ("llama", "mistral"):
        return [f"model_type {kind!r}" + (f" needs {NEEDS[kind]}" if kind in NEEDS else
                                            " (llmos reads 'llama' and 'mistral')")]
    out = []
    if d.get("attention_bias"):
        out.append("attention bias (attention_bias: true)")
    if d.get("mlp_bias"):
        out.append("MLP bias (mlp_bias: true)")
    if d.get("hidden_act", "silu") != "silu":
        out.append(f"hidden_act {d['hidden_act']!r} (llmos's SwiGLU uses silu)")
    if d.get("num_local_experts") or d.get("num_experts"):
        out.append("mixture of experts")
    rope = _rope(d)
    if rope.get("rope_type", "default") not in ("default", "llama3"):
        out.append(f"rope type {rope['rope_type']!r} (llmos has default and llama3)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        out.append("partial rotary embeddings (partial_rotary_factor)")
    window, context = d.get("sliding_window"), d.get("max_position_embeddings", 0)
    if window is not None and window < context:
        out.append(f"sliding-window attention (sliding_window {window} < "
                   f"max_position_embeddings {context})")
    return out


def _rope(d: dict) -> dict:
    """Rotary settings from either config layout: transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling` (whose type key was once `type`)."""
    scaling = dict(d.get("rope_scaling") or {})
    if "type" in scaling:
        scaling.setdefault("rope_type", scaling.pop("type"))
    rope = dict(d.get("rope_parameters") or {}) | scaling  # the older key wins where both are
    rope.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    return rope


def model_config_from_hf(d: dict) -> ModelConfig:
    """Our config from a Hugging Face one. Mistral without a sliding window (or one at least as
    long as the context) is a Llama, so it is read as one (and written back as `llama`)."""
    missing = unsupported(d)
    if missing:
        raise ValueError("unsupported architecture: llmos's Llama model lacks "
                         + "; ".join(missing))
    rope = _rope(d)
    scaling = None
    if rope.get("rope_type") == "llama3":
        scaling = {"rope_type": "llama3"} | {k: rope[k] for k in (
            "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    heads = d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // heads
    return ModelConfig(
        vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=heads, n_kv_heads=d.get("num_key_value_heads") or heads,
        ffn_dim=d["intermediate_size"], max_seq_len=d["max_position_embeddings"],
        rope_theta=float(rope["rope_theta"]), norm_eps=d.get("rms_norm_eps", 1e-5),
        tie_embeddings=d.get("tie_word_embeddings", False),
        head_size=0 if head_dim * heads == d["hidden_size"] else head_dim,
        rope_scaling=scaling,
    )


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our fused tensors, split into Llama's names (contiguous, detached copies)."""
    c = model.cfg
    q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not c.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, b in enumerate(model.layers):
        p = f"model.layers.{i}."
        q, k, v = b.attn.wqkv.weight.split([q_out, kv_out, kv_out])
        gate, up = b.ffn.w13.weight.split(c.ffn_hidden)
        sd |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
               p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": b.attn.wo.weight,
               p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
               p + "mlp.down_proj.weight": b.ffn.w2.weight,
               p + "input_layernorm.weight": b.attn_norm.weight,
               p + "post_attention_layernorm.weight": b.ffn_norm.weight}
    return {k: v.detach().float().contiguous().cpu() for k, v in sd.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Llama names to ours (fusing q/k/v and gate/up). Raises naming any missing tensor."""
    def take(name):
        if name not in sd:
            raise KeyError(f"checkpoint lacks tensor {name!r}")
        return sd[name]

    out = {"embed.weight": take("model.embed_tokens.weight"),
           "norm.weight": take("model.norm.weight")}
    out["lm_head.weight"] = out["embed.weight"] if cfg.tie_embeddings else take("lm_head.weight")
    for i in range(cfg.n_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[q + "attn.wqkv.weight"] = torch.cat([take(p + f"self_attn.{n}_proj.weight")
                                                 for n in "qkv"])
        out[q + "attn.wo.weight"] = take(p + "self_attn.o_proj.weight")
        out[q + "ffn.w13.weight"] = torch.cat([take(p + "mlp.gate_proj.weight"),
                                               take(p + "mlp.up_proj.weight")])
        out[q + "ffn.w2.weight"] = take(p + "mlp.down_proj.weight")
        out[q + "attn_norm.weight"] = take(p + "input_layernorm.weight")
        out[q + "ffn_norm.weight"] = take(p + "post_attention_layernorm.weight")
    return out


# ---- trainer state without pickles ------------------------------------------------------------


def _flatten(obj, tensors: dict, key: str):
    """Replace every tensor in a nested structure by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # JSON keys are strings; remember int keys (optimizer state is keyed by param index).
        return {"__dict__": [[k, _flatten(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    return obj


def _unflatten(obj, tensors: dict):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_trainer_state(state: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, tensors, "s")
    save_file(tensors, str(out_dir / "tensors.safetensors"))
    (out_dir / "state.json").write_text(json.dumps(tree))


def load_trainer_state(ckpt_dir: str | Path) -> dict:
    d = Path(ckpt_dir) / "trainer_state"
    if not (d / "state.json").exists():
        raise FileNotFoundError(f"{ckpt_dir} has no trainer_state/: it cannot be resumed")
    return _unflatten(json.loads((d / "state.json").read_text()),
                      load_file(str(d / "tensors.safetensors")))


# ---- whole checkpoints ------------------------------------------------------------------------


def save(out_dir: str | Path, model: Transformer, tokenizer_dir: str | Path, info: dict,
         trainer_state: dict | None = None, *, tensors: dict | None = None,
         config: dict | None = None) -> Path:
    """Write a complete checkpoint atomically. `info` becomes llmos.json. `tensors` and
    `config` replace the causal LM's weights and config.json (a reward model writes Hugging
    Face's sequence-classification layout this way)."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok_dir = Path(tokenizer_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json"):
        if (tok_dir / name).exists():
            shutil.copy2(tok_dir / name, tmp / name)
    eos = tokenizers_.eot_id(tokenizers_.load(tmp / "tokenizer.json"))
    config = config if config is not None else hf_config(model.cfg, eos)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tensors = tensors if tensors is not None else to_hf_state_dict(model)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "llmos.json").write_text(json.dumps(info, indent=2, default=str))
    if trainer_state is not None:
        save_trainer_state(trainer_state, tmp / "trainer_state")
    _fsync_tree(tmp)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def recover(ckpt_dir: Path) -> None:
    """If a crash fell between the two renames of `save`, put the previous checkpoint back."""
    if ckpt_dir.exists():
        return
    olds = sorted(ckpt_dir.parent.glob(f".{ckpt_dir.name}.old-*"))
    if olds:
        os.replace(olds[-1], ckpt_dir)


def write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def read_info(ckpt_dir: str | Path) -> dict:
    p = Path(ckpt_dir) / "llmos.json"
    return json.loads(p.read_text()) if p.exists() else {}


def load_model(ckpt_dir: str | Path, device: str = "cpu") -> Transformer:
    d = Path(ckpt_dir)
    recover(d)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d} is not a checkpoint directory (no config.json)")
    cfg = model_config_from_hf(json.loads((d / "config.json").read_text()))
    model = Transformer(cfg)
    sd = from_hf_state_dict(load_file(str(d / "model.safetensors")), cfg)
    model.load_state_dict(sd, strict=True)
    return model.to(device)


def parent_identity(parent: Path) -> dict:
    """What distinguishes one training of the parent from another (a later stage compares it
    to know whether it was built on the parent as it is now)."""
    info = read_info(parent)
    return {k: info.get(k) for k in ("stage", "step", "tokens_seen", "final")} | {
        "val_loss": info.get("metrics", {}).get("val_loss")}


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write a stage's checkpoint over one already there, unless resuming it or told to
    overwrite it; say what to do instead."""
    if resume:
        if not (out / "trainer_state").exists():
            raise FileNotFoundError(f"--resume: {out} has no resumable checkpoint")
        return
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a checkpoint; use --resume to continue it, "
                              "--out for another folder, or --overwrite to replace it")
