"""Stage 1: pretraining. Token shards in, a base checkpoint out.

    llmos pretrain --preset cpu-tiny                       one process
    torchrun --nproc_per_node 2 -m llmos pretrain ...       several (DDP)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig, normalized
from llmos.data.prepare import prepare
from llmos.data.shards import TokenLoader, iter_eval_batches, read_manifest, read_shard
from llmos.evals import bpb
from llmos.infer.engine import Engine, SamplingParams
from llmos.model import Transformer
from llmos.runtime import Runtime, setup, teardown
from llmos.train.loop import Stage, train


class AlreadyTrained(Exception):
    pass


class StaleCheckpoint(FileExistsError):
    """The folder holds a checkpoint trained with other settings or on other data."""


def _check_existing(ckpt_dir: Path, cfg: RunConfig, resume: bool, overwrite: bool,
                    data_key: str) -> None:
    """Never silently overwrite a user's checkpoint; say exactly what to do instead."""
    if resume:
        if not (ckpt_dir / "trainer_state").exists():
            raise FileNotFoundError(f"--resume: {ckpt_dir} has no resumable checkpoint")
        info = checkpoint.read_info(ckpt_dir)
        saved = info.get("config", {}).get("model")
        if saved and saved != cfg.to_dict()["model"]:
            raise ValueError(f"--resume: the model config differs from the one in {ckpt_dir}")
        if info.get("data_manifest", data_key) != data_key:
            raise StaleCheckpoint(f"--resume: {ckpt_dir} was trained on other data (the corpus "
                                  "or the tokenizer changed); --overwrite starts again")
        return
    if ckpt_dir.exists() and not overwrite:
        info = checkpoint.read_info(ckpt_dir)
        same = (_pretrain_part(info.get("config")) == _pretrain_part(cfg.to_dict())
                and info.get("data_manifest") == data_key)
        if info.get("final") and same:
            raise AlreadyTrained(f"{ckpt_dir} is already trained with this config and data "
                                 "(pass --overwrite to train it again)")
        if not info.get("final"):
            raise FileExistsError(f"{ckpt_dir} already holds a checkpoint; use --resume to "
                                  "continue it, or --overwrite to replace it")
        raise StaleCheckpoint(f"{ckpt_dir} already holds a checkpoint trained with other "
                              "settings or data; use another --name, or --overwrite to "
                              "replace it")


def _pretrain_part(config: dict | None) -> dict:
    """The settings that shape a base model (later stages' sections do not)."""
    config = normalized(config)
    return {k: config.get(k) for k in ("model", "data", "train")}


def _continued_from(cfg: RunConfig) -> Path | None:
    """train.init_from: the checkpoint whose weights start the run. Its model shape and tokenizer
    are the run's (data.tokenizer, if set, must be that same tokenizer)."""
    if not cfg.train.init_from:
        return None
    init = Path(cfg.train.init_from)
    tok = init / "tokenizer.json"
    if not all((init / f).exists() for f in ("config.json", "model.safetensors", tok.name)):
        raise FileNotFoundError(f"train.init_from {init}: not a checkpoint folder (it needs "
                                "config.json, model.safetensors and tokenizer.json)")
    same = tokenizers_.file_hash(cfg.data.tokenizer or tok) == tokenizers_.file_hash(tok)
    if not same:
        raise ValueError(f"train.init_from {init} has its own tokenizer; data.tokenizer "
                         f"{cfg.data.tokenizer} differs (leave data.tokenizer empty)")
    cfg.data.tokenizer = str(tok)
    cfg.model = checkpoint.model_config_from_hf(json.loads((init / "config.json").read_text()))
    return init


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
        rt: Runtime | None = None) -> Path:
    own_runtime = rt is None
    rt = rt or setup()
    run_dir, data_dir, ckpt_dir = cfg.run_dir, cfg.run_dir / "data", cfg.run_dir / "base"
    init = _continued_from(cfg)
    try:
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            prepare(cfg.data, data_dir)
        if rt.distributed:
            dist.barrier()
        manifest = read_manifest(data_dir)
        tok = tokenizers_.load(data_dir / "tokenizer")
        cfg.model.vocab_size = tok.get_vocab_size()
        cfg.model.validate()
        if cfg.train.seq_len > cfg.model.max_seq_len:
            raise ValueError(f"train.seq_len {cfg.train.seq_len} exceeds model.max_seq_len "
                             f"{cfg.model.max_seq_len}")
        _check_existing(ckpt_dir, cfg, resume, overwrite, manifest["input_key"])

        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        if resume:
            model = checkpoint.load_model(ckpt_dir)
        else:
            model = checkpoint.load_model(init) if init else Transformer(cfg.model)
        model = model.to(rt.device)
        if rt.is_main:
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            print(f"model: {model.num_params():,} parameters "
                  f"({model.num_params(embedding=False):,} without embeddings), "
                  f"{model.flops_per_token(cfg.train.seq_len) / 1e6:.1f} MFLOPs/token")

        t = cfg.train
        loader = TokenLoader(data_dir, "train", t.batch_size, t.seq_len, rt.rank, rt.world_size)
        token_bytes = torch.tensor(tokenizers_.token_byte_lengths(tok), device=rt.device)
        eot = tokenizers_.eot_id(tok)

        def to_device(batch):
            return tuple(b.to(rt.device, non_blocking=True) for b in batch)

        def evaluate(m):
            batches = (to_device(b) for b in
                       iter_eval_batches(data_dir, "val", t.batch_size, t.seq_len, t.eval_tokens))
            return bpb.evaluate(m, batches, token_bytes)

        def sample(m):
            return sample_texts(m, tok, data_dir, eot)

        stage = Stage(
            name="pretrain",
            next_batch=lambda: to_device(loader.next_batch()),
            loss=lambda m, b: m(b[0], b[1]),
            tokens=lambda b: b[0].numel(),
            data_state=loader.state_dict,
            load_data_state=loader.load_state_dict,
            evaluate=evaluate,
            sample=sample,
            flops_per_token=model.flops_per_token(t.seq_len),
        )

        def save(m, info, state):
            info = {"stage": "pretrain", "parent": str(init) if init else None,
                    "data_manifest": manifest["input_key"],
                    "tokenizer_sha256": manifest["tokenizer"]["sha256"], "config": cfg.to_dict(),
                    "world_size": rt.world_size, **info}
            checkpoint.save(ckpt_dir, m, data_dir / "tokenizer", info, state)

        result = train(model, t, stage, rt, ckpt_dir=ckpt_dir, save_checkpoint=save,
                       run_dir=run_dir, resume=resume)
        if rt.is_main and not result.stopped_early:
            m = result.metrics
            print(f"pretrain: done at step {result.step}: val loss {m.get('val_loss', 0):.4f}, "
                  f"val bpb {m.get('val_bpb', 0):.4f} -> {ckpt_dir}")
        return ckpt_dir
    finally:
        if own_runtime:
            teardown()


def sample_texts(model, tok, data_dir: Path, eot: int, n: int = 3, new_tokens: int = 48):
    """Continue the opening tokens of a few validation documents (greedy and deterministic)."""
    val = read_shard(sorted(Path(data_dir).glob("val_*.bin"))[0])
    starts = [0] + [i + 1 for i in (val == eot).nonzero()[0][: n - 1].tolist()]
    prompts = [val[s:s + 8].tolist() for s in starts if s + 8 <= len(val)] or [[eot]]
    outs = Engine(model).generate(prompts, SamplingParams(new_tokens, temperature=0.0))
    return [tok.decode(p + o) for p, o in zip(prompts, outs)]

