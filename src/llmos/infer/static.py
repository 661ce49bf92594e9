"""Batched generation with a decoding step of fixed shapes: a static KV cache and a compiled step
(`torch.compile`; on a GPU with CUDA graphs, mode "reduce-overhead"). The engine's own cache
grows a column a step and its masks change shape, so each step is launched op by op from
Python; here every step has the same shapes (B rows, one token each, `max_len` cached columns),
so it compiles once and replays, which is what a GPU needs to keep busy at small batches.

Each row keeps its own position: a step writes each row's new key and value at that row's
column and attends over the columns up to it. Prompts are right-padded for the prefill (run
eagerly: its shape changes with the prompts); a row's padding columns are overwritten as it
decodes and are never attended to before that. Batches smaller than the compiled size are padded
with rows that are thrown away.

    engine = StaticEngine(model, batch=64, compile=True)   # model on cuda, bf16
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=128, temperature=0))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmos.infer.engine import SamplingParams, sample_next
from llmos.model import Transformer, use_decode_layout


class StaticKVCache:
    """Keys and values [layers, B, kv_heads, max_len, head_dim]; `pos` [B] is the column each
    row writes next (set by the caller before a step)."""

    def __init__(self, cfg, batch: int, max_len: int, dtype, device):
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.rows = torch.arange(batch, device=device)
        self.length = 0  # unused: the static path always gives positions

    def update(self, layer: int, k, v):
        """k, v: [B, kv_heads, T, head_dim]. A prefill (T > 1) fills columns 0..T-1; a step
        (T == 1) writes each row at its own column. Returns every column: the mask decides."""
        if k.shape[2] == 1:
            self.k[layer, self.rows, :, self.pos] = k[:, :, 0]
            self.v[layer, self.rows, :, self.pos] = v[:, :, 0]
        else:
            self.k[layer, :, :, :k.shape[2]] = k
            self.v[layer, :, :, :k.shape[2]] = v
        return self.k[layer], self.v[layer]

    def advance(self, T: int) -> None:
        pass


class StaticEngine:
    """`Engine.generate` with a compiled fixed-shape step. `batch`: the rows of every step
    (fewer prompts are padded up to it); `max_len`: cached columns (prompt + answer; default
    the model's context)."""

    def __init__(self, model: Transformer, batch: int = 1, max_len: int | None = None,
                 compile: bool = True):
        self.model = use_decode_layout(model.eval())  # CPU only: faster few-row products
        self.cfg = model.cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.batch = batch
        self.max_len = min(max_len or self.cfg.max_seq_len, self.cfg.max_seq_len)
        self.cache = StaticKVCache(self.cfg, batch, self.max_len, self.dtype, self.device)
        self.cols = torch.arange(self.max_len, device=self.device)
        step = self._step
        if compile:
            cuda = self.device.type == "cuda"
            if cuda:  # changed in place by every step: a CUDA graph must see them as fixed
                for t in (self.cache.k, self.cache.v, self.cache.pos, self.cols):
                    torch._dynamo.mark_static_address(t)
            mode = "reduce-overhead" if cuda else None  # CUDA graphs
            step = torch.compile(step, mode=mode, dynamic=False)
        self.step = step

    def _step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tok [B, 1] at positions pos [B] -> next-token logits [B, V]."""
        self.cache.pos.copy_(pos)
        mask = (self.cols[None, :] <= pos[:, None])[:, None, None, :]
        return self.model(tok, cache=self.cache, positions=pos[:, None], mask=mask)[:, -1]

    def _prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        B, L = self.batch, max(len(x) for x in prompts)
        lens = torch.tensor([len(x) for x in prompts], device=self.device)
        idx = torch.tensor([x + [0] * (L - len(x)) for x in prompts], device=self.device)
        q = torch.arange(L, device=self.device)
        # A query sees the keys before it and within its row's prompt (a padding query sees
        # only causal keys, so its softmax has something to weigh; its output is not used).
        key, query, n = self.cols[None, None, :], q[None, :, None], lens[:, None, None]
        mask = (key <= query) & ((key < n) | (query >= n))
        positions = q[None].expand(B, L)
        logits = self.model(idx, cache=self.cache, positions=positions, mask=mask[:, None])
        return logits[torch.arange(B, device=self.device), lens - 1]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], p: SamplingParams) -> list[list[int]]:
        n = len(prompts)
        if not prompts or any(len(x) == 0 for x in prompts):
            raise ValueError("every prompt needs at least one token")
        if n > self.batch:
            raise ValueError(f"{n} prompts for a static batch of {self.batch}")
        rows = [list(x) for x in prompts] + [[0]] * (self.batch - n)
        L = max(len(x) for x in rows)
        budget = min(p.max_new_tokens, self.max_len - L)
        if budget <= 0:
            return [[] for _ in prompts]
        gen = None
        if p.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(p.seed)
        stops = set(p.stop_tokens)
        stop_ids = torch.tensor(sorted(stops) or [-1], device=self.device)
        logits = self._prefill(rows)
        pos = torch.tensor([len(x) for x in rows], device=self.device)
        out: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        for step in range(budget):
            if step < p.min_new_tokens and stops:
                logits[:, stop_ids] = float("-inf")
            tok = sample_next(logits.float(), p, gen)
            for i, t in enumerate(tok[:n].tolist()):
                if not done[i]:
                    if t in stops:
                        done[i] = True
                    else:
                        out[i].append(t)
            if all(done) or step == budget - 1:
                break
            logits = self.step(tok[:, None], pos).clone()
            pos = pos + 1
        return out
