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
    """Cosine / sine tables for positions ``pos`` ``(..., N, 2)``: each ``(..., N, head_dim)`` float32.

    Channels ``[:head_dim/2]`` rotate with y, ``[head_dim/2:]`` with x; computed once per forward and shared by
    every attention layer of the same head size.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=pos.device, dtype=torch.float32) / half))
    ang = [pos[..., i, None].float() * inv_freq for i in (0, 1)]  # 2 x (..., N, half/2)
    ang = torch.cat([ang[0], ang[0], ang[1], ang[1]], dim=-1)  # (..., N, head_dim)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``(B, heads, N, d)`` with tables ``(N, d)`` (or broadcastable ``(B, 1, N, d)``)."""
    d = x.shape[-1]
    q = d // 4
    # rotate-half inside each of the two halves: [a, b | c, e] -> [-b, a | -e, c]
    a, b, c, e = x.split(q, dim=-1)
    rot = torch.cat([-b, a, -e, c], dim=-1)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)
