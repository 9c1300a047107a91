"""The multi-view ViT shared by I2P and L2W: patch embedding, encoder, two-stream decoder, pointmap heads.

Layout conventions (everywhere in this package): views first. Encoder tokens are ``(V, B, S, C)`` with
``S = (H/16)*(W/16)`` tokens in row-major order; pointmaps ``(V, B, H, W, 3)``; confidences ``(V, B, H, W)``.
Stream 1 of the decoder holds the reference views, stream 2 the source views; every view of one stream
cross-attends to every view of the other (max-combined), which covers I2P (one reference) and L2W (many).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slam3r.models.blocks import EncoderBlock, Linear, MultiviewDecoderBlock, Rope, layer_norm, views_per_chunk
from slam3r.models.config import ModelConfig
from slam3r.models.rope import patch_positions, rope_tables


@dataclass
class Pointmaps:
    """Network output per view: ``pts3d`` ``(V, B, H, W, 3)`` (unit-less, scene scale) and ``conf`` ``(V, B, H, W)``
    (>= 1). Views are in the order they were given."""

    pts3d: Tensor
    conf: Tensor


@dataclass
class ViewFeatures:
    """Views of one decoder stream with their first-layer work done, the part of a decoder pass that depends on
    the view alone and so can be computed once per frame and reused by every window it joins.

    For layer-0 inputs ``x0`` ``(V, B, S, D)`` (decoder inputs, plus the point embedding ``pe`` for L2W):
    ``attended`` = this stream's ``blocks[0].self_attend(x0)``; ``k`` / ``v`` ``(V, B, heads, S, d)`` = the other
    stream's ``blocks[0].kv(x0)`` (this stream's views as its memories); ``pe`` ``(V, B, S, D)`` or ``None``,
    added to the input of every later layer.
    """

    attended: Tensor
    k: Tensor
    v: Tensor
    pe: Tensor | None = None

    def __len__(self) -> int:
        return self.attended.shape[0]

    @property
    def kv(self) -> tuple[Tensor, Tensor]:
        """``(k, v)``, as the other stream's first block takes them (``kv=``)."""
        return self.k, self.v

    def select(self, ids: Sequence[int] | slice) -> "ViewFeatures":
        """The views ``ids`` (a list or slice of view indices)."""
        ids = ids if isinstance(ids, slice) else list(ids)
        return ViewFeatures(self.attended[ids], self.k[ids], self.v[ids], None if self.pe is None else self.pe[ids])

    @staticmethod
    def stack(items: Sequence["ViewFeatures"], dim: int = 0) -> "ViewFeatures":
        """Concatenate along views (``dim=0``) or batch (``dim=1``)."""
        pe = None if items[0].pe is None else torch.cat([f.pe for f in items], dim)
        return ViewFeatures(*(torch.cat([getattr(f, n) for f in items], dim) for n in ("attended", "k", "v")), pe)

    def expand(self, batch: int) -> "ViewFeatures":
        """Broadcast batch size 1 to ``batch`` (views shared by every batch element)."""
        def ex(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.expand(t.shape[0], batch, *t.shape[2:])
        return ViewFeatures(ex(self.attended), ex(self.k), ex(self.v), ex(self.pe))


class PatchEmbed(nn.Module):
    """Conv 16x16 / 16 patch embedding: images ``(N, 3, H, W)`` -> tokens ``(N, S, C)``."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LinearPts3d(nn.Module):
    """Per-token linear head to 16x16 pixels of (x, y, z, c), unshuffled to full resolution, computed in fp32."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dim, 4 * patch_size**2)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``tokens`` ``(N, S, C)`` -> pts3d ``(N, H, W, 3)``, conf ``(N, H, W)``."""
        n = tokens.shape[0]
        with torch.autocast(tokens.device.type, enabled=False):
            feat = self.proj(tokens.float()).transpose(1, 2).reshape(n, -1, *grid)
            out = F.pixel_shuffle(feat, self.patch_size).permute(0, 2, 3, 1)
            return decode_depth(out[..., :3]), 1.0 + out[..., 3].exp()


def decode_depth(xyz: Tensor) -> Tensor:
    """'exp' depth mode: keep the direction, map the norm r to expm1(r). ``(..., 3)`` -> ``(..., 3)``."""
    r = xyz.norm(dim=-1, keepdim=True)
    return xyz / r.clamp(min=1e-8) * torch.expm1(r)


class MultiViewTransformer(nn.Module):
    """Base network. Sub-classes define ``forward``; loading / saving lives in :mod:`slam3r.models.hub`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim)
        if cfg.need_encoder:
            self.enc_blocks = nn.ModuleList(
                EncoderBlock(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth))
        self.enc_norm = layer_norm(cfg.enc_embed_dim)
        self.decoder_embed = Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        dec = (cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio)
        self.mv_dec_blocks1 = nn.ModuleList(MultiviewDecoderBlock(*dec) for _ in range(cfg.dec_depth))
        self.mv_dec_blocks2 = nn.ModuleList(MultiviewDecoderBlock(*dec) for _ in range(cfg.dec_depth))
        self.dec_norm = layer_norm(cfg.dec_embed_dim)
        self.downstream_head1 = LinearPts3d(cfg.dec_embed_dim, cfg.patch_size)
        self.downstream_head2 = LinearPts3d(cfg.dec_embed_dim, cfg.patch_size)
        self._rope_cache: dict[tuple[int, torch.device], Rope] = {}

    # ----------------------------------------------------------------------------------------------- helpers
    def rope(self, head_dim: int, device: torch.device) -> Rope:
        """RoPE tables for the configured token grid, cached per (head_dim, device)."""
        key = (head_dim, device)
        if key not in self._rope_cache:
            pos = patch_positions(*self.cfg.grid, device=device)
            self._rope_cache[key] = rope_tables(pos, head_dim, self.cfg.rope_base)
        return self._rope_cache[key]

    def _check_tokens(self, tokens: Tensor, name: str = "tokens") -> None:
        s = self.cfg.grid[0] * self.cfg.grid[1]
        if tokens.dim() != 4 or tokens.shape[-2:] != (s, self.cfg.enc_embed_dim):
            raise ValueError(f"{name} must be (V, B, {s}, {self.cfg.enc_embed_dim}) encoder tokens, "
                             f"got {tuple(tokens.shape)}")

    # ----------------------------------------------------------------------------------------------- encoder
    def encode(self, images: Tensor) -> Tensor:
        """Encoder tokens WITHOUT ``enc_norm`` (the cacheable per-frame quantity): ``(N, 3, H, W)`` in [-1, 1]
        -> ``(N, S, enc_dim)``. Runs in minibatches of at most ``cfg.enc_minibatch`` frames and
        ``blocks.TOKENS_PER_CHUNK`` tokens."""
        if not self.cfg.need_encoder:
            raise RuntimeError("this network has no encoder (need_encoder=False); encode with the I2P model")
        h, w = self.cfg.img_size
        if images.dim() != 4 or images.shape[1:] != (3, h, w):
            raise ValueError(f"images must be (N, 3, {h}, {w}), got {tuple(images.shape)}")
        rope = self.rope(self.cfg.enc_embed_dim // self.cfg.enc_num_heads, images.device)
        out = []
        tokens_per_frame = self.cfg.grid[0] * self.cfg.grid[1]
        for chunk in images.split(min(self.cfg.enc_minibatch, views_per_chunk(len(images), tokens_per_frame))):
            x = self.patch_embed(chunk).float()  # fp32 residual stream under autocast (models.precision)
            for blk in self.enc_blocks:
                x = blk(x, rope)
            out.append(x)
        return torch.cat(out)

    # ----------------------------------------------------------------------------------------------- decoder
    def embed(self, tokens: Tensor) -> Tensor:
        """Cached encoder tokens ``(V, B, S, enc_dim)`` -> decoder inputs ``(V, B, S, dec_dim)`` (own enc_norm)."""
        return self.decoder_embed(self.enc_norm(tokens)).float()  # fp32 residual stream under autocast

    def features(self, x: Tensor, stream: int, pe: Tensor | None = None) -> ViewFeatures:
        """First-layer work of views ``x`` ``(V, B, S, D)`` (decoder inputs) in decoder ``stream`` 1 or 2, with the
        point embedding ``pe`` (same shape) if any; see :class:`ViewFeatures`."""
        rope = self.rope(self.cfg.dec_embed_dim // self.cfg.dec_num_heads, x.device)
        own, other = (self.mv_dec_blocks1, self.mv_dec_blocks2) if stream == 1 else \
            (self.mv_dec_blocks2, self.mv_dec_blocks1)
        x0 = x if pe is None else x + pe
        return ViewFeatures(own[0].self_attend(x0, rope), *other[0].kv(x0, rope), pe)

    def decode(self, x1: Tensor, x2: Tensor, pe1: Tensor | None = None, pe2: Tensor | None = None, *,
               need: tuple[bool, bool] = (True, True)) -> tuple[Tensor | None, Tensor | None]:
        """Run both decoder streams to the end; returns ``dec_norm``-ed final features of each stream.

        ``x1`` ``(V1, B, S, D)`` reference views, ``x2`` ``(V2, B, S, D)`` source views; ``pe1`` / ``pe2`` (same
        shapes) are added to the input of every layer (L2W point embedding). A stream whose output is not
        ``need``-ed skips its last layer (nothing reads it) and returns ``None``.
        """
        return self.decode_features(self.features(x1, 1, pe1), self.features(x2, 2, pe2), need=need)

    def decode_features(self, f1: ViewFeatures, f2: ViewFeatures, *,
                        need: tuple[bool, bool] = (True, True)) -> tuple[Tensor | None, Tensor | None]:
        """:meth:`decode` from both streams' :class:`ViewFeatures` (batch sizes equal, or 1 for views shared by
        every batch element)."""
        b = max(f1.attended.shape[1], f2.attended.shape[1])
        f1, f2 = f1.expand(b), f2.expand(b)
        rope = self.rope(self.cfg.dec_embed_dim // self.cfg.dec_num_heads, f1.attended.device)
        last = len(self.mv_dec_blocks1) - 1
        x1 = x2 = None
        for i, (blk1, blk2) in enumerate(zip(self.mv_dec_blocks1, self.mv_dec_blocks2)):
            if i == 0:
                y1 = blk1(f1.attended, None, rope, kv=f2.kv, attended=True) if last or need[0] else None
                y2 = blk2(f2.attended, None, rope, kv=f1.kv, attended=True) if last or need[1] else None
            else:
                x1 = x1 if f1.pe is None else x1 + f1.pe
                x2 = x2 if f2.pe is None else x2 + f2.pe
                y1 = blk1(x1, x2, rope) if i < last or need[0] else None
                y2 = blk2(x2, x1, rope) if i < last or need[1] else None
            x1, x2 = y1, y2
        return (self.dec_norm(x1) if need[0] else None), (self.dec_norm(x2) if need[1] else None)

    def heads(self, feat: Tensor, head: int) -> tuple[Tensor, Tensor]:
        """Final features ``(V, B, S, D)`` -> pts3d ``(V, B, H, W, 3)``, conf ``(V, B, H, W)``."""
        v, b = feat.shape[:2]
        module = self.downstream_head1 if head == 1 else self.downstream_head2
        pts, conf = module(feat.reshape(v * b, *feat.shape[2:]), self.cfg.grid)
        return pts.view(v, b, *pts.shape[1:]), conf.view(v, b, *conf.shape[1:])

    @staticmethod
    def merge_views(n: int, ref_ids: Sequence[int], ref: tuple[Tensor, Tensor],
                    src: tuple[Tensor, Tensor]) -> Pointmaps:
        """Put the two decoder streams' head outputs back into the caller's view order.

        Args:
            n: number of views ``V`` given to the network.
            ref_ids: the view indices that went to stream 1 (reference / scene views), in stream order.
            ref: stream 1's :meth:`heads` output, pts3d ``(len(ref_ids), B, H, W, 3)`` and conf ``(len(ref_ids), B,
                H, W)``.
            src: stream 2's, the other ``n - len(ref_ids)`` views in increasing index order.
        Returns:
            ``Pointmaps`` of all ``n`` views, view ``i`` at index ``i``.
        """
        refs = set(ref_ids)
        src_ids = [i for i in range(n) if i not in refs]
        order = torch.empty(n, dtype=torch.long)
        order[list(ref_ids) + src_ids] = torch.arange(n)
        pts = torch.cat([ref[0], src[0]])[order.to(ref[0].device)]
        conf = torch.cat([ref[1], src[1]])[order.to(ref[1].device)]
        return Pointmaps(pts, conf)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs: Any) -> "MultiViewTransformer":
        """Load ``config.json`` + ``model.safetensors`` from a local directory or a HuggingFace hub repo id."""
        from slam3r.models.hub import load_pretrained
        return load_pretrained(cls, source, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (readable by :meth:`from_pretrained` and the reference)."""
        from slam3r.models.hub import save_pretrained
        return save_pretrained(self, directory)
