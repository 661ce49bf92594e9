"""`train.fsdp = true`: parameters, gradients and optimizer state sharded over the processes of a
`torchrun` with PyTorch's FSDP2 (`fully_shard`), for models past one device's memory.

Each transformer block is its own shard group (its weights are gathered just before it runs and
freed after), the embeddings, final norm and head form the root's. A checkpoint stays what every
other run writes: the whole weights, gathered on save, in the Hugging Face layout; the optimizer
state is gathered too and keyed by parameter name, so a run resumes on any number of processes
(keep the global batch, world size x train.batch_size, the same).
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from llmos.config import TrainConfig
from llmos.model import Transformer

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
LAYOUT = "fsdp-full"  # the trainer state's optimizer layout: whole tensors, keyed by name


def check(cfg: TrainConfig, stage_name: str) -> None:
    if stage_name != "pretrain":
        raise ValueError(f"train.fsdp is for pretraining; {stage_name} trains without it")
    if cfg.optimizer != "adamw":
        raise ValueError("train.fsdp needs train.optimizer=adamw: Muon orthogonalises whole "
                         "matrices, and FSDP keeps only a shard of each on a process")


def shard(model: Transformer) -> None:
    """Shard `model` in place over the default process group."""
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)


def gathered_copy(model: Transformer, is_main: bool) -> Transformer | None:
    """The whole model as a plain module on the main process (None elsewhere). Every process
    must call it: the gather is collective."""
    weights = get_model_state_dict(model, options=FULL)
    if not is_main:
        return None
    plain = Transformer(model.cfg)
    plain.load_state_dict(weights)
    return plain.eval()


def optimizer_states(model: Transformer, optimizers: list[torch.optim.Optimizer]) -> list[dict]:
    """Whole optimizer states keyed by parameter name (collective)."""
    return [get_optimizer_state_dict(model, opt, options=FULL) for opt in optimizers]


def load_optimizer_states(model: Transformer, optimizers: list[torch.optim.Optimizer],
                          states: list[dict]) -> None:
    """Each process takes its shard of the saved whole states."""
    for opt, state in zip(optimizers, states):
        for group in opt.param_groups:  # the loader wants the saved groups' keys present
            group.setdefault("initial_lr", group["lr"])  # (as set_lr adds it)
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
