"""A Llama-compatible decoder-only transformer.

RMSNorm, rotary position embeddings (the "rotate half" convention of Hugging Face Llama),
SwiGLU feed-forward, grouped-query attention through `scaled_dot_product_attention`, and
optionally tied input/output embeddings. The query/key/value projections and the SwiGLU gate/up
projections are fused into one matrix each (one matmul instead of three or two, which is
measurably faster on CPU); `checkpoint.py` splits them into Hugging Face tensor names on save.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmos.config import ModelConfig

# Products of at most this many rows (decoding steps, short prompts) are split over the threads:
# 1.3-1.7x faster than F.linear from 1 to 128 rows on 2 threads, 0.9x at 256 (docs/LOG.md).
MATVEC_ROWS = 64
# ... and only on this many threads or fewer: on a 16-core host, where MKL's product already
# uses the threads it is given, the split was 0.97x F.linear on 4 threads, 0.94x on 8, 0.89x
# on 16 (docs/LOG.md, 2026-11-27 sixth session).
MATVEC_MAX_THREADS = 4


class Linear(nn.Linear):
    """nn.Linear whose few-row products at inference on CPU are split over the threads.

    A decoding step multiplies one row per sequence by every weight matrix, and MKL runs such a
    product on one thread here (a 2-core EPYC): one step's products at the 110M benchmark shape
    read 17-19 GB/s on 1 thread or 2. Cut into one block of output columns per thread (strided
    views of the same memory, no copy) and run as one batched product, each block gets a
    thread: 24-27 GB/s on 2 (benchmarks/matvec_kernels.py). `use_decode_layout` turns this
    on; training takes the plain path."""

    split_matvec = False  # set per module by use_decode_layout

    def forward(self, x):
        if (self.split_matvec and not torch.is_grad_enabled()
                and x.shape[:-1].numel() <= MATVEC_ROWS):
            return split_matvec(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def split_matvec(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear(x, w, bias) for a weight laid out [in, out] (`use_decode_layout`), as
    one batched product over column blocks, one per thread. Falls back to F.linear on one
    thread or more than MATVEC_MAX_THREADS, where the blocks would not be views (another layout
    or dtype, columns not divisible) and under autocast."""
    k = torch.get_num_threads()
    n_out, n_in = w.shape
    if (not 2 <= k <= MATVEC_MAX_THREADS or n_out % k or w.stride() != (1, n_out)
            or w.dtype != torch.float32 or x.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")):
        return F.linear(x, w, bias)
    rows = x.reshape(-1, n_in)
    y = torch.bmm(rows.expand(k, *rows.shape), column_blocks(w.t(), k))  # [k, rows, out / k]
    y = y.transpose(0, 1).reshape(*x.shape[:-1], n_out)
    return y if bias is None else y + bias


def column_blocks(wt: torch.Tensor, k: int) -> torch.Tensor:
    """A contiguous [in, out] matrix as k blocks of out / k columns, [k, in, out / k]: block b
    is columns [b * out / k, (b + 1) * out / k) of the same storage, so nothing is copied."""
    n_in, n_out = wt.shape
    return wt.as_strided((k, n_in, n_out // k), (n_out // k, n_out, 1))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def llama3_frequencies(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's long-context rotary frequencies: waves longer than the original context divided
    by low_freq_factor turn `factor` times slower, waves shorter than the original context divided
    by high_freq_factor stay as they are, and those between blend the two linearly in
    (original context / wavelength). The same arithmetic as transformers' "llama3" rope type."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    slow = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * slow / factor + smooth * slow
    between = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(between, blended, slow)


def rope_tables(cfg: ModelConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    if cfg.rope_scaling:
        inv_freq = llama3_frequencies(inv_freq, cfg.rope_scaling)
    angles = torch.outer(torch.arange(length).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # [length, head_dim], halves repeat (HF layout)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x: [B, H, T, D]; cos/sin: [B or 1, 1, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = Linear(cfg.dim, qkv_out, bias=False)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache=None, layer: int = 0, mask=None):
        B, T, _ = x.shape
        H, KV = self.n_heads, self.n_kv_heads
        qkv = self.wqkv(x).view(B, T, H + 2 * KV, self.head_dim).transpose(1, 2)
        # Queries and keys rotate in one call (half the small ops of a decoding step).
        qk = apply_rope(qkv[:, :H + KV], cos, sin)
        q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + KV:]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            # Training / full-sequence prefill: plain causal attention.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ffn_dim = cfg.ffn_hidden
        self.w13 = Linear(cfg.dim, 2 * cfg.ffn_hidden, bias=False)  # gate and up, fused
        self.w2 = Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x):
        gate, up = self.w13(x).split(self.ffn_dim, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, mask)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg, cfg.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02):
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)  # norm gains
            elif name.endswith(("wo.weight", "w2.weight")):
                # Residual-branch outputs start small so the stack begins near identity (GPT-2).
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets=None, *, cache=None, positions=None, mask=None,
                loss_reduction: str = "mean"):
        """idx: [B, T] token ids. Without a cache this is the training forward; `targets` (with
        -100 = ignore) gives the cross-entropy loss. With a cache, `positions` [B, T] are the
        rotary positions of the new tokens and `mask` [B, 1, T, S] says which cached keys each
        may see (None = plain causal over the whole cache)."""
        B, T = idx.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            if start + T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len "
                                 f"{self.cfg.max_seq_len}")
            cos = self.rope_cos[start:start + T][None, None]
            sin = self.rope_sin[start:start + T][None, None]
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        x = self.embed(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)
        logits = self.lm_head(x).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100, reduction=loss_reduction)

    # ---- accounting -------------------------------------------------------------------------

    def num_params(self, embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not embedding:
            n -= self.embed.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight in a matmul, plus the
        attention scores and values, 12 * layers * dim * context (PaLM paper, appendix B)."""
        T = seq_len or self.cfg.max_seq_len
        matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2
                     and not n.startswith("embed"))
        if self.cfg.tie_embeddings:
            matmul += self.lm_head.weight.numel()  # the tied matrix is used as a matmul too
        return 6 * matmul + 12 * self.cfg.n_layers * self.cfg.dim * T


@torch.no_grad()
def use_decode_layout(model: nn.Module) -> nn.Module:
    """Store every linear layer's weight transposed in memory: the same tensor and shape
    [out, in], laid out as [in, out] (column-major). On CPU a decoding step multiplies one row
    x by W.T, and BLAS's matrix-vector kernel reads W 2-3x faster in this layout (x @ W.T at
    vocab 32000 x dim 288: 1.5 ms vs 3.6-4.8 ms, one thread; docs/LOG.md 2026-11-27). A
    256-row prefill was no slower; training still works on such weights (RL samples with the
    engine, then updates the same model), and checkpoints are saved contiguous either way.
    Weights under a parametrization (LoRA) are left as they are. Products of a few rows are
    then split over the threads (`Linear`). Returns the model."""
    done = set()
    for module in model.modules():
        if not isinstance(module, nn.Linear) or "weight" not in module._parameters:
            continue  # a parametrized (LoRA) weight lives elsewhere
        w = module.weight
        if id(w) not in done and w.dim() == 2 and w.device.type == "cpu" and w.stride(0) != 1:
            w.data = w.data.t().contiguous().t()
            done.add(id(w))
        if isinstance(module, Linear):
            module.split_matvec = w.stride(0) == 1  # few-row products over the threads
    return model


class KVCache:
    """Preallocated keys and values for every layer: [B, n_kv_heads, max_len, head_dim] each,
    so decoding appends in place instead of concatenating a growing tensor every token."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype=torch.float32,
                 device="cpu"):
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def update(self, layer: int, k, v):
        T = k.shape[2]
        end = self.length + T
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache full: {end} > {self.k.shape[3]} positions")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int):
        self.length += T
