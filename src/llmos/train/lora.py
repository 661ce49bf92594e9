"""LoRA: train a low-rank update W + (alpha / r) * B @ A of chosen linear layers on a frozen model
(Hu et al., 2021).

The update is a `torch.nn.utils.parametrize` parametrization of each target's weight, so the
model keeps its structure: `layer.weight` *is* the merged weight, a checkpoint saved from an
adapted model is already merged, and the adapters alone (`adapter.safetensors` +
`adapter.json`) can be saved, shipped and merged onto the base model later.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize


class LoRAUpdate(nn.Module):
    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
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


def add_adapters(model: nn.Module, rank: int, alpha: float, names: list[str]) -> int:
    """Freeze the model and attach adapters; returns the number of trainable parameters."""
    if rank <= 0:
        raise ValueError("LoRA rank must be positive")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in targets(model, names):
        out_f, in_f = layer.weight.shape
        parametrize.register_parametrization(layer, "weight", LoRAUpdate(out_f, in_f, rank, alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, out_dir: str | Path, rank: int, alpha: float,
                 names: list[str], base: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(out / "adapter.safetensors"))
    (out / "adapter.json").write_text(json.dumps(
        {"rank": rank, "alpha": alpha, "targets": names, "base": base}, indent=2))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> dict:
    """Attach the adapters saved in `adapter_dir` to a base model (then `merge` or use as is)."""
    d = Path(adapter_dir)
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
