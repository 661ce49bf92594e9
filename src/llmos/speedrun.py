"""`llmos speedrun`: every stage on one preset, picking up where a previous run stopped."""

from __future__ import annotations

import json
import time

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.infer.engine import Engine, SamplingParams
from llmos.train import pretrain

SAMPLE_PROMPTS = ["def ", "import os\n", "class Stack:\n    \"\"\"", "# Return the"]


def run(cfg: RunConfig) -> None:
    t0 = time.perf_counter()
    base = cfg.run_dir / "base"
    info = checkpoint.read_info(base)
    if info and not info.get("final"):
        print(f"speedrun: resuming the unfinished pretraining in {base}")
        pretrain.run(cfg, resume=True)
    else:
        try:
            pretrain.run(cfg)
        except pretrain.AlreadyTrained as e:
            print(f"speedrun: {e}")
    samples = write_samples(cfg, base)
    info = checkpoint.read_info(base)
    m = info.get("metrics", {})
    print("\n=== speedrun summary ===")
    print(f"run directory   {cfg.run_dir}")
    print(f"checkpoint      {base}  (step {info.get('step')}, "
          f"{info.get('tokens_seen', 0):,} tokens)")
    print(f"validation      loss {m.get('val_loss', float('nan')):.4f} nats/token, "
          f"{m.get('val_bpb', float('nan')):.4f} bits/byte")
    print(f"loss curve      {cfg.run_dir / 'loss.png'}")
    print(f"samples         {samples}")
    print(f"time            {time.perf_counter() - t0:.0f}s")
    print(f"\nnext: llmos generate --model {base} --prompt 'def '")


def write_samples(cfg: RunConfig, ckpt) -> str:
    model = checkpoint.load_model(ckpt)
    tok = tokenizers_.load(ckpt)
    params = SamplingParams(max_new_tokens=96, temperature=0.7, top_p=0.95, seed=0,
                            stop_tokens=[tokenizers_.eot_id(tok)])
    ids = [tok.encode(p, add_special_tokens=False).ids for p in SAMPLE_PROMPTS]
    outs = Engine(model).generate(ids, params)
    path = cfg.run_dir / "samples.md"
    lines = [f"# Samples from {ckpt}\n", f"sampling: {json.dumps(params.__dict__)}\n"]
    for prompt, out in zip(SAMPLE_PROMPTS, outs):
        text = prompt + tok.decode(out)
        print(f"--- sample ---\n{text}")
        lines.append(f"```python\n{text}\n```\n")
    path.write_text("\n".join(lines))
    return str(path)
