"""Stage 3b: Direct Preference Optimization. An SFT checkpoint and comparisons in, a tuned
assistant out, with no reward model and no sampling (Rafailov et al. 2023).

    llmos dpo --model runs/cpu-tiny/sft                      builtin:comparisons
    llmos dpo --model DIR --beta 0.2 --loss ipo --data prefs.jsonl

The policy starts as a copy of the SFT model; the SFT model itself is the frozen reference,
whose log-probabilities of every training and held-out answer are computed once before
training (it is never run again). With h = [log pi(chosen) - log ref(chosen)]
- [log pi(rejected) - log ref(rejected)], summed over the answer's tokens only:

    sigmoid   -log sigmoid(beta * h)                                  DPO
    robust    (1 - e) * sigmoid loss + e * (-log sigmoid(-beta * h))   label smoothing e
    ipo       (h - 1 / (2 * beta))^2                                  IPO (Azar et al. 2023)
    hinge     max(0, 1 - beta * h)                                    SLiC (Zhao et al. 2023)

`dpo.nll_coef` > 0 adds that much of the chosen answers' mean per-token negative log-likelihood
(RPO, Pang et al. 2024): plain DPO can widen the margin by lowering both answers, and on
cpu-tiny that garbled some answers (docs/LOG.md, 2026-11-27).

The implicit rewards beta * (log pi - log ref) of the chosen and rejected answers, their margin
and the share of pairs ranked right are logged each step (train) and at each evaluation
(held-out pairs) to metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.data.comparisons import split_sources
from llmos.data.records import Comparison
from llmos.evals.versus import compare_to_parent
from llmos.runtime import autocast_dtype, setup, teardown
from llmos.train.loop import Stage, train
from llmos.train.reward import PairOrder

LOSSES = ("sigmoid", "robust", "ipo", "hinge")

# ---- data: comparisons -> token rows with the answer's loss mask ------------------------------


def answer_tokens(tok, prompt: list[dict], answer: list[dict], max_len: int
                  ) -> tuple[list[int], list[int]]:
    """(ids, mask) of prompt + answer: mask 1 on the tokens the answer's assistant turns write
    (the renderer's loss mask, with the prompt's own assistant turns left out). A conversation
    longer than max_len + 1 keeps its end."""
    full = chat_format.render(tok, prompt + answer)
    n_prompt = len(chat_format.render(tok, prompt).ids)
    mask = [m if i >= n_prompt else 0 for i, m in enumerate(full.mask)]
    keep = max_len + 1  # inputs and targets are one token apart
    return full.ids[-keep:], mask[-keep:]


def collate(rows: list[tuple[list[int], list[int]]], pad: int, device: str = "cpu"
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) rows -> inputs [N, T] and targets [N, T] (-100 where not trained)."""
    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1])
        y[i, :n] = torch.tensor([t if m else -100 for t, m in zip(ids[1:], mask[1:])])
    return x.to(device), y.to(device)


def pair_rows(tok, pairs: list[Comparison], max_len: int) -> list[tuple[list[int], list[int]]]:
    """The B chosen rows, then the B rejected rows."""
    return ([answer_tokens(tok, p.prompt, p.chosen, max_len) for p in pairs]
            + [answer_tokens(tok, p.prompt, p.rejected, max_len) for p in pairs])


def pair_batch(tok, pairs: list[Comparison], max_len: int, device: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """B pairs -> inputs and targets [2B, T]: the B chosen answers, then the B rejected."""
    return collate(pair_rows(tok, pairs, max_len), tokenizers_.pad_id(tok), device)


def sequence_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of log p(target) over each row's trained tokens: [N]."""
    logits = model(x).float()
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, y.clamp(min=0)[..., None])[..., 0]
    return (logp * (y != -100)).sum(-1)


@torch.no_grad()
def reference_logps(model, tok, pairs: list[Comparison], max_len: int, device: str,
                    batch_size: int = 16) -> torch.Tensor:
    """[n, 2] log-probabilities of (chosen, rejected) under the frozen reference, computed once."""
    model.eval()
    out = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        x, y = pair_batch(tok, chunk, max_len, device)
        lp = sequence_logps(model, x, y).cpu()
        out.append(torch.stack(lp.chunk(2), dim=1))
    return torch.cat(out) if out else torch.zeros(0, 2)


# ---- the loss ----------------------------------------------------------------------------------


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float, kind: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """policy, reference: [B, 2] log-probs of (chosen, rejected). Returns the mean loss and the
    batch's summed stats (chosen/rejected implicit rewards, margin, correctly ranked pairs)."""
    ratios = policy - reference  # log pi / ref for chosen and rejected
    h = ratios[:, 0] - ratios[:, 1]
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif kind == "robust":
        e = label_smoothing
        losses = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"dpo.loss must be one of {', '.join(LOSSES)}, not {kind!r}")
    rewards = (beta * ratios).detach()
    stats = {"reward_chosen": float(rewards[:, 0].sum()),
             "reward_rejected": float(rewards[:, 1].sum()),
             "margin": float((rewards[:, 0] - rewards[:, 1]).sum()),
             "accuracy": float((rewards[:, 0] > rewards[:, 1]).float().sum()),
             "n": len(h)}
    return losses.mean(), stats


def chosen_nll(logps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean per-token negative log-likelihood of the chosen answers (the first half of the rows):
    the term RPO adds to DPO (Pang et al. 2024) so the chosen answers' own likelihood cannot sink
    while the margin grows."""
    B = len(logps) // 2
    tokens = (y[:B] != -100).sum(-1).clamp(min=1)
    return -(logps[:B] / tokens).mean()


def _means(total: dict, prefix: str = "") -> dict:
    n = max(total.get("n", 0), 1)
    return {prefix + k: v / n for k, v in total.items() if k != "n"}


def _add(total: dict, stats: dict) -> None:
    for k, v in stats.items():
        total[k] = total.get(k, 0) + v


def heldout_metrics(model, tok, pairs, ref: torch.Tensor, cfg, max_len: int, device: str,
                    batch_size: int = 16) -> dict:
    total: dict = {}
    loss_sum = 0.0
    for s in range(0, len(pairs), batch_size):
        x, y = pair_batch(tok, pairs[s:s + batch_size], max_len, device)
        lp = sequence_logps(model, x, y)
        loss, stats = dpo_loss(torch.stack(lp.chunk(2), dim=1), ref[s:s + batch_size].to(device),
                               cfg.beta, cfg.loss, cfg.label_smoothing)
        loss_sum += float(loss) * stats["n"]
        _add(total, stats)
    return {"val_loss": loss_sum / max(total.get("n", 1), 1), **_means(total, "val_")}


# ---- the stage ---------------------------------------------------------------------------------


def run(cfg: RunConfig, parent: str | Path, out_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False) -> Path:
    d, t = cfg.dpo, cfg.dpo.train
    if d.loss not in LOSSES:
        raise ValueError(f"dpo.loss must be one of {', '.join(LOSSES)}, not {d.loss!r}")
    if d.beta <= 0:
        raise ValueError("dpo.beta must be positive")
    parent = Path(parent)
    out = Path(out_dir) if out_dir else cfg.run_dir / "dpo"
    checkpoint.check_out(out, resume, overwrite)
    rt = setup()
    try:
        tok = tokenizers_.load(parent)
        reference = checkpoint.load_model(parent, rt.device)
        max_len = min(t.seq_len, reference.cfg.max_seq_len)
        train_pairs, held, skipped = split_sources(d.sources, d.val_fraction)
        if skipped:
            print(f"dpo: skipped {skipped}")
        # The pairs this run will see (a seeded shuffle, cut to steps x batch): only those need
        # reference log-probabilities.
        random.Random(t.seed).shuffle(train_pairs)
        used = t.max_steps * t.batch_size * t.grad_accum * rt.world_size
        train_pairs = train_pairs[:used]
        held_eval = held[:d.eval_pairs] if d.eval_pairs else held
        t0 = time.perf_counter()
        # Under the loop's precision, so that at step 0 policy and reference agree exactly.
        amp = autocast_dtype(t.dtype, rt.device)
        with (torch.autocast(rt.device.split(":")[0], dtype=amp) if amp
              else contextlib.nullcontext()):
            ref_train = reference_logps(reference, tok, train_pairs, max_len, rt.device)
            ref_held = reference_logps(reference, tok, held_eval, max_len, rt.device)
        print(f"dpo: {len(train_pairs):,} train pairs, {len(held_eval):,} held-out pairs; "
              f"reference log-probs in {time.perf_counter() - t0:.1f}s; loss {d.loss}, "
              f"beta {d.beta}")
        del reference
        model = checkpoint.load_model(out if resume else parent, rt.device).train()
        cfg.run_dir.mkdir(parents=True, exist_ok=True)  # metrics.jsonl goes there
        order = PairOrder(len(train_pairs), t.batch_size, t.seed, rt.rank, rt.world_size)
        seen: dict = {}

        def next_batch():
            idx = order.next()
            x, y = pair_batch(tok, [train_pairs[i] for i in idx], max_len, rt.device)
            return x, y, ref_train[idx].to(rt.device)

        def loss(m, batch):
            x, y, ref = batch
            lp = sequence_logps(m, x, y)
            value, stats = dpo_loss(torch.stack(lp.chunk(2), dim=1), ref, d.beta, d.loss,
                                    d.label_smoothing)
            if d.nll_coef:
                nll = chosen_nll(lp, y)
                value = value + d.nll_coef * nll
                stats["chosen_nll"] = float(nll) * stats["n"]
            _add(seen, stats)
            return value

        def train_metrics() -> dict:
            means = _means(seen)
            seen.clear()
            return means

        stage = Stage(
            name="dpo", next_batch=next_batch, loss=loss,
            tokens=lambda b: int((b[0] != tokenizers_.pad_id(tok)).sum()),
            data_state=order.state_dict, load_data_state=order.load_state_dict,
            evaluate=(lambda m: heldout_metrics(m, tok, held_eval, ref_held, d, max_len,
                                                rt.device)) if held_eval else None,
            flops_per_token=model.flops_per_token(max_len), train_metrics=train_metrics,
        )
        info_base = {"stage": "dpo", "parent": str(parent), "config": cfg.to_dict(),
                     "parent_info": checkpoint.parent_identity(parent),
                     "chat_template": checkpoint.read_info(parent).get("chat_template", "chatml"),
                     "data": {"sources": d.sources, "train_pairs": len(train_pairs),
                              "heldout_pairs": len(held_eval), "skipped": skipped}}
        tok_dir = out if resume else parent

        def save(m, info, state):
            checkpoint.save(out, m, tok_dir, {**info_base, **info}, state)

        result = train(model, t, stage, rt, ckpt_dir=out, save_checkpoint=save,
                       run_dir=cfg.run_dir, resume=resume)
        if not result.stopped_early and rt.is_main:
            m = result.metrics
            if "val_accuracy" in m:
                print(f"dpo: held-out pairs: accuracy {100 * m['val_accuracy']:.1f}%, margin "
                      f"{m['val_margin']:.3f} (chosen {m['val_reward_chosen']:+.3f}, rejected "
                      f"{m['val_reward_rejected']:+.3f})")
            if d.eval_items:
                compare_to_parent(out, parent, d.eval_items, d.judge or None, model=model)
            print(f"dpo: -> {out}")
        return out
    finally:
        teardown()
