"""Optimizers and learning-rate schedules (plain functions of the step)."""

from __future__ import annotations

import math

import torch

from llmos.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier on the peak learning rate at `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_frac
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(cfg.decay_frac * cfg.max_steps))
        into_decay = step - (cfg.max_steps - decay_steps)
        if into_decay <= 0:
            return 1.0
        return 1.0 - (1 - floor) * min(1.0, into_decay / decay_steps)
    raise ValueError(f"schedule must be cosine, wsd or constant, not {cfg.schedule!r}")


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW for everything, or Muon for the hidden 2-D matrices and AdamW for the rest
    (embeddings, output head, norm gains), as in the Muon write-up (Jordan et al., 2024)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    seen, unique = set(), []
    for n, p in named:  # tied weights appear once
        if id(p) not in seen:
            seen.add(id(p))
            unique.append((n, p))
    is_head = lambda n: n.startswith(("embed", "lm_head"))  # noqa: E731
    decay = [p for n, p in unique if p.dim() >= 2]
    no_decay = [p for n, p in unique if p.dim() < 2]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if cfg.optimizer == "adamw":
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return [torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)]
    if cfg.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise ValueError("optimizer 'muon' needs torch.optim.Muon (PyTorch 2.9 or newer)")
        hidden = [p for n, p in unique if p.dim() == 2 and not is_head(n)]
        rest_decay = [p for n, p in unique if p.dim() >= 2 and is_head(n)]
        adam = torch.optim.AdamW(
            [{"params": rest_decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)
        muon = torch.optim.Muon(hidden, lr=cfg.muon_lr, weight_decay=cfg.weight_decay)
        return [adam, muon]
    raise ValueError(f"optimizer must be adamw or muon, not {cfg.optimizer!r}")


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * factor
