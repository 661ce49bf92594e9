"""LoRA adapters in the layout of Hugging Face PEFT, so they travel both ways.

    DIR/adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, ...
    DIR/adapter_model.safetensors  base_model.model.<transformers module>.lora_A.weight [r, in]
                                   base_model.model.<transformers module>.lora_B.weight [out, r]

`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), DIR)` loads what
llmos writes, and llmos loads what PEFT writes. The one difference in structure is fusion: llmos
multiplies by one q/k/v matrix (wqkv) and one gate/up matrix (w13) where transformers has a
module each. One fused adapter (A, B) is exactly one adapter per module sharing A, each taking
its rows of B; going back, separate adapters join exactly as the stacked A's with B's placed
block-diagonally (rank = the sum of ranks), or, when every part shares one A and one scale (what
llmos itself writes), as that A with the B's stacked, at the original rank. q and k need no
rotary permutation: our weights are stored in transformers' "rotate half" order already.

Only plain LoRA on linear layers is representable; anything else is refused naming the field
(see `check_config`) or the tensor, never loaded approximately.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

from llmos.config import ModelConfig

PREFIX = "base_model.model."
# llmos layer (under layers.N) -> the transformers block and its modules, in the fused row order.
FUSED = {
    "attn.wqkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "attn.wo": ("self_attn", ("o_proj",)),
    "ffn.w13": ("mlp", ("gate_proj", "up_proj")),
    "ffn.w2": ("mlp", ("down_proj",)),
}
HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)")
# With lm_head or embeddings among the targets, PEFT also saves the whole base weight (in case
# the vocabulary was resized) and loads it over the base's.
BASE_COPY = re.compile(re.escape(PREFIX) + r"(.+)\.base_layer\.weight")

# Fields whose non-default value changes what the adapter computes in ways a plain
# W + scale * B @ A cannot hold. Each maps to what it is, for the refusal message.
UNSUPPORTED = {
    "use_dora": "DoRA (a learned magnitude per output)",
    "lora_bias": "a bias on lora_B",
    "modules_to_save": "fully trained copies of whole modules",
    "trainable_token_indices": "trained embedding rows",
    "layer_replication": "replicated layers",
    "target_parameters": "LoRA on raw parameters (e.g. MoE experts)",
    "alora_invocation_tokens": "activated LoRA (applied only after invocation tokens)",
    "use_bdlora": "block-diagonal LoRA",
    "kasa_config": "KaSA (changes the base weights)",
    "arrow_config": "Arrow routing among adapters",
    "monteclora_config": "Monte Carlo LoRA (sampled adapters)",
    "megatron_config": "Megatron-sharded layers",
    "use_qalora": "QALoRA (quantization-aware pooling of inputs)",
    "fan_in_fan_out": "weights stored [in, out] (GPT-2's Conv1D)",
}
# Initializations that rewrite the base weights: such an adapter is a delta from a base we do
# not have, unless PEFT converted it to plain LoRA on save (which resets the field to true).
BASE_CHANGING_INIT = ("pissa", "olora", "corda", "loftq")


# ---- names -------------------------------------------------------------------------------------


def hf_parts(cfg: ModelConfig, name: str) -> list[tuple[str, int]]:
    """The transformers modules an llmos layer holds and their rows of its output, in order:
    `layers.0.attn.wqkv` -> [(`model.layers.0.self_attn.q_proj`, q rows), (k...), (v...)]."""
    if name == "lm_head":
        return [("lm_head", cfg.vocab_size)]
    m = re.fullmatch(r"layers\.(\d+)\.(\w+\.\w+)", name)
    if not m or m.group(2) not in FUSED:
        raise ValueError(f"LoRA on {name!r} has no PEFT equivalent (llmos maps "
                         f"{', '.join(FUSED)} and lm_head)")
    block, modules = FUSED[m.group(2)]
    rows = {"q_proj": cfg.n_heads * cfg.head_dim, "k_proj": cfg.n_kv_heads * cfg.head_dim,
            "v_proj": cfg.n_kv_heads * cfg.head_dim, "o_proj": cfg.dim,
            "gate_proj": cfg.ffn_hidden, "up_proj": cfg.ffn_hidden, "down_proj": cfg.dim}
    return [(f"model.layers.{m.group(1)}.{block}.{mod}", rows[mod]) for mod in modules]


def llmos_layer(cfg: ModelConfig, module: str) -> tuple[str, int]:
    """The inverse: a transformers module -> (llmos layer, index of its part)."""
    if module == "lm_head":
        return "lm_head", 0
    m = HF_LAYER.fullmatch(module)
    for ours, (block, modules) in FUSED.items():
        if m and m.group(2) == block and m.group(3) in modules:
            if int(m.group(1)) >= cfg.n_layers:
                raise ValueError(f"the adapter has {module} but the model has "
                                 f"{cfg.n_layers} layers")
            return f"layers.{m.group(1)}.{ours}", modules.index(m.group(3))
    raise ValueError(f"target_modules: LoRA on {module!r} is not supported (llmos adapts "
                     "q/k/v/o_proj, gate/up/down_proj and lm_head)")


# ---- llmos -> PEFT -----------------------------------------------------------------------------


def to_peft(cfg: ModelConfig, adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]
            ) -> dict[str, torch.Tensor]:
    """{llmos layer: (A [r, in], B [out, r])} -> PEFT's tensors, one adapter per module."""
    out = {}
    for name, (A, B) in adapters.items():
        parts = hf_parts(cfg, name)
        for (module, _), b in zip(parts, B.split([rows for _, rows in parts])):
            # The parts share A; each gets its own copy since safetensors refuses shared storage.
            out[f"{PREFIX}{module}.lora_A.weight"] = A.detach().float().cpu().clone()
            out[f"{PREFIX}{module}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    return out


def config(rank: int, alpha: float, modules: list[str], base: str) -> dict:
    """adapter_config.json for the modules adapted (their last names, as PEFT matches them)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": rank, "lora_alpha": alpha, "use_rslora": False,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_dora": False,
        "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
        "layers_pattern": None, "revision": None,
    }


# ---- PEFT -> llmos -----------------------------------------------------------------------------


def check_config(cfg: dict) -> None:
    """Raise naming every field of a PEFT config that llmos cannot represent exactly."""
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} (llmos reads 'LORA')")
    if cfg.get("task_type") not in (None, "CAUSAL_LM"):
        problems.append(f"task_type {cfg['task_type']!r} (llmos reads 'CAUSAL_LM')")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias {cfg['bias']!r} (trained biases; llmos's layers have none)")
    problems += [f"{k} {cfg[k]!r}: {what}" for k, what in UNSUPPORTED.items() if cfg.get(k)]
    if cfg.get("loftq_config"):
        problems.append("loftq_config: LoftQ quantizes the base weights")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INIT):
        problems.append(f"init_lora_weights {init!r} rewrites the base weights; convert it to "
                        "plain LoRA (save_pretrained(path_initial_model_for_weight_conversion=))")
    if problems:
        raise ValueError("this PEFT adapter cannot be represented by llmos: "
                         + "; ".join(problems))


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module whose full name ends
    with it at a dot boundary (the first such key wins)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def scale_of(cfg: dict, module: str, rank: int) -> float:
    r = pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", 8))
    if r != rank:
        raise ValueError(f"{module}: lora_A has rank {rank} but the config says r={r}")
    alpha = pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
    # rsLoRA (Kalajdzievski, 2023) divides by sqrt(r) so larger ranks keep learning.
    return alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def split_keys(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT tensor names -> {transformers module: {"A": ..., "B": ...}}; any other tensor (DoRA
    magnitudes, embedding LoRA, biases, saved modules) is refused by name."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in weights.items():
        if BASE_COPY.fullmatch(key):
            continue  # see check_base_copies
        m = re.fullmatch(re.escape(PREFIX) + r"(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise ValueError(f"adapter tensor {key!r} is not plain LoRA on a linear layer "
                             "(llmos reads only ...lora_A.weight / ...lora_B.weight)")
        modules.setdefault(m.group(1), {})[m.group(2)] = t.float()
    for module, ab in modules.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{module}: the adapter has lora_{''.join(ab)} but not both")
    return modules


def check_base_copies(model_cfg: ModelConfig, weights: dict[str, torch.Tensor],
                      weight_of: Callable[[str], torch.Tensor]) -> None:
    """Base weights saved with the adapter must be the base's own (compared in the saved dtype,
    so a bf16 copy of fp32 weights passes): llmos adds adapters, it does not swap base weights."""
    for key, saved in weights.items():
        m = BASE_COPY.fullmatch(key)
        if not m:
            continue
        name, part = llmos_layer(model_cfg, m.group(1))
        layout = hf_parts(model_cfg, name)
        row0 = sum(rows for _, rows in layout[:part])
        current = weight_of(name)[row0:row0 + layout[part][1]].detach()
        if saved.shape != current.shape or not torch.equal(saved, current.to(saved.dtype)):
            raise ValueError(f"the adapter carries its own {m.group(1)} weights (a resized "
                             "vocabulary?), not the base's; llmos adds adapters to the base "
                             "weights as they are")


def from_peft(model_cfg: ModelConfig, cfg: dict, weights: dict[str, torch.Tensor]
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """PEFT's tensors -> {llmos layer: (A, B, scale)} with W' = W + scale * B @ A exactly."""
    check_config(cfg)
    grouped: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for module, ab in split_keys(weights).items():
        A, B = ab["A"], ab["B"]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(f"{module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} "
                             "do not make a low-rank product")
        name, part = llmos_layer(model_cfg, module)
        grouped.setdefault(name, {})[part] = (A, B, scale_of(cfg, module, A.shape[0]))
    return {name: join(model_cfg, name, parts) for name, parts in grouped.items()}


def join(model_cfg: ModelConfig, name: str,
         parts: dict[int, tuple[torch.Tensor, torch.Tensor, float]]
         ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One llmos layer's adapter from its modules' adapters (see the module docstring)."""
    layout = hf_parts(model_cfg, name)
    for i, (_, B, _) in parts.items():
        if B.shape[0] != layout[i][1]:
            raise ValueError(f"{layout[i][0]}: lora_B has {B.shape[0]} rows but the model's "
                             f"layer has {layout[i][1]}")
    first = parts[min(parts)]
    if len(parts) == len(layout) and all(torch.equal(A, first[0]) and s == first[2]
                                         for A, _, s in parts.values()):
        return first[0], torch.cat([parts[i][1] for i in range(len(layout))]), first[2]
    # Block-diagonal: rows of part i see only columns of part i's rank; absent parts stay 0.
    ranks = {i: parts[i][0].shape[0] for i in sorted(parts)}
    A = torch.cat([parts[i][0] for i in sorted(parts)])
    B = torch.zeros(sum(rows for _, rows in layout), sum(ranks.values()))
    row0 = [sum(rows for _, rows in layout[:i]) for i in range(len(layout))]
    col = 0
    for i in sorted(parts):
        _, b, s = parts[i]
        B[row0[i]:row0[i] + b.shape[0], col:col + ranks[i]] = s * b
        col += ranks[i]
    return A, B, 1.0
