"""Does the model know the answer? Two measures of one item (a prompt, the right answer, and wrong
answers of the same kind), both from a single forward pass:

- exact match: greedy decoding writes the right answer, every token of it;
- ranking: the right answer is more likely than every wrong one (chance: 1 / (1 + wrong ones)),
  and how much more, in nats (log-probability of the right answer minus the wrong ones' mean).

Items about one person are not independent, so intervals resample people, not items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llmos import tokenizer as tokenizers_
from llmos.evals.intervals import cluster_bootstrap
from llmos.infer.likelihood import Group, score_groups


@dataclass
class Item:
    who: str  # the person the item is about (the unit intervals resample)
    prompt: str
    answer: str  # with its leading space, as it follows the prompt
    wrong: list[str]  # answers of the same kind that are not this one
    tags: dict = field(default_factory=dict)  # subset, direction, template, ...


def score(model, tok, items: Sequence[Item], batch_size: int = 32) -> list[dict]:
    """Per item: its tags, exact (bool), first (the right answer ranked above every wrong one),
    logprob of the right answer and the wrong ones' mean (nats)."""
    eot = tokenizers_.eot_id(tok)
    groups = [Group([eot] + tok.encode(it.prompt).ids,
                    [tok.encode(a).ids for a in [it.answer, *it.wrong]]) for it in items]
    rows = []
    for it, s in zip(items, score_groups(model, groups, batch_size)):
        right, wrong = s.logprobs[0], s.logprobs[1:]
        rows.append({**it.tags, "who": it.who, "prompt": it.prompt, "answer": it.answer,
                     "exact": s.greedy[0], "first": all(right > w for w in wrong),
                     "choices": 1 + len(wrong), "logprob": round(right, 4),
                     "wrong_logprob": round(float(np.mean(wrong)), 4) if wrong else None})
    return rows


def _by_person(rows: Sequence[dict], value) -> list[list]:
    people: dict[str, list] = {}
    for r in rows:
        people.setdefault(r["who"], []).append(value(r))
    return list(people.values())


def _mean_interval(groups: list[list[float]], rounds: int = 2000, seed: int = 0) -> list[float]:
    """A percentile bootstrap interval of the mean over all values, resampling whole groups."""
    rng = np.random.default_rng(seed)
    sums = np.array([sum(g) for g in groups])
    counts = np.array([len(g) for g in groups])
    draws = rng.integers(0, len(groups), (rounds, len(groups)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    return [round(float(x), 3) for x in np.percentile(means, [2.5, 97.5])]


def summarize(rows: Sequence[dict]) -> dict:
    """Accuracy (exact match) and ranking accuracy with 95% intervals over people, ranking's
    chance rate, and the mean log-probability gap of the right answer over the wrong ones."""
    if not rows:
        return {"n": 0}
    exact = _by_person(rows, lambda r: r["exact"])
    first = _by_person(rows, lambda r: r["first"])
    out = {"n": len(rows), "people": len(exact),
           "accuracy": round(sum(map(sum, exact)) / len(rows), 4),
           "ci": [round(x, 4) for x in cluster_bootstrap(exact)],
           "rank_accuracy": round(sum(map(sum, first)) / len(rows), 4),
           "rank_ci": [round(x, 4) for x in cluster_bootstrap(first)],
           "chance": round(float(np.mean([1 / r["choices"] for r in rows])), 4)}
    ranked = [r for r in rows if r["choices"] > 1]
    if ranked:
        gaps = _by_person(ranked, lambda r: r["logprob"] - r["wrong_logprob"])
        out |= {"logprob_gap": round(float(np.mean([g for p in gaps for g in p])), 3),
                "gap_ci": _mean_interval(gaps)}
    return out
