"""Inference: KV-cached, batched sampling with streaming.

Batches are left-padded so every row's newest token sits in the same column; each row keeps its
own rotary positions (starting at 0 at its first real token), so a prompt decodes to the same
tokens alone or in a batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llmos.model import KVCache, Transformer, use_decode_layout

# Ends a token stream (agent/loop.py's TokenStream, the schedulers' `stream`) when a stop token
# ended the answer; the stop token itself is not part of it.
STOP = -1
# What a decoding thread puts last on a request's queue when the answer ended without a stop
# token (its budget, the context, a cancel).
END = object()


def relay(out: queue.SimpleQueue, closed: threading.Event) -> Iterator[int]:
    """The tokens a decoding thread puts on `out` for one request: ids, STOP when a stop token
    ended them, END when something else did, or an exception, raised here. `closed` is set when
    the reader stops, early or not, so the decoding thread can drop the request."""
    try:
        while (item := out.get()) is not END:
            if isinstance(item, BaseException):
                raise RuntimeError(f"generation failed: {item}") from item
            yield item
            if item == STOP:
                return
    finally:
        closed.set()


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop_tokens: Sequence[int] = field(default_factory=tuple)
    seed: int | None = None
    min_new_tokens: int = 0  # stop tokens are masked out until this many tokens are generated


def sample_next(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None):
    """logits: [B, V] -> token ids [B]."""
    if p.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token once the mass before it already reaches top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= p.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams],
                gens: Sequence[torch.Generator | None]) -> torch.Tensor:
    """logits: [B, V] -> token ids [B], each row with its own temperature, top-k, top-p and
    generator, so a seeded row draws the same tokens alone or in any batch (the server mixes
    requests with different settings in one batch)."""
    out = logits.argmax(-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return out
    x = logits[rows].float()
    x = x / torch.tensor([[params[i].temperature] for i in rows], device=x.device)
    sorted_x, order = x.sort(dim=-1, descending=True)
    ranks = torch.arange(x.size(-1), device=x.device)[None]
    top_k = torch.tensor([[params[i].top_k or x.size(-1)] for i in rows], device=x.device)
    drop = ranks >= top_k
    top_p = torch.tensor([[params[i].top_p] for i in rows], device=x.device)
    probs = sorted_x.masked_fill(drop, float("-inf")).softmax(-1)
    drop |= (probs.cumsum(-1) - probs >= top_p) & (top_p < 1.0)  # as in sample_next
    probs = sorted_x.masked_fill(drop, float("-inf")).softmax(-1)
    for j, i in enumerate(rows):
        pick = torch.multinomial(probs[j], 1, generator=gens[i])
        out[i] = order[j, pick[0]]
    return out


class Engine:
    def __init__(self, model: Transformer):
        self.model = use_decode_layout(model.eval())
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def stream(self, prompts: Sequence[Sequence[int]], p: SamplingParams
               ) -> Iterator[list[int | None]]:
        """Yield, per decoding step, the new token of each row (None once a row has stopped).
        A stop token ends its row and is not yielded."""
        if not prompts or any(len(x) == 0 for x in prompts):
            raise ValueError("every prompt needs at least one token")
        max_len = self.model.cfg.max_seq_len
        prompts = [list(x)[-(max_len - 1):] for x in prompts]  # keep the most recent context
        B, L = len(prompts), max(len(x) for x in prompts)
        budget = min(p.max_new_tokens, max_len - L)
        if budget <= 0:
            return
        gen = None
        if p.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(p.seed)
        pads = torch.tensor([L - len(x) for x in prompts], device=self.device)
        idx = torch.tensor([[0] * (L - len(x)) + x for x in prompts], device=self.device)
        cache = KVCache(self.model.cfg, B, L + budget, self.dtype, self.device)
        cols = torch.arange(L + budget, device=self.device)
        key_valid = cols[None, :] >= pads[:, None]  # [B, S]: False on left padding

        unpadded = bool((pads == 0).all())
        if unpadded:
            logits = self.model(idx, cache=cache)[:, -1]
        else:
            positions = (torch.arange(L, device=self.device)[None] - pads[:, None]).clamp(min=0)
            causal = cols[None, :L] <= torch.arange(L, device=self.device)[:, None]  # [L, L]
            mask = causal[None] & key_valid[:, None, :L]
            mask |= torch.eye(L, dtype=torch.bool, device=self.device)[None]  # pads see themselves
            logits = self.model(idx, cache=cache, positions=positions, mask=mask[:, None])[:, -1]

        stop_set = set(p.stop_tokens)
        stops = torch.tensor(list(stop_set) or [-1], device=self.device)
        done = [False] * B
        positions = (L - pads)[:, None]
        for step in range(budget):
            if step < p.min_new_tokens and stop_set:
                logits[:, stops] = float("-inf")
            tok = sample_next(logits, p, gen)
            # One transfer per step; stops are checked in Python (no small tensor ops).
            row = tok.tolist()
            done = [d or t in stop_set for d, t in zip(done, row)]
            yield [None if d else t for t, d in zip(row, done)]
            if all(done) or step == budget - 1:
                return
            if unpadded:  # positions are the cache's length: no gather, no mask
                logits = self.model(tok[:, None], cache=cache)[:, -1]
            else:
                logits = self.model(tok[:, None], cache=cache, positions=positions + step,
                                    mask=key_valid[:, None, None, :cache.length + 1])[:, -1]

    def generate(self, prompts: Sequence[Sequence[int]], p: SamplingParams) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in prompts]
        finished = [False] * len(prompts)
        for step_tokens in self.stream(prompts, p):
            for i, t in enumerate(step_tokens):
                if t is None:
                    finished[i] = True
                elif not finished[i]:
                    out[i].append(t)
        return out


class TextStream:
    """Turns a growing list of token ids into text deltas, holding back incomplete UTF-8.

    Each push decodes a short window, not the whole answer (which made a long answer's streaming
    quadratic): the text of the ids since `start` against that of the ids up to `read`, which
    the deltas so far cover. A window that starts a few tokens back keeps what a decoder does
    with its neighbours (a leading space, bytes split between tokens) as a whole decode does."""

    def __init__(self, tokenizer):
        self.tok, self.ids = tokenizer, []
        self.start = self.read = 0  # the window's first id; the ids the deltas so far cover

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tok.decode
        said = decode(self.ids[self.start:self.read], skip_special_tokens=False)
        text = decode(self.ids[self.start:], skip_special_tokens=False)
        if text.endswith("\ufffd") or len(text) <= len(said):
            return ""  # a multi-byte character is still arriving
        self.start, self.read = self.read, len(self.ids)
        return text[len(said):]


@torch.inference_mode()
def greedy_reference(model: Transformer, prompt: Sequence[int], n: int) -> list[int]:
    """No-cache greedy decoding: the whole sequence is recomputed every step (for tests)."""
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids], device=next(model.parameters()).device))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]
