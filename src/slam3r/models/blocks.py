"""Transformer building blocks: ViT encoder block and the two-stream multi-view decoder block.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the device has them). Token tensors are ``(B, N, C)``; RoPE tables are ``(N, head_dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slam3r.models.rope import apply_rope

Rope = tuple[Tensor, Tensor]


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Queries from one view, keys/values from another; RoPE with each side's own positions."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: ``x += attn(norm1 x)``; ``x += mlp(norm2 x)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class MultiviewDecoderBlock(nn.Module):
    """One layer of one decoder stream, attending to every view of the other stream and max-combining.

    For views ``x`` ``(V, B, N, C)`` of this stream and memories ``y`` ``(M, B, N, C)`` of the other:
    ``x += selfattn(norm1 x)``; ``x += max_m proj(attn(projq norm2 x, projk/projv norm_y y_m))``;
    ``x += mlp(norm3 x)``. All V*M cross-attentions run as one batched SDPA call.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = layer_norm(dim)

    def forward(self, x: Tensor, y: Tensor, rope: Rope) -> Tensor:
        v, b, n, c = x.shape
        m = y.shape[0]
        h, d = self.num_heads, c // self.num_heads
        flat = x.reshape(v * b, n, c)
        flat = flat + self.attn(self.norm1(flat), rope)
        ca = self.cross_attn
        q = apply_rope(split_heads(ca.projq(self.norm2(flat)), h), *rope).view(v, 1, b, h, n, d)
        ym = self.norm_y(y.reshape(m * b, -1, c))
        k = apply_rope(split_heads(ca.projk(ym), h), *rope).view(1, m, b, h, -1, d)
        val = split_heads(ca.projv(ym), h).view(1, m, b, h, -1, d)
        q, k, val = q.expand(v, m, -1, -1, -1, -1), k.expand(v, m, -1, -1, -1, -1), val.expand(v, m, -1, -1, -1, -1)
        att = F.scaled_dot_product_attention(q.reshape(v * m * b, h, n, d), k.reshape(v * m * b, h, -1, d),
                                             val.reshape(v * m * b, h, -1, d))
        cross = ca.proj(merge_heads(att)).view(v, m, b, n, c).amax(dim=1)
        flat = flat + cross.reshape(v * b, n, c)
        flat = flat + self.mlp(self.norm3(flat))
        return flat.view(v, b, n, c)
