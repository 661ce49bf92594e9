"""Run configs: one dataclass per concern, TOML presets, `--set section.key=value` overrides.

A resolved `RunConfig` is saved with every checkpoint (in `llmos.json`) so a later stage or a
resumed run sees exactly the settings that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # overwritten by the tokenizer's size when a run starts
    dim: int = 256  # hidden size
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4  # < n_heads gives grouped-query attention
    ffn_dim: int = 0  # SwiGLU inner size; 0 = 8/3 * dim rounded up to a multiple of 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    head_size: int = 0  # width of one attention head; 0 = dim // n_heads (imports may differ)
    # None = plain rotary frequencies; Llama 3.1's long-context scaling is
    # {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    #  "original_max_position_embeddings"} (the Hugging Face keys).
    rope_scaling: dict | None = None

    def validate(self):
        if not self.head_size and self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by "
                             f"n_kv_heads {self.n_kv_heads}")
        if self.rope_scaling and self.rope_scaling.get("rope_type") != "llama3":
            raise ValueError(f"rope_scaling {self.rope_scaling!r}: only rope_type 'llama3' is "
                             "supported")

    @property
    def ffn_hidden(self) -> int:
        return self.ffn_dim or 64 * ((8 * self.dim // 3 + 63) // 64)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["builtin:stdlib"])
    tokenizer: str = ""  # path to an existing tokenizer.json; empty = train a BPE one
    vocab_size: int = 4096
    val_fraction: float = 0.02
    max_doc_chars: int = 0  # 0 = no limit; longer documents are cut and counted
    exclude: str = ""  # documents to leave out: a scan report (`llmos data scan`) or a list


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per micro-batch per process; lower it on out-of-memory
    seq_len: int = 256
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    optimizer: str = "adamw"  # adamw | muon (Muon for 2-D hidden matrices, AdamW for the rest)
    lr: float = 3e-3  # peak learning rate for AdamW parameters
    muon_lr: float = 0.02
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    warmup_steps: int = 50
    decay_frac: float = 0.2  # wsd: share of steps spent decaying
    min_lr_frac: float = 0.1  # final lr as a share of the peak
    dtype: str = "auto"  # auto | fp32 | bf16 (autocast); auto = bf16 where the hardware has it
    compile: bool = False
    # Under torchrun, shard parameters, gradients and optimizer state over the processes (FSDP2)
    # instead of copying the model to each (DDP); pretraining with AdamW only.
    fsdp: bool = False
    eval_every: int = 200  # steps between validation runs; 0 = only at the end
    eval_tokens: int = 65536  # validation tokens per evaluation
    sample_every: int = 0  # steps between sample generations; 0 = only at the end
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    seed: int = 1337
    log_every: int = 10
    # Pretraining only: start from this checkpoint's weights instead of random ones (continued
    # pretraining on new text; the data is tokenized with the checkpoint's tokenizer).
    init_from: str = ""


def _sft_train() -> TrainConfig:
    return TrainConfig(max_steps=300, optimizer="adamw", lr=3e-3, warmup_steps=20,
                       min_lr_frac=0.0, eval_every=100, eval_tokens=32768)


@dataclass
class SFTConfig:
    """Supervised finetuning on conversations (`llmos sft`); its own loop settings in sft.train."""

    sources: list[str] = field(default_factory=lambda: ["builtin:assistant"])
    val_fraction: float = 0.05  # held-out share of conversations from files (builtin: by subject)
    lora_rank: int = 0  # 0 = full finetuning; > 0 trains low-rank adapters on a frozen model
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["wqkv", "wo", "w13", "w2"])
    eval_items: int = 200  # held-out conversations answered for task accuracy (0 = skip)
    # Rows of pretraining text added to each micro-batch, so the assistant keeps what the base
    # model knew (train/text_mix.py); their mean loss is weighted by text_coef. text_data: the
    # token shards to read, empty = the parent's own (RUN/data).
    text_rows: int = 0
    text_coef: float = 1.0
    text_data: str = ""
    train: TrainConfig = field(default_factory=_sft_train)


def _pairs_train(max_steps: int, lr: float) -> TrainConfig:
    # batch_size = pairs per micro-batch; seq_len = most tokens read per conversation.
    return TrainConfig(batch_size=16, max_steps=max_steps, optimizer="adamw", lr=lr,
                       weight_decay=0.0, warmup_steps=10, min_lr_frac=0.0, eval_every=0)


@dataclass
class RewardConfig:
    """Reward modelling on comparisons (`llmos reward`); its own loop settings in reward.train."""

    sources: list[str] = field(default_factory=lambda: ["builtin:comparisons"])
    val_fraction: float = 0.05  # held-out share of pairs from files (builtin: by subject)
    eval_pairs: int = 1000  # held-out pairs scored for accuracy and margins (0 = all)
    # Online batch selection: draw this many times batch_size pairs, train on the batch_size the
    # model ranks worst (1 = off). Easy pairs are learned in a few steps and then only dilute
    # the hard ones (docs/comparisons.md).
    select_from: int = 1
    # Weight of a language-model loss on the chosen answers, added to Bradley-Terry (0 = off).
    lm_coef: float = 0.0
    # Weight of Bradley-Terry on the rewards read along both answers after the first token where
    # they differ, added to the last-token loss (0 = off; `prefix_bt_loss`).
    prefix_coef: float = 0.0
    train: TrainConfig = field(default_factory=lambda: _pairs_train(200, 1e-4))


@dataclass
class DPOConfig:
    """Direct Preference Optimization (`llmos dpo`); its own loop settings in dpo.train."""

    sources: list[str] = field(default_factory=lambda: ["builtin:comparisons"])
    val_fraction: float = 0.05
    beta: float = 0.1  # strength of the pull toward the reference (lower = freer to move)
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo | hinge (SLiC) | robust (label-smoothed DPO)
    label_smoothing: float = 0.0  # robust: assumed share of flipped labels
    nll_coef: float = 0.0  # weight of the chosen answers' NLL added to the loss (RPO); 0 = off
    eval_pairs: int = 500  # held-out pairs for the held-out rewards and accuracy (0 = all)
    eval_items: int = 0  # held-out prompts answered by the DPO model and its parent (0 = skip)
    judge: str = ""  # reward model that decides non-verifiable answers in that comparison
    train: TrainConfig = field(default_factory=lambda: _pairs_train(150, 1e-5))


def _rl_train() -> TrainConfig:
    # batch_size is unused (rl.prompts_per_step x rl.group_size answers make a step);
    # every step is logged: each one is a fresh sample.
    return TrainConfig(max_steps=60, optimizer="adamw", lr=1e-5, weight_decay=0.0,
                       schedule="constant", warmup_steps=0, min_lr_frac=1.0, eval_every=20,
                       log_every=1)


@dataclass
class RLConfig:
    """Online RL on prompts (`llmos rl`); its own loop settings in rl.train."""

    prompts: list[str] = field(default_factory=lambda: ["builtin:arithmetic"])  # or JSONL files
    val_fraction: float = 0.1  # held-out share of prompts from files (builtin: its own split)
    group_size: int = 8  # answers sampled per prompt (G); advantages are normalized within it
    prompts_per_step: int = 8  # prompts per optimizer step (P); a step trains on P x G answers
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 48  # answer length limit (an answer cut there is still scored)
    clip_eps: float = 0.2  # PPO ratio clip
    kl_coef: float = 0.0  # weight of the k3 KL penalty to the starting model (0 = off)
    log_kl: bool = True  # keep the starting model to log the KL even when kl_coef is 0
    updates_per_batch: int = 1  # optimizer steps per sampled batch (> 1: the clip binds)
    reward_model: str = ""  # a `llmos reward` checkpoint; empty = the prompts' verifier
    eval_items: int = 100  # held-out prompts answered greedily per evaluation (0 = none)
    # Replay (InstructGPT's PPO-ptx, Ouyang et al. 2022): each step also trains on replay_rows
    # packed rows of the SFT mixture (sft.sources, plus sft.text_rows of pretraining text at
    # sft.text_coef), weighted by replay_coef, so practising one task does not erase the rest.
    replay_rows: int = 0  # 0 = off
    replay_coef: float = 1.0
    train: TrainConfig = field(default_factory=_rl_train)


@dataclass
class SpeedrunConfig:
    """What `llmos speedrun` measures after training (its stages' own settings are above)."""

    eval_tasks: list[str] = field(default_factory=lambda: ["bpb", "arc_easy", "hellaswag"])
    eval_limit: int = 500  # questions per eval task (0 = all); bpb always uses the val shards
    arena_prompts: int = 60  # held-out questions with a reference, judged by the verifier
    arena_max_tokens: int = 96  # answer length limit in the arena
    think_task: str = "mental2"  # System 2: greedy, a vote and best-of on this checkable task
    think_budget: int = 8  # the vote's and best-of's samples
    think_limit: int = 150  # held-out questions asked (0 = all)
    behaviour_limit: int = 100  # held-out prompts sampled 4 times each for the behaviour rates
    practice_limit: int = 1200  # held-out assistant questions asked of SFT and RL, paired
    knowledge_limit: int = 200  # held-out docstring questions asked with and without retrieval
    # what the run's knowledge base "stdlib" (RUN/llmos.db) is built from
    knowledge_sources: list[str] = field(default_factory=lambda: ["builtin:stdlib"])
    redteam_tasks: int = 5  # questions the red team's injection probes carry (docs/security.md)
    redteam_generations: int = 3  # answers per probe and defense


@dataclass
class RunConfig:
    name: str = "default"
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    speedrun: SpeedrunConfig = field(default_factory=SpeedrunConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        cfg = cls()
        apply_dict(cfg, d)
        return cfg


def normalized(d: dict | None) -> dict:
    """A saved config as this version writes it: fields added since then take their defaults
    (which keep old checkpoints' behaviour), so an old run compares equal to the same settings
    today. A config this version cannot read comes back unchanged."""
    try:
        return RunConfig.from_dict(d or {}).to_dict()
    except (ValueError, TypeError):
        return d or {}


def _coerce(value: str, current):
    """Parse a command-line string into the type of the field it overrides."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(current, int):
        return int(float(value)) if "e" in value.lower() else int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, list):
        return [v for v in value.split(",") if v]
    return value


def apply_dict(obj, d: dict, where: str = "") -> None:
    """Set fields of a (nested) dataclass from a dict, rejecting unknown keys."""
    names = {f.name: f for f in fields(obj)}
    for key, value in d.items():
        if key not in names:
            raise ValueError(f"unknown config key {where + key!r}; known: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where + key} is a section, not a value")
            apply_dict(current, value, where + key + ".")
        else:
            setattr(obj, key, value)


def apply_override(cfg: RunConfig, assignment: str) -> None:
    """Apply one `section.key=value` override (e.g. `train.lr=1e-3`)."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like section.key=value")
    path, value = assignment.split("=", 1)
    parts = path.strip().split(".")
    obj = cfg
    for p in parts[:-1]:
        if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
            raise ValueError(f"unknown config section {p!r} in {assignment!r}")
        obj = getattr(obj, p)
    key = parts[-1]
    if key not in {f.name for f in fields(obj)}:
        known = ", ".join(f.name for f in fields(obj))
        raise ValueError(f"unknown config key {path!r}; known in this section: {known}")
    setattr(obj, key, _coerce(value, getattr(obj, key)))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(preset: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """A preset name (or path to a TOML file), then overrides, in that order."""
    cfg = RunConfig()
    if preset:
        path = Path(preset) if preset.endswith(".toml") else PRESET_DIR / f"{preset}.toml"
        if not path.exists():
            raise ValueError(f"no preset {preset!r}; available: {', '.join(list_presets())}")
        with open(path, "rb") as f:
            apply_dict(cfg, tomllib.load(f))
        if cfg.name == "default":
            cfg.name = path.stem
    for o in overrides:
        apply_override(cfg, o)
    cfg.model.validate()  # after all overrides, so their order does not matter
    return cfg


def dumps(cfg: RunConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
