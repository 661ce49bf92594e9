"""Log-likelihood scoring of continuations: the engine of every multiple-choice task.

A *group* is one context and the continuations that follow it (the choices of a question). Its
context runs through the model once: the group is packed into one row,

    [ context | choice 1 | choice 2 | ... ]

where each choice's tokens see the whole context and their own earlier tokens, but not the other
choices, and take the rotary positions they would have right after the context. So one forward
pass scores all the choices of a question, and rows of many questions run as one batch (sorted by
length, so little is padding). Only the positions that predict a continuation token go through
the output layer, which is about a third of this small model's compute otherwise.

Contexts longer than the model's window are cut from the left (the oldest tokens, e.g. the first
few-shot examples, go first) so that the context plus the longest choice fits in max_seq_len; a
continuation longer than the window minus one token keeps its first tokens. Both are counted in
the result.

Every context starts with the end-of-text token, the separator the model saw before every
document in pretraining, so the first real token is predicted as a document start. The context and
each continuation are tokenized separately (as lm-evaluation-harness does), so a choice's tokens
do not depend on the context before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Group:
    context: list[int]
    continuations: list[list[int]]


@dataclass
class Scores:
    logprobs: list[float]  # summed log-probability of each continuation, in nats
    greedy: list[bool]  # each continuation is the argmax at every one of its tokens
    cut_context: int  # context tokens dropped from the left to fit the window
    cut_continuation: int  # continuation tokens dropped (a choice longer than the window)


def fit(group: Group, max_len: int) -> tuple[list[int], list[list[int]], int, int]:
    """Cut a group to the window: continuations to max_len - 1 tokens, then the context from the
    left so that it plus the longest continuation fits (at least one context token stays)."""
    conts = [c[:max_len - 1] for c in group.continuations]
    cut_cont = sum(len(a) - len(b) for a, b in zip(group.continuations, conts))
    keep = max(1, max_len - max(len(c) for c in conts))
    ctx = group.context[-keep:]
    return ctx, conts, len(group.context) - len(ctx), cut_cont


def pack(ctx: list[int], conts: list[list[int]]):
    """One row: (tokens, positions, segment ids, predictor index and target of each continuation
    token). Segment 0 is the context, j >= 1 the j-th continuation."""
    tokens, positions, segments = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    spans = []
    for j, c in enumerate(conts, start=1):
        start = len(tokens)
        tokens += c
        positions += range(len(ctx), len(ctx) + len(c))
        segments += [j] * len(c)
        # Token t of the continuation is predicted by the one before it: the context's last
        # token for t = 0, else the continuation's own token t - 1.
        predictors = [len(ctx) - 1] + list(range(start, start + len(c) - 1))
        spans.append((predictors, c))
    return tokens, positions, segments, spans


def hidden_states(model, idx, positions, mask):
    """The final-norm hidden states of the model (its forward without the output layer), so the
    output layer runs only where a log-probability is needed."""
    cos, sin = model.rope_cos[positions][:, None], model.rope_sin[positions][:, None]
    x = model.embed(idx)
    for i, layer in enumerate(model.layers):
        x = layer(x, cos, sin, None, i, mask)
    return model.norm(x)


@torch.inference_mode()
def score_batch(model, packed: Sequence[tuple], pad_id: int = 0) -> list[tuple[list, list]]:
    """Packed rows -> per row, (log-probabilities, greedy flags) of its continuations."""
    device = next(model.parameters()).device
    T = max(len(p[0]) for p in packed)
    B = len(packed)
    idx = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # -1: padding
    for b, (tokens, positions, segments, _) in enumerate(packed):
        n = len(tokens)
        idx[b, :n], pos[b, :n], seg[b, :n] = (torch.tensor(tokens), torch.tensor(positions),
                                             torch.tensor(segments))
    idx, pos, seg = idx.to(device), pos.to(device), seg.to(device)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    # A token sees earlier tokens of the context and of its own segment; padding sees only
    # padding and the context, so no attention row is empty.
    same = seg[:, :, None] == seg[:, None, :]
    mask = causal[None] & (same | (seg[:, None, :] == 0))
    h = hidden_states(model, idx, pos, mask[:, None])

    rows, cols, targets, owners = [], [], [], []
    for b, (_, _, _, spans) in enumerate(packed):
        for j, (predictors, cont) in enumerate(spans):
            rows += [b] * len(cont)
            cols += predictors
            targets += cont
            owners += [(b, j)] * len(cont)
    picked = h[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    logits = model.lm_head(picked).float()
    logp = F.log_softmax(logits, dim=-1)
    tgt = torch.tensor(targets, device=device)
    token_lp = logp.gather(-1, tgt[:, None])[:, 0].tolist()
    token_greedy = (logits.argmax(-1) == tgt).tolist()

    out = [([0.0] * len(p[3]), [True] * len(p[3])) for p in packed]
    for (b, j), lp, g in zip(owners, token_lp, token_greedy):
        out[b][0][j] += lp
        out[b][1][j] = out[b][1][j] and g
    return out


def score_groups(model, groups: Sequence[Group], batch_size: int = 32,
                 progress: Callable[[int], None] | None = None) -> list[Scores]:
    """Score every continuation of every group; `batch_size` rows (questions) per forward pass.
    Lower it on out-of-memory. `progress(n)` is called as n more groups finish."""
    max_len = model.cfg.max_seq_len
    fitted = [fit(g, max_len) for g in groups]
    packed = [pack(ctx, conts) for ctx, conts, _, _ in fitted]
    # Longest first: a batch of similar lengths pads little, and an out-of-memory shows at once.
    order = sorted(range(len(groups)), key=lambda i: -len(packed[i][0]))
    results: list[Scores | None] = [None] * len(groups)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, (lps, greedy) in zip(chunk, score_batch(model, [packed[i] for i in chunk])):
            results[i] = Scores(lps, greedy, fitted[i][2], fitted[i][3])
        if progress:
            progress(len(chunk))
    return results
