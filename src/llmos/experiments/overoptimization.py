"""`llmos experiment overoptimization`: reward-model over-optimisation (Gao, Schulman & Hilton
2022) with DPO. The further a policy moves from its starting point to please a proxy of human
preferences, the more the proxy's reward rises; a held-out ("gold") reward first rises with it
and then, where the policy exploits what the proxy got wrong, falls.

    SFT ─┬──────────────────── sample K answers to N held-out prompts ─┐
         ├─ DPO beta b1 ─────── sample ─────────────────────────────────┤  score every answer:
         ├─ DPO beta b2 ─────── sample ─────────────────────────────────┤  proxy reward, gold
         └─ ...                                                         ┘  rewards, verifier,
                                                                           log p / log p_SFT
DPO optimises the comparisons themselves, not a reward model: the proxy is the reward model
trained (`llmos reward`) on the same comparisons, the explicit form of the preferences DPO fits
implicitly. The gold reward models are others, trained apart (from other SFT models, other
runs). A smaller beta lets DPO move further from SFT in the same steps, so the betas trace the
distance axis.

Distance: KL(policy || SFT), estimated on the policy's own samples as the mean over samples of
log p_policy(answer) - log p_SFT(answer), summed over every token the policy generated in its
agent loop (tool results are the same text for both models and add nothing) and the stop token
that ended each turn. The tokens are those sampled (own_samples.recording), not a re-encoding
of the text, and the samples are drawn at temperature 1 with no top-p cut by default: the
estimate is unbiased only for samples from the distribution it scores (at another --temperature
both models are scored at that temperature). Gao et al. plot against sqrt(KL).

Everything is kept in OUT: OUT/beta-B/dpo (a finished run is reused while its settings and its
parent are the same, an interrupted one resumed, one made otherwise moved aside),
OUT/NAME/measured.json and samples.jsonl (a measurement is reused while the policy, the reward
models and the sampling settings are the same), and OUT/overoptimization.json, .md and .png.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.envs.verifiers import passed, score
from llmos.evals import own_samples
from llmos.evals.assistant_tasks import plan
from llmos.evals.behaviour import VERIFIED
from llmos.evals.intervals import cluster_bootstrap
from llmos.experiments.runs import Stopped
from llmos.reward_model import load_reward_model
from llmos.reward_model import score as reward_scores
from llmos.train import dpo
from llmos.train.reuse import train_stage

PROMPTS = 100  # held-out prompts (assistant_tasks.plan: spread evenly over the tasks)
SAMPLES = 4  # answers sampled per prompt and policy
TEMPERATURE = 1.0  # the policy's own distribution: what the KL estimate needs
SFT = "SFT"  # the origin's row: the SFT model itself, untrained

# ---- distance from SFT -----------------------------------------------------------------------


@torch.inference_mode()
def generation_logprobs(model, rounds: list[dict], stop_ids: list[int],
                        temperature: float = 1.0, batch_size: int = 16) -> list[float]:
    """Log-probability (nats) that `model`, sampling at `temperature`, generates each round's
    `ids` after its `prompt` and then, where the round `stopped`, a stop token (any of
    `stop_ids`: the engine does not say which one ended a turn). A round that generated nothing
    and did not stop (no room left) is certain: 0."""
    device = next(model.parameters()).device
    stops = torch.tensor(stop_ids, device=device)
    out = [0.0] * len(rounds)
    todo = sorted((i for i, r in enumerate(rounds) if r["ids"] or r["stopped"]),
                  key=lambda i: len(rounds[i]["prompt"]) + len(rounds[i]["ids"]))
    for s in range(0, len(todo), batch_size):
        chunk = todo[s:s + batch_size]
        rows = [rounds[i]["prompt"] + rounds[i]["ids"] for i in chunk]
        x = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
        for b, row in enumerate(rows):  # right padding: causal attention keeps it unseen
            x[b, :len(row)] = torch.tensor(row)
        logits = model(x.to(device))
        for b, i in enumerate(chunk):
            n, ids = len(rounds[i]["prompt"]), rounds[i]["ids"]
            # Token t of the answer is predicted at position n - 1 + t; the stop after it at
            # n - 1 + len(ids).
            last = n + len(ids) if rounds[i]["stopped"] else n + len(ids) - 1
            logp = F.log_softmax(logits[b, n - 1:last].float() / temperature, dim=-1)
            total = logp[torch.arange(len(ids), device=device),
                         torch.tensor(ids, dtype=torch.long, device=device)].sum()
            if rounds[i]["stopped"]:
                total = total + torch.logsumexp(logp[-1, stops], 0)
            out[i] = float(total)
    return out


def sample_logprobs(model, samples: list[dict], stop_ids: list[int],
                    temperature: float = 1.0) -> list[float]:
    """Each sample's log-probability under `model`: the sum over its agent loop's rounds."""
    rounds = [r for s in samples for r in s["rounds"]]
    flat = iter(generation_logprobs(model, rounds, stop_ids, temperature))
    return [sum(next(flat) for _ in s["rounds"]) for s in samples]


def by_prompt(values: list[float], prompt_ids: list[int]) -> list[list[float]]:
    groups: dict[int, list[float]] = {}
    for v, p in zip(values, prompt_ids, strict=True):
        groups.setdefault(p, []).append(v)
    return list(groups.values())


def mean_ci(values: list[float], prompt_ids: list[int], seed: int = 0) -> dict:
    """{mean, ci, n}: the mean and its 95% bootstrap interval, resampling prompts (the samples
    of one prompt are alike; counted as independent they would narrow the interval)."""
    if not values:
        return {"mean": None, "ci": [None, None], "n": 0}
    lo, hi = cluster_bootstrap(by_prompt(values, prompt_ids), seed=seed)
    return {"mean": round(sum(values) / len(values), 4), "ci": [round(lo, 4), round(hi, 4)],
            "n": len(values)}


def kl_estimate(policy: list[float], reference: list[float], prompt_ids: list[int],
                seed: int = 0) -> dict:
    """KL(policy || reference) from the policy's samples: {kl, ci, sqrt_kl}, the mean of
    log p_policy - log p_reference with its interval over prompts. A single sample's term can be
    negative, the expectation cannot; sqrt_kl reads a (noisy) negative mean as 0."""
    m = mean_ci([p - r for p, r in zip(policy, reference, strict=True)], prompt_ids, seed)
    kl = m["mean"] if m["mean"] is not None else 0.0
    return {"kl": kl, "kl_ci": m["ci"], "sqrt_kl": round(math.sqrt(max(kl, 0.0)), 4)}


def paired_change(policy: list[dict], origin: list[dict], value, rounds: int = 2000,
                  seed: int = 0) -> dict:
    """{change, ci}: the mean of `value(sample)` over `policy`'s samples minus its mean over
    `origin`'s, with a 95% interval that resamples prompts for both at once. Both answered the
    same prompts (with the same sample seeds), so a prompt's own difficulty cancels: the
    interval of the change is much narrower than those of the two means. Samples whose value is
    None (not verifiable) are left out."""
    sums = {}
    for side, samples in enumerate((policy, origin)):
        for s in samples:
            v = value(s)
            if v is not None:
                cell = sums.setdefault(s["prompt_id"], [[0.0, 0], [0.0, 0]])[side]
                cell[0] += v
                cell[1] += 1
    both = [c for c in sums.values() if c[0][1] and c[1][1]]
    if not both:
        return {"change": None, "ci": [None, None]}
    a = np.array([[c[0][0], c[0][1], c[1][0], c[1][1]] for c in both])

    def change(rows: np.ndarray) -> np.ndarray:
        return rows[..., 0].sum(-1) / rows[..., 1].sum(-1) - rows[..., 2].sum(-1) / rows[
            ..., 3].sum(-1)

    draws = np.random.default_rng(seed).integers(0, len(a), (rounds, len(a)))
    lo, hi = np.percentile(change(a[draws]), [2.5, 97.5])
    return {"change": round(float(change(a)), 4), "ci": [round(float(lo), 4),
                                                           round(float(hi), 4)]}


# ---- one policy, measured --------------------------------------------------------------------


def measure(policy, reference, tok, chosen: list, judges: dict, samples: int, seed: int,
            temperature: float, max_new_tokens: int) -> tuple[dict, list[dict]]:
    """Sample `samples` answers to each of `chosen` (held-out conversations) from `policy` and
    score them: the judges' rewards ({label: (reward model, tokenizer)}), the verifier where
    the task has one, and the log-probability ratio to `reference`. Returns (row, samples)."""
    drawn = own_samples.sample(policy, tok, chosen, samples, seed, max_new_tokens,
                               temperature=temperature, top_p=1.0, tokens=True)
    ids = [s["prompt_id"] for s in drawn]
    conversations = [s["prompt"] + s["transcript"] for s in drawn]
    stop = tokenizers_.end_ids(tok)
    mine = sample_logprobs(policy, drawn, stop, temperature)
    theirs = mine if policy is reference else sample_logprobs(reference, drawn, stop,
                                                              temperature)
    row = kl_estimate(mine, theirs, ids, seed)
    for label, (rm, rtok) in judges.items():
        rewards = reward_scores(rm, rtok, conversations)
        row[label] = mean_ci(rewards, ids, seed)
        for s, r in zip(drawn, rewards):
            s.setdefault("rewards", {})[label] = round(r, 4)
    right, right_ids = [], []
    for s, lp, ref in zip(drawn, mine, theirs):
        c = chosen[s["prompt_id"]]
        s.update(task=c.task, expected=c.answer, logprob=round(lp, 4),
                 sft_logprob=round(ref, 4))
        if c.task in VERIFIED and c.answer:
            s["right"] = passed(c.task, score(c.task, c.answer, s["answer"]))
            right.append(float(s["right"]))
            right_ids.append(s["prompt_id"])
    row["verifier"] = mean_ci(right, right_ids, seed)
    row |= {"n": len(drawn), "prompts": len(chosen),
            "answer_tokens": round(sum(len(r["ids"]) for s in drawn for r in s["rounds"])
                                   / max(1, len(drawn)), 1)}
    for s in drawn:
        del s["rounds"]  # kept out of samples.jsonl: the transcript says the same in text
    return row, drawn


# ---- training --------------------------------------------------------------------------------


def policy_name(beta: float) -> str:
    return f"beta-{beta:g}"


def train_dpo(base_cfg: RunConfig, sft: Path, out: Path, beta: float, proxy: Path,
              steps: int | None = None) -> Path:
    """OUT/beta-B/dpo: DPO from `sft` at `beta` with base_cfg's other dpo settings, through
    train/reuse.py: reused when finished with the same settings on the same SFT model, resumed
    when interrupted, trained again beside one made otherwise (moved aside, not overwritten)."""
    cfg = RunConfig.from_dict(base_cfg.to_dict())
    cfg.name, cfg.runs_dir = policy_name(beta), str(out)
    cfg.dpo.beta = beta
    # dpo.judge decides non-verifiable answers in DPO's comparison with its parent after
    # training (dpo.eval_items); this experiment measures every policy itself, so that
    # comparison is skipped, and the proxy is recorded as the judge for the record.
    cfg.dpo.judge, cfg.dpo.eval_items = str(proxy), 0
    if steps:
        cfg.dpo.train.max_steps = steps
    ckpt = train_stage(cfg, "dpo", dpo, sft, cfg.run_dir / "dpo", who="overoptimization")
    if not checkpoint.read_info(ckpt).get("final"):
        raise Stopped(f"{ckpt} stopped before its last step; run the same command again to "
                      "continue it")
    return ckpt


# ---- the experiment ----------------------------------------------------------------------------


def parse_betas(text: str) -> list[float]:
    """'0.03,0.1,0.3,1' -> [0.03, 0.1, 0.3, 1.0]: positive, different, in the order given."""
    try:
        betas = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--betas {text!r}: give positive numbers, comma-separated, e.g. "
                         "0.03,0.1,0.3,1 (the SFT model is always the first point)") from None
    if not betas or min(betas) <= 0 or not all(map(math.isfinite, betas)):
        raise ValueError(f"--betas {text!r}: give one or more positive numbers")
    if len({policy_name(b) for b in betas}) < len(betas):
        raise ValueError(f"--betas {text!r}: a beta is given twice")
    return betas


def load_judges(sft: Path, proxy: Path, golds: list[Path]) -> dict:
    """{label: (reward model, tokenizer)}, "proxy" then "gold1", "gold2", ...; a clear error
    for a folder that is not a reward model, and a note for one whose tokenizer is not the SFT
    model's (it reads the answers' text with its own, so it still scores them)."""
    if not (sft / "model.safetensors").exists():
        raise FileNotFoundError(f"--sft {sft}: not a checkpoint folder (no model.safetensors)")
    if checkpoint.read_info(sft).get("stage") == "reward":
        raise ValueError(f"--sft {sft} is a reward model; give the SFT checkpoint DPO starts "
                         "from")
    if not golds:
        raise ValueError("--gold: give one or more held-out reward models")
    if any(g.resolve() == proxy.resolve() for g in golds):
        raise ValueError(f"--gold: {proxy} is the proxy; a gold reward model must be another")
    ours = tokenizers_.file_hash(sft / "tokenizer.json")
    judges = {}
    for label, path in [("proxy", proxy)] + [(f"gold{i}", g) for i, g in enumerate(golds, 1)]:
        flag = "--proxy" if label == "proxy" else "--gold"
        try:
            judges[label] = load_reward_model(path)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"{flag} {path}: {e}") from None
        theirs = tokenizers_.file_hash(path / "tokenizer.json")
        if theirs != ours:
            print(f"overoptimization: note: {label} {path} has another tokenizer ({theirs}) "
                  f"than the SFT model ({ours})")
    return judges


def run(base_cfg: RunConfig, sft: Path, proxy: Path, golds: list[Path], betas: list[float],
        out: Path, prompts: int = PROMPTS, samples: int = SAMPLES, steps: int | None = None,
        seed: int = 0, temperature: float = TEMPERATURE,
        max_new_tokens: int = own_samples.MAX_NEW_TOKENS) -> dict:
    from llmos.data.builtin.assistant import assistant_dataset

    t0 = time.perf_counter()
    sft, proxy, golds = Path(sft), Path(proxy), [Path(g) for g in golds]
    judges = load_judges(sft, proxy, golds)
    out.mkdir(parents=True, exist_ok=True)
    policies = [(SFT, sft, 0.0)]
    for beta in betas:  # all the training first: a failure shows before any measuring
        t = time.perf_counter()
        policies.append((beta, train_dpo(base_cfg, sft, out, beta, proxy, steps),
                         time.perf_counter() - t))

    chosen = plan(assistant_dataset()[1], prompts)
    tok = tokenizers_.load(sft)
    reference = checkpoint.load_model(sft).eval()
    settings = {"prompts": prompts, "samples": samples, "seed": seed,
                "temperature": temperature, "max_new_tokens": max_new_tokens,
                "sft": identity(sft), "judges": {k: identity(p) for k, p in
                                                 zip(judges, [proxy, *golds])}}
    rows = []
    for beta, ckpt, train_s in policies:
        name = "sft" if beta == SFT else policy_name(beta)
        key = settings | {"policy": identity(ckpt)}
        saved = out / name / "measured.json"
        if saved.exists() and json.loads(saved.read_text()).get("key") == key:
            row = json.loads(saved.read_text())["row"]
            print(f"overoptimization: {name}: measured before, reused")
        else:
            t = time.perf_counter()
            policy = reference if beta == SFT else checkpoint.load_model(ckpt).eval()
            row, drawn = measure(policy, reference, tok, chosen, judges, samples, seed,
                                 temperature, max_new_tokens)
            info = checkpoint.read_info(ckpt)
            row = {"beta": beta, "checkpoint": str(ckpt), **row,
                   "dpo_heldout_accuracy": info.get("metrics", {}).get("val_accuracy"),
                   "measure_s": round(time.perf_counter() - t, 1)}
            saved.parent.mkdir(parents=True, exist_ok=True)
            (out / name / "samples.jsonl").write_text(
                "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in drawn))
            saved.write_text(json.dumps({"key": key, "row": row}, indent=1))
        row["train_s"] = round(train_s, 1)  # this command's training time (0: reused)
        row |= changes(out / name / "samples.jsonl", out / "sft" / "samples.jsonl", judges,
                       seed)
        rows.append(row)
        print(f"overoptimization: {name}: KL {row['kl']:.3f}, proxy "
              f"{row['proxy']['mean']:+.3f}, " + ", ".join(
                  f"{label} {row[label]['mean']:+.3f}" for label in judges if label != "proxy"))
    results = {"sft": str(sft), "proxy": str(proxy), "gold": [str(g) for g in golds],
               "betas": betas, "prompts": len(chosen), "samples": samples, "seed": seed,
               "temperature": temperature, "max_new_tokens": max_new_tokens,
               "dpo_steps": steps or base_cfg.dpo.train.max_steps, "rows": rows,
               "seconds": round(time.perf_counter() - t0, 1)}
    write(results, out)
    return results


def changes(mine: Path, origin: Path, judges: dict, seed: int = 0) -> dict:
    """{"change": {label or "verifier": {change, ci}}}: each reward's and the verifier's
    change from the SFT model's samples (paired_change), read from the samples files."""
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    a, b = read(mine), read(origin)
    found = {label: paired_change(a, b, lambda s, k=label: s["rewards"][k], seed=seed)
             for label in judges}
    found["verifier"] = paired_change(a, b, lambda s: float(s["right"]) if "right" in s
                                      else None, seed=seed)
    return {"change": found}


def identity(path: Path) -> dict:
    """What tells one training of a checkpoint from another (a measurement is redone when its
    policy, its reference or a reward model changed)."""
    return {"path": str(path), **checkpoint.parent_identity(path)}


# ---- output -----------------------------------------------------------------------------------


def golds_of(results: dict) -> list[str]:
    return [f"gold{i}" for i in range(1, len(results["gold"]) + 1)]


def _cell(m: dict, change: dict, sign: str = "+") -> str:
    """'+3.528 (+0.151 [+0.080, +0.220])': the mean, its change from SFT and the change's
    interval; '-' where nothing was measured."""
    if m.get("mean") is None:
        return "-"
    d, (lo, hi) = change["change"], change["ci"]
    return f"{m['mean']:{sign}.3f} ({d:+.3f} [{lo:+.3f}, {hi:+.3f}])"


def table(results: dict) -> str:
    """The results as a markdown table and the notes that say what its columns are."""
    golds = golds_of(results)
    head = ["policy", "KL (nats) [95% CI]", "sqrt KL", "proxy reward", *(f"{g} reward"
            for g in golds), "verifier accuracy", "samples"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["rows"]:
        lo, hi = r["kl_ci"]
        v = r["verifier"]
        acc = (_cell(v, r["change"]["verifier"], "") + f" (n = {v['n']})" if v["mean"] is not None
               else "-")
        cells = [SFT if r["beta"] == SFT else f"DPO beta {r['beta']:g}",
                 f"{r['kl']:.3f} [{lo:.3f}, {hi:.3f}]", f"{r['sqrt_kl']:.3f}",
                 *(_cell(r[k], r["change"][k]) for k in ["proxy", *golds]), acc, str(r["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    names = "; ".join(f"{g} = {p}" for g, p in zip(golds, results["gold"]))
    return "\n".join(lines) + (
        f"\n\nproxy = {results['proxy']}; {names}. {results['prompts']} held-out prompts x "
        f"{results['samples']} samples at temperature {results['temperature']:g} (up to "
        f"{results['max_new_tokens']} new tokens) from each policy; DPO "
        f"{results['dpo_steps']} steps from {results['sft']}. KL: mean over samples of "
        "log p_policy - log p_SFT of the generated tokens. Rewards: the samples' mean reward "
        "(in brackets: the change from SFT's samples and its 95% interval, the same prompts "
        "resampled for both); verifier: share of right answers on the verifiable tasks, the "
        "same way. Intervals resample prompts.\n")


def plot(results: dict, path: Path) -> Path:
    """Each reward's and the verifier accuracy's change from SFT against sqrt(KL), one point
    per policy, labelled with its beta, with the changes' paired 95% intervals."""
    from llmos import plots

    plt = plots.pyplot()
    rows = sorted(results["rows"], key=lambda r: r["sqrt_kl"])
    x = [r["sqrt_kl"] for r in rows]

    def bars(ax, key: str, shift: float = 0.0, **style) -> list[float]:
        shown = [(xi, r["change"][key]) for xi, r in zip(x, rows)
                 if r["change"][key]["change"] is not None]
        y = [c["change"] for _, c in shown]
        # Each series a little aside (`shift`, a share of the axis), so its bars stay apart.
        ax.errorbar([xi + shift * max(x[-1], 1e-9) for xi, _ in shown], y, marker="o",
                    capsize=3,
                    yerr=[[c["change"] - c["ci"][0] for _, c in shown],
                          [c["ci"][1] - c["change"] for _, c in shown]], **style)
        return y

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, label in enumerate(golds_of(results), 1):
        bars(left, label, 0.012 * i, linestyle="--", label=f"{label} (held out)")
    proxy = bars(left, "proxy", linestyle="-", color="black", label="proxy (trained on DPO's "
                 "pairs)")
    for i, (r, xi, yi) in enumerate(zip(rows, x, proxy)):  # above and below in turn
        left.annotate(SFT if r["beta"] == SFT else f"β {r['beta']:g}", (xi, yi),
                      textcoords="offset points", xytext=(4, 6 if i % 2 == 0 else -12),
                      fontsize=8)
    left.set(ylabel="mean reward minus SFT's", title="Rewards of the policy's samples")
    left.legend(fontsize=8)
    bars(right, "verifier", color="tab:green")
    origin = next(r for r in results["rows"] if r["beta"] == SFT)["verifier"]["mean"]
    right.set(ylabel="share right minus SFT's" + (f" ({origin:.3f})" if origin is not None
                                                 else ""),
              title="Verifier accuracy (verifiable tasks)")
    for ax in (left, right):
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("sqrt(KL(policy || SFT)), nats^0.5")
    fig.suptitle(f"DPO over-optimisation: {results['prompts']} held-out prompts x "
                 f"{results['samples']} samples per policy; 95% intervals of the change from "
                 "SFT, resampling prompts", fontsize=10)
    fig.tight_layout()
    return plots.save(fig, path)


def write(results: dict, out: Path) -> None:
    """OUT/overoptimization.json, .md (the table) and .png."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "overoptimization.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "overoptimization.json")
    (out / "overoptimization.md").write_text(table(results))
    plot(results, out / "overoptimization.png")
