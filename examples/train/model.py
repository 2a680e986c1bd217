"""A small GPT (nanoGPT style) over bytes whose attention is power retention or softmax attention.

Pre-LN blocks, a 4x GELU MLP, rotary embeddings on Q and K, tied input/output embeddings.
`attn="retention"` calls prt.power_retention (deg 2, gated, chunk 128); `attn="sdpa"` calls
torch.nn.functional.scaled_dot_product_attention(is_causal=True). Everything else is identical,
so the two differ only in the attention.

Shapes: b batch, t time, c = n_embd, h heads, d = head_dim = 64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 256  # bytes
    n_layer: int = 10
    n_head: int = 8
    n_embd: int = 512  # n_head * 64: the kernels are built for head dims 32, 64, 128
    attn: str = "retention"  # or "sdpa"
    deg: int = 2
    chunk_size: int = 128
    rope_base: float = 10000.0
    # the gate starts near 1 (sigmoid(6.9) ~ 0.999, a slow decay), as the retention package's models do,
    # so early training sees long context rather than the 1/2-per-token decay of a zero-initialised gate
    gate_bias_init: float = 6.9

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def rotary(x: torch.Tensor, pos0: int, base: float, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Rotary position embedding of x [b, t, h, d] at positions pos0 .. pos0 + t - 1 (or at
    `positions` [b, t], e.g. counted from each packed document's start), in float32.
    Pairs (x_i, x_{i + d/2}) are rotated by angle pos * base^(-2i/d); q.k then depends on the
    positions only through their difference, which is what makes a decode step match the forward."""
    b, t, h, d = x.shape
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # [d/2]
    if positions is None:
        positions = torch.arange(pos0, pos0 + t, device=x.device)[None]  # [1, t]
    ang = positions.float()[..., None] * inv_freq  # [b or 1, t, d/2]
    cos, sin = ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]  # [b or 1, t, 1, d/2]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.attn not in ("retention", "sdpa"):
            raise ValueError(f"attn: expected 'retention' or 'sdpa', received {cfg.attn!r}")
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        if cfg.attn == "retention":
            # one gate per head and token: log_G = logsigmoid(x W_g + b_g) <= 0, the log of the
            # per-token decay of the state
            self.gate = nn.Linear(cfg.n_embd, cfg.n_head, bias=True)

    def forward(self, x: torch.Tensor, pos0: int = 0, cache=None, docs=None) -> torch.Tensor:
        """x [b, t, c] -> [b, t, c]. cache: None (training: the whole sequence at once) or a per-layer
        object of generate.py, called as cache(q, k, v, log_g) with the new tokens only. docs: None,
        or (cu_seqlens or None, positions [b, t]) for documents kept apart (data.py get_docs):
        packed sequences of power_retention's cu_seqlens, rotary positions from each one's start."""
        cfg = self.cfg
        b, t, c = x.shape
        cu, positions = docs if docs is not None else (None, None)
        if cu is not None and cfg.attn != "retention":
            raise ValueError("docs: packed documents (cu_seqlens) need attn='retention'; use padded rows with sdpa")
        q, k, v = self.qkv(x).view(b, t, 3, cfg.n_head, cfg.head_dim).unbind(2)  # each [b, t, h, d]
        io_dtype = v.dtype  # the projections' dtype: bf16 under autocast, else the weights'
        q, k = rotary(q, pos0, cfg.rope_base, positions), rotary(k, pos0, cfg.rope_base, positions)  # float32 now
        log_g = None
        if cfg.attn == "retention":
            # in float32, autocast off: the kernels read float32 gates, and a gate near 1 (bias 6.9)
            # would lose most of its resolution in bf16 (spacing 1/32 there)
            with torch.autocast(x.device.type, enabled=False):
                log_g = F.logsigmoid(self.gate(x.float()))  # [b, t, h]
            # power_retention wants Q, K, V of one dtype: bf16 (rotary made q, k float32)
            q, k, v = q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)
        else:
            q, k = q.to(v.dtype), k.to(v.dtype)  # v's dtype: bf16 under autocast
        if cache is not None:
            y = cache(q, k, v, log_g)
        elif cfg.attn == "retention":
            from prt import power_retention

            y = power_retention(q, k, v, log_G=log_g, deg=cfg.deg, chunk_size=cfg.chunk_size, cu_seqlens=cu)  # [b, t, h, d]
        else:
            # SDPA takes [b, h, t, d]
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            y = y.transpose(1, 2)
        return self.proj(y.reshape(b, t, c).to(io_dtype))  # a no-op under autocast


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.fc_out = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, pos0=0, cache=None, docs=None):
        x = x + self.attn(self.ln1(x), pos0, cache, docs)
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd: expected a multiple of n_head = {cfg.n_head}, received {cfg.n_embd}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied: bytes in and out share one table
        self.apply(self._init)
        for name, p in self.named_parameters():
            # GPT-2's scaled init of the projections that write into the residual stream
            if name.endswith("proj.weight") or name.endswith("fc_out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        for blk in self.blocks:
            if cfg.attn == "retention":
                nn.init.constant_(blk.attn.gate.bias, cfg.gate_bias_init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied table counted once

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, pos0: int = 0, caches=None, docs=None):
        """idx [b, t] bytes (int64) at positions pos0.. -> logits [b, t, 256] float32, and the mean
        cross-entropy against targets [b, t] when given (-1: no target, a padded row's tail).
        caches: one per block (generate.py); docs: documents kept apart (Attention.forward)."""
        x = self.wte(idx)
        for i, blk in enumerate(self.blocks):
            x = blk(x, pos0, None if caches is None else caches[i], docs)
        logits = self.head(self.ln_f(x)).float()
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
