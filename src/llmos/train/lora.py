"""LoRA: train a low-rank update W + (alpha / r) * B @ A of chosen linear layers on a frozen model
(Hu et al., 2021).

The update is a `torch.nn.utils.parametrize` parametrization of each target's weight, so the
model keeps its structure: `layer.weight` *is* the merged weight, a checkpoint saved from an
adapted model is already merged, and the adapters alone can be saved, shipped and merged onto
the base model later. They are saved in Hugging Face PEFT's layout (`adapter_config.json` +
`adapter_model.safetensors`, see `peft_format`), so `peft` loads them onto the transformers
model of the base checkpoint, and adapters trained with `peft` load here; llmos's earlier layout
(`adapter.json` + `adapter.safetensors`) still loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from llmos import checkpoint
from llmos.train import peft_format


class LoRAUpdate(nn.Module):
    def __init__(self, out_features: int, in_features: int, rank: int, scale: float):
        super().__init__()
        self.scale = scale  # alpha / r when trained here; what the file says when loaded
        # B starts at zero, so the adapted model starts exactly at the base model.
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=5**0.5)

    def forward(self, weight):
        return weight + self.scale * (self.B @ self.A).to(weight.dtype)


def targets(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Linear]]:
    """The linear layers whose attribute name is one of `names` (e.g. wqkv, wo, w13, w2)."""
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names]
    if not found:
        raise ValueError(f"no linear layers named {names} to adapt")
    return found


def refuse_tied(model: nn.Module, name: str) -> None:
    """A tied output matrix is the embedding itself: merging an adapter into it would change
    the inputs too, and the checkpoint stores one matrix for both."""
    if name == "lm_head" and getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings:
        raise ValueError("LoRA on lm_head needs untied embeddings (this model ties them: "
                         "tie_word_embeddings)")


def add_adapters(model: nn.Module, rank: int, alpha: float, names: list[str]) -> int:
    """Freeze the model and attach adapters; returns the number of trainable parameters."""
    if rank <= 0:
        raise ValueError("LoRA rank must be positive")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in targets(model, names):
        refuse_tied(model, name)
        out_f, in_f = layer.weight.shape
        update = LoRAUpdate(out_f, in_f, rank, alpha / rank)
        parametrize.register_parametrization(layer, "weight", update.to(layer.weight.device))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def adapters(model: nn.Module) -> dict[str, LoRAUpdate]:
    """{layer name: its LoRA update} for every adapted layer."""
    return {n: m.parametrizations.weight[0] for n, m in model.named_modules()
            if parametrize.is_parametrized(m, "weight")
            and isinstance(m.parametrizations.weight[0], LoRAUpdate)}


def save_adapter(model: nn.Module, out_dir: str | Path, rank: int, alpha: float,
                 names: list[str], base: str) -> None:
    """Write the adapters in PEFT's layout; `base` is recorded as base_model_name_or_path
    (made absolute when it is a local folder, so `AutoPeftModelForCausalLM` finds it)."""
    found = adapters(model)
    odd = [n for n, u in found.items()
           if u.A.shape[0] != rank or abs(u.scale - alpha / rank) > 1e-12 * abs(u.scale)]
    if odd or not found:  # PEFT's config holds one r and one alpha for every module
        raise ValueError(f"save_adapter: {odd[:2] or 'no layers'} are not rank {rank}, "
                         f"alpha {alpha} adapters")
    tensors = peft_format.to_peft(model.cfg, {n: (u.A, u.B) for n, u in found.items()})
    modules = [k[len(peft_format.PREFIX):-len(".lora_A.weight")] for k in tensors
               if k.endswith(".lora_A.weight")]
    base = str(Path(base).resolve()) if Path(base).is_dir() else base
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(
        peft_format.config(rank, alpha, modules, base), indent=2))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> dict:
    """Attach the adapters saved in `adapter_dir` (PEFT's layout or llmos's earlier one) to a
    base model, then `merge` or use as is. Returns what the adapter says of itself."""
    d = Path(adapter_dir)
    if (d / "adapter_config.json").exists():
        return load_peft(model, d)
    if (d / "adapter.json").exists():
        return load_llmos(model, d)
    if (d / "adapter_model.bin").exists():
        raise ValueError(f"{d}: adapter_model.bin is a pickle, which llmos does not load; "
                         "save it with safe_serialization=True (adapter_model.safetensors)")
    raise FileNotFoundError(f"{d}: no adapter_config.json (PEFT) or adapter.json (llmos)")


def load_peft(model: nn.Module, d: Path) -> dict:
    cfg = json.loads((d / "adapter_config.json").read_text())
    if not (d / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"{d}: adapter_config.json without adapter_model.safetensors")
    weights = load_file(str(d / "adapter_model.safetensors"))
    found = peft_format.from_peft(model.cfg, cfg, weights)
    peft_format.check_base_copies(model.cfg, weights, lambda n: model.get_submodule(n).weight)
    if not found:
        raise ValueError(f"{d}: adapter_model.safetensors holds no LoRA tensors")
    for name in found:
        refuse_tied(model, name)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, (A, B, scale) in found.items():
        layer = model.get_submodule(name)
        if (B.shape[0], A.shape[1]) != tuple(layer.weight.shape):
            raise ValueError(f"{d}: the adapter of {name} is {B.shape[0]}x{A.shape[1]}, the "
                             f"model's weight {tuple(layer.weight.shape)}")
        update = LoRAUpdate(B.shape[0], A.shape[1], A.shape[0], scale)
        with torch.no_grad():
            update.A.copy_(A)
            update.B.copy_(B)
        parametrize.register_parametrization(layer, "weight", update.to(layer.weight.device))
    return {"format": "peft", "rank": cfg.get("r"), "alpha": cfg.get("lora_alpha"),
            "targets": sorted({n.rsplit(".", 1)[-1] for n in found}),
            "base": cfg.get("base_model_name_or_path")}


def load_llmos(model: nn.Module, d: Path) -> dict:
    meta = json.loads((d / "adapter.json").read_text())
    add_adapters(model, meta["rank"], meta["alpha"], meta["targets"])
    weights = load_file(str(d / "adapter.safetensors"))
    expected = set(adapter_state(model))
    missing, extra = expected - set(weights), set(weights) - expected
    if missing or extra:
        raise ValueError(f"{d}: the adapter does not fit this model (missing "
                         f"{sorted(missing)[:2]}, unexpected {sorted(extra)[:2]})")
    model.load_state_dict(weights, strict=False)
    return meta


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight, leaving a plain model."""
    for _, layer in list(model.named_modules()):
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merged_checkpoint(adapter_dir: str | Path, base: str | Path | None, out: str | Path,
                      overwrite: bool = False) -> Path:
    """`llmos import peft`: the base checkpoint with the adapter folded into its weights, as a
    checkpoint of its own (chat, serve, eval and export take it like any other). `base`
    defaults to the folder the adapter names (PEFT's base_model_name_or_path) when it is one."""
    adapter_dir, out = Path(adapter_dir), Path(out)
    if base is None:
        config = adapter_dir / "adapter_config.json"
        named = json.loads(config.read_text()).get("base_model_name_or_path") \
            if config.exists() else None
        if not named or not (Path(named) / "config.json").exists():
            raise ValueError(f"{adapter_dir}: give --base, the checkpoint the adapter was trained "
                             f"on (it names {named!r}, which is not a checkpoint folder here)")
        base = named
    base = Path(base)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; give another --out or --overwrite")
    model = checkpoint.load_model(base)
    meta = load_adapter(model, adapter_dir)
    merge(model)
    info = {"stage": "adapter", "parent": str(base), "adapter": str(adapter_dir.resolve()),
            "parent_info": checkpoint.parent_identity(base),
            "lora": {k: meta[k] for k in ("format", "rank", "alpha") if k in meta}}
    return checkpoint.save(out, model, base, info)
