"""The naive reference path, for side-by-side speed measurements: the same weights run the way the reference
implementation runs them on a CPU without xformers / curope — explicit softmax attention, one view at a time in
Python loops (cross-attention projections recomputed for every view pair), every head computed, fp32, and each
window / query re-batched on its own (B = 1). It plugs into the same engine as the fast networks, so the pipelines
differ only in how the networks compute."""

from __future__ import annotations

import torch
from torch import Tensor

from slam3r.models import Image2PointsModel, Local2WorldModel, Pointmaps
from slam3r.models.base import MultiViewTransformer
from slam3r.models.blocks import merge_heads, split_heads
from slam3r.models.rope import apply_rope


def _attn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Explicit attention over (B, heads, N, d)."""
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v


def self_attention(mod, x: Tensor, rope) -> Tensor:
    q, k, v = mod.qkv(x).chunk(3, dim=-1)
    q, k, v = (split_heads(t, mod.num_heads) for t in (q, k, v))
    return mod.proj(merge_heads(_attn(apply_rope(q, *rope), apply_rope(k, *rope), v)))


def cross_attention(mod, x: Tensor, y: Tensor, rope) -> Tensor:
    h = mod.num_heads
    q, k, v = split_heads(mod.projq(x), h), split_heads(mod.projk(y), h), split_heads(mod.projv(y), h)
    return mod.proj(merge_heads(_attn(apply_rope(q, *rope), apply_rope(k, *rope), v)))


def decoder_block(blk, x: Tensor, ys: list[Tensor], rope) -> Tensor:
    """One view through one decoder layer; each memory view gets its own full cross-attention."""
    x = x + self_attention(blk.attn, blk.norm1(x), rope)
    outs = [cross_attention(blk.cross_attn, blk.norm2(x), blk.norm_y(y), rope) for y in ys]
    x = x + torch.stack(outs).max(dim=0).values
    return x + blk.mlp(blk.norm3(x))


def decode(model: MultiViewTransformer, xs1: list[Tensor], xs2: list[Tensor], pe1=None, pe2=None,
           layers: int | None = None, update1: int | None = None) -> tuple[list[Tensor], list[Tensor]]:
    rope = model.rope(model.cfg.dec_embed_dim // model.cfg.dec_num_heads, xs1[0].device)
    layers = layers or model.cfg.dec_depth
    for i in range(layers):
        if pe1 is not None:
            xs1 = [x + p for x, p in zip(xs1, pe1)]
            xs2 = [x + p for x, p in zip(xs2, pe2)]
        new1 = [decoder_block(model.mv_dec_blocks1[i], x, xs2, rope) for x in xs1] \
            if update1 is None or i < update1 else xs1
        new2 = [decoder_block(model.mv_dec_blocks2[i], x, xs1, rope) for x in xs2]
        xs1, xs2 = new1, new2
    return xs1, xs2


class NaiveI2P:
    """Reference-style execution of an :class:`Image2PointsModel`'s weights."""

    def __init__(self, model: Image2PointsModel) -> None:
        self.m, self.cfg = model, model.cfg

    def encode(self, images: Tensor) -> Tensor:
        m = self.m
        rope = m.rope(m.cfg.enc_embed_dim // m.cfg.enc_num_heads, images.device)
        out = []
        for chunk in images.split(10):  # the reference's view_batchsize
            x = m.patch_embed(chunk)
            for blk in m.enc_blocks:
                x = x + self_attention(blk.attn, blk.norm1(x), rope)
                x = x + blk.mlp(blk.norm2(x))
            out.append(x)
        return torch.cat(out)

    def __call__(self, tokens: Tensor, ref_id: int = 0, *, ref_only: bool = False) -> Pointmaps:
        m = self.m
        pts, confs = [], []
        for b in range(tokens.shape[1]):  # one window at a time
            xs = [m.decoder_embed(m.enc_norm(tokens[v, b:b + 1])) for v in range(tokens.shape[0])]
            x1, x2 = decode(m, [xs[ref_id]], xs[:ref_id] + xs[ref_id + 1:])
            heads = [m.downstream_head1(m.dec_norm(x1[0]), m.cfg.grid)]
            heads += [m.downstream_head2(m.dec_norm(x), m.cfg.grid) for x in x2]
            order = list(range(1, ref_id + 1)) + [0] + list(range(ref_id + 1, len(heads)))
            pts.append(torch.cat([heads[i][0] for i in order]))
            confs.append(torch.cat([heads[i][1] for i in order]))
        out = Pointmaps(torch.stack(pts, dim=1), torch.stack(confs, dim=1))
        if ref_only:
            return Pointmaps(out.pts3d[ref_id:ref_id + 1], out.conf[ref_id:ref_id + 1])
        return out

    def corr_scores(self, ref: Tensor, cand: Tensor, depth: int | None = None) -> Tensor:
        m = self.m
        depth = depth or m.cfg.corr_depth
        x1 = [m.decoder_embed(m.enc_norm(ref))]
        x2 = [m.decoder_embed(m.enc_norm(c.expand(ref.shape[0], -1, -1))) for c in cand]
        _, x2 = decode(m, x1, x2, layers=depth, update1=depth - 1)
        return torch.stack([1 + m.corr_score_proj(m.corr_score_norm(x))[..., 0].exp() for x in x2])


class NaiveL2W:
    """Reference-style execution of a :class:`Local2WorldModel`'s weights."""

    def __init__(self, model: Local2WorldModel) -> None:
        self.m, self.cfg = model, model.cfg

    def __call__(self, tokens: Tensor, pts3d: Tensor, ref_ids, *, sources_only: bool = False) -> Pointmaps:
        m = self.m
        ref_ids = list(ref_ids)
        src_ids = [i for i in range(tokens.shape[0]) if i not in ref_ids]
        pts, confs = [], []
        for b in range(tokens.shape[1]):
            xs = [m.decoder_embed(m.enc_norm(tokens[v, b:b + 1])) for v in range(tokens.shape[0])]
            pe = [m.embed_points(pts3d[v:v + 1, b:b + 1])[0] for v in range(tokens.shape[0])]
            x1, x2 = decode(m, [xs[i] for i in ref_ids], [xs[i] for i in src_ids],
                            [pe[i] for i in ref_ids], [pe[i] for i in src_ids])
            res = {i: m.downstream_head1(m.dec_norm(x), m.cfg.grid) for i, x in zip(ref_ids, x1)}
            res.update({i: m.downstream_head2(m.dec_norm(x), m.cfg.grid) for i, x in zip(src_ids, x2)})
            keep = src_ids if sources_only else range(tokens.shape[0])
            pts.append(torch.cat([res[i][0] for i in keep]))
            confs.append(torch.cat([res[i][1] for i in keep]))
        return Pointmaps(torch.stack(pts, dim=1), torch.stack(confs, dim=1))
