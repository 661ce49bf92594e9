"""Stage 3c: online reinforcement learning on prompts. A checkpoint and prompts in, a tuned
checkpoint out.

    llmos rl --model runs/cpu-tiny/sft                       arithmetic without the calculator
    llmos rl --model DIR --prompts tasks.jsonl               your prompts, answers or unit tests
    llmos rl --model DIR --reward-model runs/cpu-tiny/reward a reward model instead of a verifier

Each optimizer step samples a group of G answers to each of P prompts with the inference engine
(batched, temperature sampling), scores every answer (a verifier or a reward model), and turns
the scores into group-normalized advantages, A = (r - mean(group)) / (std(group) + eps) (GRPO,
Shao et al. 2024: the group is the baseline, no value network). The update is PPO's clipped
objective on each answer token,

    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * KL_k3(policy || reference),

with ratio = pi(token) / pi_sampling(token). With one update per sampled batch the ratio is 1
and this is REINFORCE with the group mean as baseline; `rl.updates_per_batch` > 1 reuses a batch
and the clip keeps those updates near the sampling policy. The KL is the k3 estimator
exp(d) - d - 1 with d = log pi_ref - log pi (Schulman 2020): unbiased, never negative.

Practising one task pulls the weights away from the rest: from the speedrun's assistant, 100
steps on two-digit sums took the one-digit ones from 0.975 to 0.897 (docs/rl.md).
`rl.replay_rows` > 0 adds a language-model term on that many rows of the SFT mixture each step,
weighted by `rl.replay_coef` (InstructGPT's PPO-ptx, Ouyang et al. 2022): the conversations SFT
trained on and, as SFT had them, rows of pretraining text (`Replayed`).

The sampling phase is the stage's batch source; the update, optimizer, schedule, metrics,
checkpoints and resume are the one training loop's (train/loop.py). A group whose answers all
score the same has no signal (every advantage is 0); `mixed_groups` in the log counts the rest.

Prompt sources (rl.prompts):
- ``builtin:arithmetic`` - two 2-digit numbers added or subtracted without the calculator, every
  such problem (``arithmetic_practice``: the training split to practise on, of which SFT showed
  the working of about a tenth, with the 2-digit +- 1-digit problems so that their working is
  practised too; the held-out two-digit ones to evaluate): a call to a tool earns nothing.
  Scored by exact arithmetic: the answer must contain the result, and every other number it
  writes must be from the question or from a true equation of its working (so listing
  guesses, or a wrong step, earns nothing).
- ``builtin:mental`` - the 2-digit +- 1-digit problems of ``builtin:arithmetic`` again: beside
  it, practised twice as often.
- ``builtin:signature``, ``builtin:identity`` - those tasks of ``builtin:assistant`` (the
  answer must contain the signature / the name llmos).
- a JSONL file, one ``{"prompt": str | messages, "answer": "42"}`` (exact number or substring) or
  ``{"prompt": ..., "tests": "assert f(2) == 4"}`` (the answer's code, then the tests, run in the
  Python sandbox: reward 1 when they pass) per line; held out by a hash of the prompt.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos import chat_format, checkpoint, plots, reward_model, run_log
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.data.conversations import read_conversations, split_sources
from llmos.envs.prompts import BUILTIN_ARITHMETIC, BUILTIN_TASKS, Prompt, load_prompts, verify
from llmos.envs.verifiers import score
from llmos.evals.assistant_tasks import run_items
from llmos.infer.engine import Engine, SamplingParams
from llmos.runtime import autocast_dtype, setup, teardown
from llmos.train import sft
from llmos.train.loop import Stage, train


class Scorer:
    """Rewards for (prompt, answer text) pairs: the verifier, or a reward model when given."""

    def __init__(self, judge_dir: str = "", device: str = "cpu"):
        self.rm = None
        if judge_dir:  # an `llmos reward` checkpoint
            self.rm, self.rm_tok = reward_model.load_reward_model(judge_dir, device)
            self.rm.eval()

    def __call__(self, prompts: list[Prompt], turns: list[dict], calls: list[bool]
                 ) -> tuple[list[float], list[float]]:
        """(rewards, correct) of parsed assistant turns: correct is the verifier's verdict (nan
        without a reference). A reward model reads the whole turn, tool calls included."""
        contents = [t.get("content", "") for t in turns]
        correct = [float("nan") if p.task == "reward" else (0.0 if call else verify(p, c))
                   for p, c, call in zip(prompts, contents, calls)]
        if self.rm is None:
            return [0.0 if math.isnan(x) else x for x in correct], correct
        convs = [p.messages + [t] for p, t in zip(prompts, turns)]
        with torch.no_grad():
            return [float(r) for r in reward_model.score(self.rm, self.rm_tok, convs)], correct


# ---- the RL pieces (pure functions, tested by hand) ---------------------------------------------


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """rewards [N] in consecutive groups of group_size -> (r - mean) / (std + eps) per group
    (population std: a group of equal rewards gets advantages of exactly 0)."""
    r = rewards.view(-1, group_size).double()
    std = r.std(1, unbiased=False, keepdim=True)
    a = (r - r.mean(1, keepdim=True)) / (std + eps)
    # Equal rewards can leave a rounding-sized std (a reward model's floats); dividing would
    # blow that noise up to full-size advantages, and Adam would take full steps on it.
    a = torch.where(r.max(1, keepdim=True).values - r.min(1, keepdim=True).values > 1e-4, a, 0.0)
    return a.view(-1).float()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy:
    exp(d) - d - 1 with d = ref - policy; 0 where they agree, never negative."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_loss(logp, old_logp, ref_logp, adv, mask, clip_eps: float, kl_coef: float):
    """PPO's clipped surrogate plus the KL penalty, averaged over answer tokens.
    logp/old_logp/ref_logp/mask: [N, T]; adv: [N]. Returns (loss, stats)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    kl = kl_k3(logp, ref_logp)
    per_token = -surrogate + kl_coef * kl
    n = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / n
    clipped = ((ratio - 1).abs() > clip_eps) & (surrogate != ratio * a)
    return loss, {"kl": float((kl.detach() * mask).sum() / n),
                  "clip_frac": float((clipped.float() * mask).sum() / n)}


def token_logprobs(model, x: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """log pi(x[:, t] | x[:, :t]) at answer positions, 0 elsewhere; x, mask: [N, T]."""
    logits = model(x[:, :-1]).float()
    lp = torch.gather(F.log_softmax(logits, -1), 2, x[:, 1:, None]).squeeze(-1)
    return F.pad(lp, (1, 0)) * answer_mask


# ---- sampling -----------------------------------------------------------------------------------


@dataclass
class Batch:
    x: torch.Tensor  # [N, T] prompt + answer tokens, right-padded
    mask: torch.Tensor  # [N, T] 1 on answer tokens (the ones trained)
    adv: torch.Tensor  # [N]
    old_logp: torch.Tensor  # [N, T] under the sampling policy
    ref_logp: torch.Tensor  # [N, T] under the reference


class Sampler:
    """The sampling phase: P prompts x G answers -> a Batch, and the step's statistics."""

    def __init__(self, model, ref, tok, prompts: list[Prompt], scorer: Scorer, rl, seed: int,
                 device: str, amp: torch.dtype | None = None):
        self.model, self.ref, self.tok, self.prompts = model, ref, tok, prompts
        self.scorer, self.rl, self.seed, self.device = scorer, rl, seed, device
        # Log-probabilities in the precision of the update, so the PPO ratio starts at 1.
        self.autocast = (lambda: torch.autocast(device.split(":")[0], dtype=amp)) if amp else (
            contextlib.nullcontext)
        self.stops = tokenizers_.end_ids(tok)
        self.epoch, self.index, self.draws = 0, 0, 0
        self.cached: Batch | None = None
        self.uses = 0
        self.history: list[dict] = []
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def _next_prompts(self) -> list[Prompt]:
        out = []
        while len(out) < self.rl.prompts_per_step:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.prompts[self._order[self.index]])
            self.index += 1
        return out

    def next_batch(self) -> Batch:
        """A fresh sample every rl.updates_per_batch optimizer steps (PPO epochs)."""
        if self.cached is None or self.uses >= self.rl.updates_per_batch:
            self.cached, self.uses = self.sample(), 0
        self.uses += 1
        return self.cached

    @torch.no_grad()
    def sample(self) -> Batch:
        t0 = time.perf_counter()
        rl, G = self.rl, self.rl.group_size
        prompts = [p for p in self._next_prompts() for _ in range(G)]
        ids = [chat_format.render(self.tok, p.messages, add_generation_prompt=True).ids
               for p in prompts]
        params = SamplingParams(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature,
                                top_k=rl.top_k, stop_tokens=self.stops,
                                seed=self.seed * 1_000_003 + self.draws)
        self.draws += 1
        outs = Engine(self.model).generate(ids, params)
        self.model.train()
        turns, calls, rows = [], [], []
        for prompt_ids, out in zip(ids, outs):
            stopped = len(out) < rl.max_new_tokens
            turn = chat_format.parse_assistant(self.tok.decode(out, skip_special_tokens=False))
            turns.append(turn.message())
            calls.append(bool(turn.tool_calls or turn.errors))
            rows.append((prompt_ids, out + ([self.stops[0]] if stopped else [])))
        rewards, correct = self.scorer(prompts, turns, calls)
        r = torch.tensor(rewards)
        adv = group_advantages(r, G)
        x, mask = _pad(rows, self.stops[0])
        x, mask, adv = x.to(self.device), mask.to(self.device), adv.to(self.device)
        with self.autocast():
            old = token_logprobs(self.model, x, mask)
            ref = token_logprobs(self.ref, x, mask) if self.ref is not None else old
        n = mask.sum().clamp(min=1)
        groups = r.view(-1, G)
        judged = [c for c in correct if not math.isnan(c)]
        self.history.append({
            "reward": float(r.mean()),
            "accuracy": sum(judged) / len(judged) if judged else float("nan"),
            "kl_ref": float((kl_k3(old, ref) * mask).sum() / n),
            "answer_len": float(mask.sum(1).float().mean()),
            "mixed_groups": float((groups.max(1).values > groups.min(1).values).float().mean()),
            "tool_calls": sum(calls) / len(calls),
            "sample_s": time.perf_counter() - t0,
        })
        return Batch(x, mask, adv, old, ref)

    def take_stats(self) -> dict:
        """Means of the sampling statistics since the last call (the loop's log line)."""
        done, self.history = self.history, []
        return {k: sum(s[k] for s in done) / len(done) for k in done[0]} if done else {}

    def state_dict(self) -> dict:
        # The batch in use too: a run stopped between two updates on one batch resumes with
        # the second update on that batch, not a fresh sample.
        return {"epoch": self.epoch, "index": self.index, "draws": self.draws,
                "uses": self.uses, "cached": None if self.cached is None else {
                    k: getattr(self.cached, k) for k in Batch.__dataclass_fields__}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.draws = state["epoch"], state["index"], state["draws"]
        self.uses, cached = state.get("uses", 0), state.get("cached")
        self.cached = None if cached is None else Batch(
            **{k: v.to(self.device) for k, v in cached.items()})
        self._order = self._shuffle()


def _pad(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) + len(a) for p, a in rows)
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, (p, a) in enumerate(rows):
        x[i, :len(p) + len(a)] = torch.tensor(p + a)
        mask[i, len(p):len(p) + len(a)] = 1
    return x, mask


def rl_loss(rl):
    """The stage's loss: the clipped objective on one sampled batch. Answers with no advantage
    add nothing to the gradient when there is no KL term, so they are left out of the forward."""

    def loss(model, b: Batch):
        keep = (b.adv != 0) & (b.mask.sum(1) > 0) if rl.kl_coef == 0 else b.mask.sum(1) > 0
        if not bool(keep.any()):
            keep[0] = True  # a zero loss that still has a graph
        x, mask = b.x[keep], b.mask[keep]
        T = int(mask.nonzero()[:, 1].max()) + 1 if mask.any() else x.shape[1]
        x, mask = x[:, :T], mask[:, :T]
        logp = token_logprobs(model, x, mask)
        # One update per sample: the policy is the sampling policy, ratio exactly 1 (the old
        # log-probabilities, computed apart, would differ by rounding under bf16 autocast).
        old = logp.detach() if rl.updates_per_batch == 1 else b.old_logp[keep][:, :T]
        value, _ = clipped_loss(logp, old, b.ref_logp[keep][:, :T], b.adv[keep], mask,
                                rl.clip_eps, rl.kl_coef)
        return value

    return loss


class Replayed:
    """Each step's sampled batch paired with `rl.replay_rows` rows of the SFT mixture: the
    conversations SFT trained on (its training split) and, as SFT had them, rows of pretraining
    text. Their loss is added to the policy's (`with_replay`), so the other tasks are rehearsed
    while one is practised."""

    def __init__(self, sampler: Sampler, cfg: RunConfig, parent: Path, tok, rt, seed: int):
        seq_len = cfg.sft.train.seq_len
        if seq_len > sampler.model.cfg.max_seq_len:
            raise ValueError(f"rl.replay_rows packs the SFT mixture into sft.train.seq_len "
                             f"{seq_len} tokens, beyond the model's context "
                             f"{sampler.model.cfg.max_seq_len}; lower sft.train.seq_len or set "
                             "rl.replay_rows=0")
        convs, _, _ = split_sources(cfg.sft.sources, cfg.sft.val_fraction)
        rows = sft.RowLoader(sft.pack(tok, convs, seq_len, seed), cfg.rl.replay_rows, seed,
                             rt.device)
        self.replay, self.lm_loss, _ = sft.with_text(rows, cfg.sft, parent, seq_len, rt, "rl")
        self.sampler = sampler
        print(f"rl: replaying {cfg.rl.replay_rows} rows of {len(convs):,} SFT conversations "
              f"a step (weight {cfg.rl.replay_coef})")

    def next_batch(self) -> tuple:
        return self.sampler.next_batch(), self.replay.next_batch()

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "replay" not in state:
            raise ValueError("this RL run was saved without replay (rl.replay_rows=0): resume "
                             "it with the same settings")
        self.sampler.load_state_dict(state)
        self.replay.load_state_dict(state["replay"])


def with_replay(policy_loss, replayed: Replayed, coef: float):
    def loss(model, batch):
        policy, rows = batch
        return policy_loss(model, policy) + coef * replayed.lm_loss(model, rows)

    return loss


# ---- held-out evaluation ------------------------------------------------------------------------


@torch.no_grad()
def heldout_accuracy(model, tok, prompts: list[Prompt], max_new_tokens: int,
                     batch_size: int = 64) -> dict:
    """Greedy answers (one turn, no tools) to the held-out prompts, scored by the eval's
    `score` (arithmetic: the answer contains the result) and by the training verifier."""
    stops = tokenizers_.end_ids(tok)
    acc = strict = 0.0
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        ids = [chat_format.render(tok, p.messages, add_generation_prompt=True).ids for p in chunk]
        outs = Engine(model).generate(ids, SamplingParams(max_new_tokens=max_new_tokens,
                                                          temperature=0.0, stop_tokens=stops))
        for p, out in zip(chunk, outs):
            turn = chat_format.parse_assistant(tok.decode(out, skip_special_tokens=False))
            call = bool(turn.tool_calls or turn.errors)
            if p.task in ("arithmetic", "text"):
                acc += 0.0 if call else score("arithmetic" if p.task == "arithmetic" else "python",
                                              p.answer, turn.content)
            strict += 0.0 if call or p.task == "reward" else verify(p, turn.content)
    n = max(len(prompts), 1)
    return {"heldout_acc": acc / n, "heldout_verified": strict / n}


def fitting(prompts: list[Prompt], tok, model, rl) -> list[Prompt]:
    """The prompts whose answer of rl.max_new_tokens (and its stop token) fits the model's
    context; the others are left out and counted, as SFT leaves out conversations too long."""
    room = model.cfg.max_seq_len - rl.max_new_tokens - 1
    kept = [p for p in prompts
            if len(chat_format.render(tok, p.messages, add_generation_prompt=True).ids) <= room]
    if prompts and not kept:
        raise ValueError(f"no RL prompt leaves room for rl.max_new_tokens {rl.max_new_tokens} in "
                         f"the model's context of {model.cfg.max_seq_len} tokens; lower "
                         "rl.max_new_tokens or use shorter prompts")
    if len(kept) < len(prompts):
        print(f"rl: {len(prompts) - len(kept):,} of {len(prompts):,} prompts left out: with an "
              f"answer of {rl.max_new_tokens} tokens they exceed the model's context "
              f"{model.cfg.max_seq_len}")
    return kept


# ---- the stage ----------------------------------------------------------------------------------


def run(cfg: RunConfig, parent: str | Path, out_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False) -> Path:

    rl, t = cfg.rl, cfg.rl.train
    parent = Path(parent)
    out = Path(out_dir) if out_dir else cfg.run_dir / "rl"
    checkpoint.check_out(out, resume, overwrite)
    if rl.replay_rows < 0:
        raise ValueError(f"rl.replay_rows must be 0 or more, not {rl.replay_rows}")
    rt = setup()
    if rt.distributed:
        teardown()
        raise ValueError("llmos rl runs in one process (the sampling phase is not sharded yet)")
    try:
        tok = tokenizers_.load(parent)
        model = checkpoint.load_model(out if resume else parent).to(rt.device)
        ref = None
        if rl.kl_coef > 0 or rl.log_kl:
            ref = checkpoint.load_model(parent).to(rt.device).eval()
            ref.requires_grad_(False)
        train_prompts, held = load_prompts(rl.prompts, rl.val_fraction)
        train_prompts, held = fitting(train_prompts, tok, model, rl), fitting(held, tok, model, rl)
        held = held[:rl.eval_items]
        scorer = Scorer(rl.reward_model, rt.device)
        print(f"rl: {len(train_prompts):,} training prompts, {len(held):,} held out; "
              f"{rl.prompts_per_step} prompts x {rl.group_size} answers per step, "
              f"{'reward model ' + rl.reward_model if rl.reward_model else 'verifier'} rewards")
        sampler = Sampler(model, ref, tok, train_prompts, scorer, rl, t.seed, rt.device,
                          autocast_dtype(t.dtype, rt.device))
        evaluate = (lambda m: heldout_accuracy(m, tok, held, rl.max_new_tokens)) if held else None

        metrics = cfg.run_dir / "metrics.jsonl"
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            run_log.drop(metrics, "rl")
            if evaluate:  # the starting point of the curve
                start = evaluate(model.eval())
                model.train()
                print("rl: step 0 " + " ".join(f"{k} {v:.4f}" for k, v in start.items()))
                run_log.append(metrics, {"stage": "rl", "step": 0, "tokens": 0, **start})

        source, loss, tokens = sampler, rl_loss(rl), lambda b: int(b.mask.sum())
        if rl.replay_rows:
            source = Replayed(sampler, cfg, parent, tok, rt, t.seed)
            loss = with_replay(loss, source, rl.replay_coef)
            tokens = lambda b: int(b[0].mask.sum()) + b[1][0].numel()  # noqa: E731
        stage = Stage(
            name="rl", next_batch=source.next_batch, loss=loss, tokens=tokens,
            data_state=source.state_dict, load_data_state=source.load_state_dict,
            evaluate=evaluate, train_metrics=sampler.take_stats,
            flops_per_token=model.flops_per_token(model.cfg.max_seq_len))
        tok_dir = parent
        info_base = {"stage": "rl", "parent": str(parent), "config": cfg.to_dict(),
                     "parent_info": checkpoint.parent_identity(parent),
                     "data": {"prompts": rl.prompts, "train_prompts": len(train_prompts),
                              "heldout_prompts": len(held), "replay_rows": rl.replay_rows}}

        def save(m, info, state):
            checkpoint.save(out, m, tok_dir, {**info_base, **info}, state)

        t0 = time.perf_counter()
        result = train(model, t, stage, rt, ckpt_dir=out, save_checkpoint=save,
                       run_dir=cfg.run_dir, resume=resume)
        if not result.stopped_early:
            plot_curve(metrics, cfg.run_dir / "rl.png")
            print(f"rl: done at step {result.step} in {time.perf_counter() - t0:.0f} s: held-out "
                  f"accuracy {result.metrics.get('heldout_acc', float('nan')):.3f} -> {out} "
                  f"(curve: {cfg.run_dir / 'rl.png'})")
            if rl.eval_items and BUILTIN_ARITHMETIC in rl.prompts:
                # the practised task, and the one it must keep
                summary = no_tool_eval(model.eval(), tok, BUILTIN_TASKS[BUILTIN_ARITHMETIC][0],
                                       rl.eval_items)
                info = checkpoint.read_info(out)
                info.setdefault("metrics", {}).update(summary)
                checkpoint.write_json(out / "llmos.json", info)
        return out
    finally:
        teardown()


def no_tool_eval(model, tok, tasks: tuple[str, ...], limit: int) -> dict:
    """The assistant eval's number for each no-calculator arithmetic task (its items, its tool
    loop with no tools, its scoring), comparable with the SFT model's `{task}_acc`."""
    held, _ = read_conversations(["builtin:assistant:heldout"])  # built once for every task
    out = {}
    for task in tasks:
        items = [c for c in held if c.task == task and c.answer][:limit]
        records = run_items(model, tok, items, tools={})
        acc = sum(r["score"] for r in records) / max(len(records), 1)
        print(f"rl: held-out {task} questions without the calculator (the assistant eval's "
              f"tool loop, {len(records)} items): {acc:.3f}")
        out |= {f"heldout_{task}_acc": acc, f"heldout_{task}_n": len(records)}
    return out


def plot_curve(metrics: Path, out: Path) -> None:
    """Held-out accuracy per evaluation and training reward per step, against the step."""
    plt = plots.pyplot()
    recs = [r for r in run_log.read(metrics) if r.get("stage") == "rl"]
    held = [(r["step"], r["heldout_acc"]) for r in recs if "heldout_acc" in r]
    reward = [(r["step"], r["accuracy"]) for r in recs
              if "accuracy" in r and not math.isnan(r["accuracy"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    if reward:
        steps, acc = zip(*reward)
        ax.plot(steps, acc, alpha=0.3, label="train accuracy (sampled, per step)")
        w = 5  # the per-step numbers are noisy (P x G answers): a moving mean shows the trend
        if len(acc) >= w:
            ax.plot(steps[w - 1:], [sum(acc[i - w + 1:i + 1]) / w for i in range(w - 1, len(acc))],
                    color="C0", label=f"train accuracy ({w}-step mean)")
    if held:
        ax.plot(*zip(*held), "o-", label="held-out accuracy (greedy)")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plots.save(fig, out)
