"""`llmos speedrun`: every stage on one preset, picking up where a previous run stopped."""

from __future__ import annotations

import json
import time

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig, normalized
from llmos.infer.engine import Engine, SamplingParams
from llmos.train import pretrain, sft

SAMPLE_PROMPTS = ["def ", "import os\n", "class Stack:\n    \"\"\"", "# Return the"]
SAMPLE_QUESTIONS = ["Who are you?", "What is 347 * 29?", "What does `json.dumps` do?",
                    "What does `sorted('banana')` return?"]


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
    if not checkpoint.read_info(base).get("final"):
        print("speedrun: pretraining stopped before the end; run it again to continue")
        return
    samples = write_samples(cfg, base)
    assistant = finetune(cfg, base)
    if not checkpoint.read_info(assistant).get("final"):
        print("speedrun: finetuning stopped before the end; run it again to continue")
        return
    chats = write_conversations(cfg, assistant)
    info = checkpoint.read_info(base)
    m = info.get("metrics", {})
    sm = checkpoint.read_info(assistant).get("metrics", {})
    print("\n=== speedrun summary ===")
    print(f"run directory   {cfg.run_dir}")
    print(f"base model      {base}  (step {info.get('step')}, "
          f"{info.get('tokens_seen', 0):,} tokens)")
    print(f"validation      loss {m.get('val_loss', float('nan')):.4f} nats/token, "
          f"{m.get('val_bpb', float('nan')):.4f} bits/byte")
    print(f"assistant       {assistant}  (held-out loss {sm.get('val_loss', float('nan')):.4f})")
    for key, label in HELDOUT_FIGURES:
        if f"heldout_{key}" in sm:
            print(f"  {label:<28}{sm[f'heldout_{key}']:.3f}")
    print(f"loss curve      {cfg.run_dir / 'loss.png'}")
    print(f"samples         {samples}")
    print(f"conversations   {chats}")
    print(f"time            {time.perf_counter() - t0:.0f}s")
    print(f"\nnext: llmos chat --model {assistant}")
    print(f"      llmos serve --model {assistant}   (then open http://127.0.0.1:8000)")


HELDOUT_FIGURES = [
    ("well_formed_turns", "well-formed turns"), ("valid_tool_calls", "valid tool calls"),
    ("arithmetic_acc", "arithmetic (calculator)"),
    ("arithmetic_no_tool_acc", "arithmetic (no tool)"),
    ("python_acc", "python questions"), ("signature_acc", "signatures"),
    ("docstring_acc", "docstring questions"), ("identity_acc", "identity"),
]


def finetune(cfg: RunConfig, base):
    """SFT on the base model: skipped when already done on this base with this config,
    resumed when interrupted (LoRA runs keep no optimizer state: they start over)."""
    out = cfg.run_dir / ("sft-lora" if cfg.sft.lora_rank else "sft")
    info = checkpoint.read_info(out)
    same = (normalized(info.get("config")).get("sft") == cfg.to_dict()["sft"]
            and info.get("parent_info") == sft.parent_identity(base))
    if info.get("final") and same:
        print(f"speedrun: {out} is already finetuned with this config")
        return out
    if info and not info.get("final") and same and not cfg.sft.lora_rank:
        print(f"speedrun: resuming the unfinished finetuning in {out}")
        return sft.run(cfg, base, out, resume=True)
    if out.exists():  # built on another base or with other settings: keep it, out of the way
        kept = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(kept)
        print(f"speedrun: {out} was made from another base or with other settings; "
              f"moved it to {kept} and finetuning again")
    return sft.run(cfg, base, out)


def write_conversations(cfg: RunConfig, ckpt) -> str:
    """A few questions to the assistant, greedy, tools in the loop; printed and saved."""
    from llmos.agent.loop import describe_call, engine_stream, respond

    model, tok = checkpoint.load_model(ckpt), tokenizers_.load(ckpt)
    generate = engine_stream(Engine(model))
    params = SamplingParams(max_new_tokens=96, temperature=0.0)
    lines = [f"# Conversations with {ckpt}\n", "greedy decoding, built-in tools on\n"]
    for question in SAMPLE_QUESTIONS:
        shown = [f"user: {question}"]
        for e in respond(generate, tok, [{"role": "user", "content": question}], params):
            if e.kind == "tool_call":
                shown.append(f"  [tool call] {describe_call(e.data)}")
            elif e.kind == "tool_result":
                shown.append(f"  [tool result] {e.text.strip()}")
            elif e.kind == "turn" and e.data.get("content"):
                shown.append(f"assistant: {e.data['content']}")
        text = "\n".join(shown)
        print(f"--- conversation ---\n{text}")
        lines.append(f"```\n{text}\n```\n")
    path = cfg.run_dir / "conversations.md"
    path.write_text("\n".join(lines))
    return str(path)


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
