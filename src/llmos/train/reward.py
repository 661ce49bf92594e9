"""Stage 3a: a reward model. An SFT checkpoint and comparisons in, a scorer out.

    llmos reward --model runs/cpu-tiny/sft                  builtin:comparisons
    llmos reward --model DIR --data prefs.jsonl             a comparison file (TRL shape)

The reward model is the transformer with its language-model head replaced by a scalar head read
at the last token of a rendered conversation. It is trained on pairs with the Bradley-Terry
loss, -log sigmoid(r(chosen) - r(rejected)): the probability that a labeler prefers the chosen
answer is modelled as sigmoid of the reward difference (Ouyang et al. 2022, InstructGPT).

The model itself (its head, scoring, saving and loading in Hugging Face's layout) is
`llmos.reward_model`; this module is the stage: batches of pairs, the losses, the held-out
report.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos import chat_format, checkpoint, plots
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.data.comparisons import split_sources
from llmos.data.records import Comparison
from llmos.reward_model import (
    RewardModel,
    collate,
    encode,
    load_reward_model,
    save_reward_model,
    score,
)
from llmos.runtime import setup, teardown
from llmos.train.loop import Stage, train

# ---- data: comparisons -> batches ---------------------------------------------------------------


# Pairs of similar length are batched together (within windows of this many batches), so a
# batch pads less: uniformly drawn batches of the built-in set are 45% padding, these 17%.
BUCKET_BATCHES = 8


class PairOrder:
    """Indices of training pairs in a fresh shuffled order each epoch; its position is saved
    for exact resume. With several processes each global batch is cut into one slice per rank.
    Given each pair's length, every window of `BUCKET_BATCHES` batches is sorted by length
    before it is cut into batches, and the batches are shuffled: the same pairs, less padding."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 lengths: list[int] | None = None):
        if n == 0:
            raise ValueError("no training pairs")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} pairs")
        self.n, self.B, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.lengths = lengths
        self.epoch, self.index = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None:
            return order
        span = self.B * self.world
        out = []
        for s in range(0, self.n, span * BUCKET_BATCHES):
            window = sorted(order[s:s + span * BUCKET_BATCHES], key=self.lengths.__getitem__)
            batches = [window[j:j + span] for j in range(0, len(window), span)]
            out += [i for b in torch.randperm(len(batches), generator=g).tolist()
                    for i in batches[b]]
        return out

    def next(self) -> list[int]:
        out = []
        while len(out) < self.B * self.world:
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.index])
            self.index += 1
        return out[self.rank * self.B:(self.rank + 1) * self.B]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffle()


def pair_batch(tok, pairs: list[Comparison], max_len: int, device: str, masks: bool = False):
    """B pairs -> (ids [2B, T], last [2B]): the B chosen conversations, then the B rejected.
    With `masks`, also [B, T]: 1 at the chosen answers' assistant tokens, for the
    language-model loss."""
    chosen = [chat_format.render(tok, p.prompt + p.chosen) for p in pairs]  # ids and loss mask
    rows = [c.ids[-max_len:] for c in chosen]  # as `encode` cuts them
    rows += [encode(tok, p.prompt + p.rejected, max_len) for p in pairs]
    x, last = collate(rows, tokenizers_.pad_id(tok), device)
    if not masks:
        return x, last
    mask = torch.zeros_like(x[:len(pairs)])
    for i, c in enumerate(chosen):
        m = c.mask[-max_len:]
        mask[i, :len(m)] = torch.tensor(m)
    return x, last, mask


def keep_worst_ranked(model, batch: tuple[torch.Tensor, ...], keep: int
                      ) -> tuple[torch.Tensor, ...]:
    """The `keep` pairs of a pair_batch that the model ranks worst (lowest margin), as a
    pair_batch of their own (with their masks, if it has them). Online batch selection
    (Loshchilov & Hutter 2015): a pair the model already ranks right by a wide margin gives
    almost no gradient, so training on it is wasted."""
    x, last = batch[:2]
    with torch.no_grad():
        chosen, rejected = model(x, last).chunk(2)
    pick = torch.argsort(chosen - rejected)[:keep].sort().values
    rows = torch.cat([pick, pick + len(chosen)])
    T = int(last[rows].max()) + 1
    return (x[rows, :T], last[rows], *(mask[pick, :T] for mask in batch[2:]))


def bt_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: rewards [2B] (chosen first) -> mean -log sigmoid(r_chosen - r_rejected)."""
    chosen, rejected = rewards.chunk(2)
    return -F.logsigmoid(chosen - rejected).mean()


def prefix_bt_loss(every: torch.Tensor, x: torch.Tensor, last: torch.Tensor,
                   max_len: int) -> torch.Tensor:
    """Bradley-Terry on the rewards read along the two answers of each pair, from the first
    token where they differ to the end of the shorter: every [2B, T] (chosen rows first), x
    the ids, last each row's last index. Each position compares two prefixes that differ only
    from that first token on, so the head learns to flag a wrong token where it appears (a
    misread sum, another function's name) rather than only at the last token, which reads the
    flag from there. A pair with a row cut to max_len (their positions no longer line up)
    adds nothing. The mean over pairs of each pair's mean over positions."""
    B, T = x.shape[0] // 2, x.shape[1]
    lc, lr = last[:B], last[B:]
    split = (x[:B] != x[B:]).int().argmax(1)  # first differing position (pads differ too)
    n = (torch.minimum(lc, lr) - split + 1) * ((lc < max_len - 1) & (lr < max_len - 1))
    k = torch.arange(max(int(n.max()), 1), device=x.device)
    valid = (k[None] < n[:, None]).float()
    pos = (split[:, None] + k[None]).clamp(max=T - 1)
    chosen, rejected = every.chunk(2)
    loss = -F.logsigmoid(chosen.gather(1, pos) - rejected.gather(1, pos)) * valid
    return (loss.sum(1) / valid.sum(1).clamp(min=1)).sum() / (n > 0).sum().clamp(min=1)


# ---- evaluation --------------------------------------------------------------------------------


def margins(model: RewardModel, tok, pairs: list[Comparison], batch_size: int = 32
            ) -> list[float]:
    """r(chosen) - r(rejected) for each pair (> 0: the reward model agrees with the label)."""
    chosen = score(model, tok, [p.prompt + p.chosen for p in pairs], batch_size)
    rejected = score(model, tok, [p.prompt + p.rejected for p in pairs], batch_size)
    return [c - r for c, r in zip(chosen, rejected)]


def heldout_metrics(model, tok, pairs: list[Comparison], keep: dict | None = None) -> dict:
    """BT loss, accuracy and mean margin on held-out pairs; the margins go to keep["margins"]."""
    m = torch.tensor(margins(model, tok, pairs))
    if keep is not None:
        keep["margins"] = m.tolist()
    return {"val_loss": float(-F.logsigmoid(m).mean()),
            "val_accuracy": float((m > 0).float().mean()), "val_margin": float(m.mean())}


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def report(model, tok, pairs: list[Comparison], out: Path | None = None,
           m: list[float] | None = None) -> dict:
    """Held-out pairwise accuracy (overall and per kind of rejected answer, ties count as
    wrong), the margin distribution as quantiles, and a histogram in out/margins.png.
    `m`: the pairs' margins when already computed."""
    m = margins(model, tok, pairs) if m is None else m
    t = torch.tensor(m)
    by_kind: dict[str, list[float]] = {}
    for p, x in zip(pairs, m):
        by_kind.setdefault(p.kind or p.task, []).append(x)
    result = {
        "pairs": len(m),
        "accuracy": float((t > 0).float().mean()),
        "margin_mean": float(t.mean()),
        "margin_quantiles": {f"p{round(100 * q)}": float(t.quantile(q)) for q in QUANTILES},
        "accuracy_by_kind": {k: {"accuracy": sum(x > 0 for x in v) / len(v), "pairs": len(v)}
                             for k, v in sorted(by_kind.items())},
    }
    if out is not None:
        _histogram(m, out / "margins.png", result["accuracy"])
        tmp = out / "reward_eval.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out / "reward_eval.json")
    return result


def _histogram(m: list[float], path: Path, accuracy: float) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(m, bins=40, color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("reward margin r(chosen) - r(rejected), held-out pairs")
    ax.set_ylabel("pairs")
    ax.set_title(f"{len(m)} pairs, {100 * accuracy:.1f}% ranked correctly")
    fig.tight_layout()
    plots.save(fig, path)


# ---- the stage ---------------------------------------------------------------------------------


def run(cfg: RunConfig, parent: str | Path, out_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False) -> Path:
    r, t = cfg.reward, cfg.reward.train
    if r.select_from < 1:
        raise ValueError(f"reward.select_from must be 1 or more, not {r.select_from}")
    if r.lm_coef < 0:
        raise ValueError(f"reward.lm_coef must be 0 or more, not {r.lm_coef}")
    if r.prefix_coef < 0:
        raise ValueError(f"reward.prefix_coef must be 0 or more, not {r.prefix_coef}")
    parent = Path(parent)
    out = Path(out_dir) if out_dir else cfg.run_dir / "reward"
    checkpoint.check_out(out, resume, overwrite)
    rt = setup()
    try:
        if resume:
            model, tok = load_reward_model(out)
        else:
            tok = tokenizers_.load(parent)
            model = RewardModel(checkpoint.load_model(parent))
        if r.lm_coef > 0 and not model.cfg.tie_embeddings:
            raise ValueError("reward.lm_coef needs a model with tied embeddings: this one has "
                             "its own output matrix, which the reward model does not keep")
        max_len = min(t.seq_len, model.cfg.max_seq_len)
        train_pairs, held, skipped = split_sources(r.sources, r.val_fraction)
        if skipped:
            print(f"reward: skipped {skipped}")
        held_eval = held[:r.eval_pairs] if r.eval_pairs else held
        print(f"reward: {len(train_pairs):,} train pairs, {len(held):,} held out "
              f"({len(held_eval):,} scored); {t.max_steps} steps of {t.batch_size} pairs"
              + (f", the worst ranked of {r.select_from * t.batch_size}"
                 if r.select_from > 1 else ""))
        model = model.to(rt.device).train()
        cfg.run_dir.mkdir(parents=True, exist_ok=True)  # metrics.jsonl goes there
        lengths = [max(len(encode(tok, p.prompt + p.chosen, max_len)),
                       len(encode(tok, p.prompt + p.rejected, max_len))) for p in train_pairs]
        order = PairOrder(len(train_pairs), t.batch_size, t.seed, rt.rank, rt.world_size,
                          lengths)
        seen = {"acc": 0.0, "margin": 0.0, "n": 0, "lm": 0.0, "lm_n": 0, "prefix": 0.0,
                "prefix_n": 0}
        last_eval: dict = {}  # the final evaluation's margins, reused by the report
        trained = {"tokens": 0}  # of the last batch, after selection

        def next_batch():
            picked = [train_pairs[i] for _ in range(r.select_from) for i in order.next()]
            return pair_batch(tok, picked, max_len, rt.device, masks=r.lm_coef > 0)

        def loss(m, batch):
            if r.select_from > 1:
                batch = keep_worst_ranked(m, batch, t.batch_size)
            trained["tokens"] = int((batch[1] + 1).sum())
            outputs = m.outputs(*batch, positions=r.prefix_coef > 0)
            rewards, lm = outputs.rewards, outputs.lm
            c, rj = rewards.detach().chunk(2)
            seen["acc"] += float((c > rj).float().sum())
            seen["margin"] += float((c - rj).sum())
            seen["n"] += len(c)
            total = bt_loss(rewards)
            if lm is not None:
                # Keeping the body a language model of the chosen answers keeps what it knew
                # readable by the head (Yang et al. 2024, "generalizable reward models").
                seen["lm"] += float(lm.detach())
                seen["lm_n"] += 1
                total = total + r.lm_coef * lm
            if outputs.every is not None:
                prefix = prefix_bt_loss(outputs.every, batch[0], batch[1], max_len)
                seen["prefix"] += float(prefix.detach())
                seen["prefix_n"] += 1
                total = total + r.prefix_coef * prefix
            return total

        def train_metrics() -> dict:
            n = max(seen["n"], 1)
            out_ = {"accuracy": seen["acc"] / n, "margin": seen["margin"] / n}
            if seen["lm_n"]:
                out_["lm_loss"] = seen["lm"] / seen["lm_n"]
            if seen["prefix_n"]:
                out_["prefix_loss"] = seen["prefix"] / seen["prefix_n"]
            seen.update(acc=0.0, margin=0.0, n=0, lm=0.0, lm_n=0, prefix=0.0, prefix_n=0)
            return out_

        stage = Stage(
            name="reward",
            next_batch=next_batch,
            loss=loss,
            tokens=lambda b: trained["tokens"],
            data_state=order.state_dict,
            load_data_state=order.load_state_dict,
            evaluate=(lambda m: heldout_metrics(m, tok, held_eval, last_eval))
            if held_eval else None,
            flops_per_token=model.flops_per_token(max_len),
            train_metrics=train_metrics,
        )
        info_base = {"parent": str(parent), "config": cfg.to_dict(),
                     "parent_info": checkpoint.parent_identity(parent),
                     "data": {"sources": r.sources, "train_pairs": len(train_pairs),
                              "heldout_pairs": len(held), "skipped": skipped}}
        tok_dir = out if resume else parent  # copied before the old checkpoint is replaced

        def save(m, info, state):
            save_reward_model(out, m, tok_dir, {**info_base, **info}, state)

        result = train(model, t, stage, rt, ckpt_dir=out, save_checkpoint=save,
                       run_dir=cfg.run_dir, resume=resume)
        if not result.stopped_early and rt.is_main and held_eval:
            rep = report(model, tok, held_eval, out, last_eval.get("margins"))
            q = rep["margin_quantiles"]
            print(f"reward: held-out pairwise accuracy {100 * rep['accuracy']:.1f}% on "
                  f"{rep['pairs']} pairs; margin p5 {q['p5']:.2f} p25 {q['p25']:.2f} "
                  f"median {q['p50']:.2f} p75 {q['p75']:.2f} p95 {q['p95']:.2f}")
            print("reward: by kind " + ", ".join(f"{k} {100 * v['accuracy']:.1f}%"
                                                for k, v in rep["accuracy_by_kind"].items()))
            info = checkpoint.read_info(out)
            info.setdefault("metrics", {}).update(
                heldout_accuracy=rep["accuracy"], heldout_margin_quantiles=q)
            checkpoint.write_json(out / "llmos.json", info)
            print(f"reward: -> {out} (margins histogram: {out / 'margins.png'})")
        return out
    finally:
        teardown()
