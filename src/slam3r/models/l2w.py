"""L2W (Local-to-World): register keyframes' camera-frame pointmaps into the world frame of scene frames."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from slam3r.models.base import MultiViewTransformer, Pointmaps, ViewFeatures
from slam3r.models.config import ModelConfig


class Local2WorldModel(MultiViewTransformer):
    """L2W network: no encoder blocks (it reads I2P's cached tokens), a point embedder added at every layer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        p, d = cfg.patch_size, cfg.dec_embed_dim
        self.ponit_embedder = nn.Conv2d(3, d, p, stride=p)  # (sic) the released checkpoints' key name
        self.void_pe_token = nn.Parameter(torch.zeros(1, 1, d))  # for masked patches; unused by the pipelines

    def embed_points(self, pts3d: Tensor) -> Tensor:
        """Pointmaps ``(V, B, H, W, 3)`` -> point tokens ``(V, B, S, dec_dim)``, fp32 even under autocast: the
        coordinates are the geometry L2W registers (bf16 would round them to 0.4%), and this conv is cheap."""
        v, b, h, w, _ = pts3d.shape
        with torch.autocast(pts3d.device.type, enabled=False):
            x = self.ponit_embedder(pts3d.float().reshape(v * b, h, w, 3).permute(0, 3, 1, 2))
        return x.flatten(2).transpose(1, 2).view(v, b, -1, self.cfg.dec_embed_dim)

    def forward(self, tokens: Tensor, pts3d: Tensor, ref_ids: Sequence[int], *, sources_only: bool = False) -> Pointmaps:
        """Co-register views.

        Args:
            tokens: ``(V, B, S, enc_dim)`` cached encoder tokens (before ``enc_norm``).
            pts3d: ``(V, B, H, W, 3)``: world-frame pointmaps for the reference (scene) views, camera-frame
                pointmaps for the source views (keyframes to register).
            ref_ids: indices of the reference (scene) views.
            sources_only: return only the source views (in input order); skips work nobody reads.
        Returns:
            ``Pointmaps`` in input order: refined world points of the scene frames, world points of the keyframes.
        """
        self._check_tokens(tokens)
        v = tokens.shape[0]
        h, w = self.cfg.img_size
        if pts3d.shape != (v, tokens.shape[1], h, w, 3):
            raise ValueError(f"pts3d must be {(v, tokens.shape[1], h, w, 3)}, got {tuple(pts3d.shape)}")
        ref_ids = list(ref_ids)
        if not ref_ids or len(set(ref_ids)) != len(ref_ids) or not all(0 <= r < v for r in ref_ids) \
                or len(ref_ids) == v:
            raise ValueError(f"ref_ids {ref_ids} must be distinct view indices leaving at least one source "
                             f"among {v} views")
        refs = set(ref_ids)
        src_ids = [i for i in range(v) if i not in refs]
        x, pe = self.embed(tokens), self.embed_points(pts3d)
        f1, f2 = self.decode_features(self.features(x[ref_ids], 1, pe[ref_ids]), self.features(x[src_ids], 2, pe[src_ids]),
                                      need=(not sources_only, True))
        if f1 is None:
            return Pointmaps(*self.heads(f2, 2))
        return self.merge_views(v, ref_ids, self.heads(f1, 1), self.heads(f2, 2))

    def view_features(self, tokens: Tensor, pts3d: Tensor, role: str) -> ViewFeatures:
        """Per-frame cacheable work of views ``tokens`` ``(V, B, S, enc_dim)`` with pointmaps ``pts3d``
        ``(V, B, H, W, 3)`` in ``role`` ``"scene"`` (decoder stream 1, world points) or ``"src"`` (stream 2,
        keyframes' camera-frame points). A scene frame's features stay valid while its world points do."""
        self._check_tokens(tokens)
        h, w = self.cfg.img_size
        if pts3d.shape != (*tokens.shape[:2], h, w, 3):
            raise ValueError(f"pts3d must be {(*tokens.shape[:2], h, w, 3)}, got {tuple(pts3d.shape)}")
        if role not in ("scene", "src"):
            raise ValueError(f"role must be 'scene' or 'src', got {role!r}")
        return self.features(self.embed(tokens), 1 if role == "scene" else 2, self.embed_points(pts3d))

    def register(self, scene: ViewFeatures, src: ViewFeatures) -> Pointmaps:
        """World pointmaps of the source views only (``forward(..., sources_only=True)``) from cached
        :meth:`view_features`: ``scene`` (R, B) or (R, 1), ``src`` (V, B)."""
        _, f2 = self.decode_features(scene, src, need=(False, True))
        return Pointmaps(*self.heads(f2, 2))
