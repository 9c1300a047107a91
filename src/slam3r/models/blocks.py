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


# Most tokens one chunk of per-token work (linear layers, GELU, residuals) handles at once. Bigger chunks buy no
# matmul speed on a CPU, and tensors above 32 MB are mmap-ed afresh by glibc on every allocation: the page faults
# then cost more than the arithmetic (bench/bench_networks.py).
TOKENS_PER_CHUNK = 1536


def views_per_chunk(views: int, tokens_per_view: int) -> int:
    """Views per chunk so that ``views`` split into equal chunks of at most ``TOKENS_PER_CHUNK`` tokens (>= 1)."""
    chunks = -(-views * tokens_per_view // TOKENS_PER_CHUNK)
    return max(1, -(-views // max(1, chunks)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(qkv[:2], *rope).unbind(0)  # queries and keys rotated in one go
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, qkv[2])))


class CrossAttention(nn.Module):
    """Queries from the views of one decoder stream, keys / values from the views of the other (its *memories*),
    RoPE with each side's own positions; the output is the max over memories.

    :meth:`kv` depends on the memories alone, so a caller may compute it once per frame (``ViewFeatures``) and
    hand it to :meth:`attend` for every window the frame joins. Inputs are already layer-normed by the block.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def kv(self, y: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """Keys (RoPE-rotated) and values of memories ``y`` ``(M, B, N, C)``: two ``(M, B, heads, N, d)``."""
        m, b, n, c = y.shape
        h, d = self.num_heads, c // self.num_heads
        flat = y.reshape(m * b, n, c)
        k = apply_rope(split_heads(self.projk(flat), h), *rope)
        return k.view(m, b, h, n, d), split_heads(self.projv(flat), h).view(m, b, h, n, d)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, rope: Rope) -> Tensor:
        """Views ``x`` ``(V, B, N, C)`` against the memories' :meth:`kv` ``(M, B, heads, N_y, d)``:
        ``max_m proj(attn(projq x, k_m, v_m))``, ``(V, B, N, C)``.

        The attention of every view to one memory is a single attention call over the views' concatenated
        queries (softmax is per query, so this is exact); memories are taken a chunk at a time (chunk x V x B x N
        at most ``TOKENS_PER_CHUNK``, at least one memory) and max-combined.
        """
        nv, b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        q = apply_rope(split_heads(self.projq(x.reshape(nv * b, n, c)), h), *rope)  # (V*B, h, N, d)
        q = q.view(nv, b, h, n, d).permute(1, 2, 0, 3, 4).reshape(1, b, h, nv * n, d)
        out = None
        for kc, vc in zip(*(t.split(views_per_chunk(k.shape[0], b * nv * n)) for t in (k, v))):
            mc = kc.shape[0]
            att = F.scaled_dot_product_attention(q.expand(mc, -1, -1, -1, -1).reshape(mc * b, h, nv * n, d),
                                                 kc.reshape(mc * b, h, -1, d), vc.reshape(mc * b, h, -1, d))
            chunk = self.proj(merge_heads(att)).view(mc, b, nv, n, c).amax(dim=0)
            out = chunk if out is None else torch.maximum(out, chunk)
        return out.transpose(0, 1)


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
    ``x += selfattn(norm1 x)``; ``x += crossattn(norm2 x, norm_y y)`` (:class:`CrossAttention`, max over ``m``);
    ``x += mlp(norm3 x)``. Views and memories are processed in chunks of at most ``TOKENS_PER_CHUNK`` tokens.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = layer_norm(dim)

    def kv(self, y: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """The cross-attention's :meth:`CrossAttention.kv` of memories ``y`` ``(M, B, N, C)`` (``norm_y``-ed here,
        in chunks): two ``(M, B, heads, N, d)`` tensors. They depend only on ``y``, so a caller may compute them once
        per frame and pass them to :meth:`forward`."""
        m, b, n, _ = y.shape
        k, val = zip(*(self.cross_attn.kv(self.norm_y(yc), rope) for yc in y.split(views_per_chunk(m, b * n))))
        return torch.cat(k), torch.cat(val)

    def self_attend(self, x: Tensor, rope: Rope) -> Tensor:
        """The self-attention step ``x + selfattn(norm1 x)`` of views ``x`` ``(V, B, N, C)`` alone (cacheable per
        view: it does not read the other stream)."""
        v, b, n, c = x.shape
        out = []
        for xc in x.split(views_per_chunk(v, b * n)):
            flat = xc.reshape(-1, n, c)
            out.append((flat + self.attn(self.norm1(flat), rope)).view(xc.shape))
        return torch.cat(out)

    def forward(self, x: Tensor, y: Tensor | None, rope: Rope, *, kv: tuple[Tensor, Tensor] | None = None,
                attended: bool = False) -> Tensor:
        """One layer for views ``x`` against memories ``y``. ``kv``: precomputed :meth:`kv` of ``y`` (then ``y`` is
        not read); ``attended``: ``x`` is already :meth:`self_attend`-ed."""
        v, b, n, c = x.shape
        k, val = kv if kv is not None else self.kv(y, rope)
        return torch.cat([self._update(xc, k, val, rope, attended) for xc in x.split(views_per_chunk(v, b * n))])

    def _update(self, x: Tensor, k: Tensor, val: Tensor, rope: Rope, attended: bool = False) -> Tensor:
        """One chunk of views ``(v, B, N, C)`` against all memories' keys / values ``(M, B, heads, N_y, d)``."""
        v, b, n, c = x.shape
        flat = x.reshape(v * b, n, c)
        if not attended:
            flat = flat + self.attn(self.norm1(flat), rope)
        cross = self.cross_attn.attend(self.norm2(flat).view(v, b, n, c), k, val, rope)
        flat = flat + cross.reshape(v * b, n, c)
        flat = flat + self.mlp(self.norm3(flat))
        return flat.view(v, b, n, c)
