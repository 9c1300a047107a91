"""2-D rotary position embedding (RoPE2D) as used by CroCo / DUSt3R / SLAM3R.

Each attention head of dimension ``d`` is split into a y-half and an x-half; each half gets 1-D RoPE with the
"rotate half" pairing (not interleaved) and inverse frequencies ``base ** (-2k / (d/2))``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def patch_positions(rows: int, cols: int, device: torch.device | str | None = None) -> Tensor:
    """Integer (row y, column x) of every token in row-major order: ``(rows * cols, 2)`` int64."""
    ys = torch.arange(rows, device=device)
    xs = torch.arange(cols, device=device)
    return torch.cartesian_prod(ys, xs)


def rope_tables(pos: Tensor, head_dim: int, base: float = 100.0) -> tuple[Tensor, Tensor]:
    """Cosine / signed sine tables for positions ``pos`` ``(..., N, 2)``: each ``(..., N, head_dim)`` float32.

    Channels ``[:head_dim/2]`` rotate with y, ``[head_dim/2:]`` with x; computed once per forward and shared by
    every attention layer of the same head size. The sine of each half's first quarter is negated: that is the
    sign of "rotate half", so :func:`apply_rope` only swaps quarters.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=pos.device, dtype=torch.float32) / half))
    ang = [pos[..., i, None].float() * inv_freq for i in (0, 1)]  # 2 x (..., N, half/2)
    ang = torch.cat([ang[0], ang[0], ang[1], ang[1]], dim=-1)  # (..., N, head_dim)
    sign = torch.ones(head_dim, device=pos.device).view(2, 2, -1)
    sign[:, 0] = -1.0
    return ang.cos(), ang.sin() * sign.view(head_dim)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``(..., B, heads, N, d)`` with :func:`rope_tables` ``(N, d)`` (or broadcastable ``(B, 1, N, d)``):
    ``x * cos + rotate_half(x) * sin`` within each half, where rotate_half ``[a, b] -> [-b, a]``; the minus sign
    is in the table, so this is ``x * cos + [b, a] * sin`` (three kernels; exact: negation does not round). The
    tables are used in ``x``'s dtype (under autocast, bf16 / fp16 like the queries and keys)."""
    d = x.shape[-1]
    swapped = x.unflatten(-1, (2, 2, d // 4)).flip(-2).flatten(-3)  # [a, b | c, e] -> [b, a | e, c]
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.addcmul(x * cos, swapped, sin)
