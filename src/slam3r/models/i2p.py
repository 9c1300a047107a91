"""I2P (Image-to-Points): a window of frames -> the keyframe's pointmap in its own camera frame, plus the
retrieval scorer that rates buffered frames as scene frames for a new keyframe."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slam3r.models.base import MultiViewTransformer, Pointmaps, ViewFeatures
from slam3r.models.blocks import Mlp
from slam3r.models.config import ModelConfig


class Image2PointsModel(MultiViewTransformer):
    """Multi-view I2P network with the correlation-score (retrieval) head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.corr_score_norm = nn.LayerNorm(cfg.dec_embed_dim)  # eps 1e-5, as in the release
        self.corr_score_proj = Mlp(cfg.dec_embed_dim, cfg.dec_embed_dim, 1)

    def forward(self, tokens: Tensor, ref_id: int = 0, *, ref_only: bool = False) -> Pointmaps:
        """Reconstruct a window.

        Args:
            tokens: ``(V, B, S, enc_dim)`` cached encoder tokens (before ``enc_norm``) of the window's views.
            ref_id: which view is the reference (keyframe); its camera frame is the output frame.
            ref_only: compute only the reference view's head (what the pipeline needs); the output then holds
                one view.
        Returns:
            ``Pointmaps``; the reference view's points are in its own camera frame, the others' in the reference
            frame. Views keep the input order (or just the reference when ``ref_only``).
        """
        self._check_tokens(tokens)
        v = tokens.shape[0]
        if not 0 <= ref_id < v:
            raise ValueError(f"ref_id {ref_id} outside the window of {v} views")
        if v < 2:
            raise ValueError("an I2P window needs at least 2 views")
        x = self.embed(tokens)
        src = torch.cat([x[:ref_id], x[ref_id + 1:]])
        out = self.forward_features(self.features(x[ref_id:ref_id + 1], 1), self.features(src, 2), ref_only=ref_only)
        return out if ref_only else self.merge_views(v, [ref_id], *out)

    def view_features(self, tokens: Tensor, role: str) -> ViewFeatures:
        """Per-frame cacheable work of encoder tokens ``(V, B, S, enc_dim)`` in ``role`` ``"ref"`` (decoder stream
        1: a window's keyframe, a retrieval query) or ``"src"`` (stream 2: the other views of a window, retrieval
        candidates); see :class:`~slam3r.models.base.ViewFeatures`."""
        self._check_tokens(tokens)
        if role not in ("ref", "src"):
            raise ValueError(f"role must be 'ref' or 'src', got {role!r}")
        return self.features(self.embed(tokens), 1 if role == "ref" else 2)

    def forward_features(self, ref: ViewFeatures, src: ViewFeatures, *, ref_only: bool = False):
        """A window from cached :meth:`view_features`: ``ref`` (1, B) in role ``ref``, ``src`` (V-1, B) in role
        ``src``. Returns the reference's ``Pointmaps`` when ``ref_only``, else the (ref, src) head outputs
        (:meth:`merge_views` with ``ref_ids=[0]`` puts them in window order)."""
        if len(ref) != 1 or len(src) < 1:
            raise ValueError(f"an I2P window needs 1 reference and at least 1 source view, got {len(ref)} and "
                             f"{len(src)}")
        f1, f2 = self.decode_features(ref, src, need=(True, not ref_only))
        if ref_only:
            return Pointmaps(*self.heads(f1, 1))
        return self.heads(f1, 1), self.heads(f2, 2)

    def corr_logits(self, ref_tokens: Tensor, cand_tokens: Tensor, depth: int | None = None) -> Tensor:
        """Raw per-token retrieval logits ``(M, B, S)`` of ``M`` candidates for ``B`` reference frames.

        Args:
            ref_tokens: ``(B, S, enc_dim)`` tokens of the frames to register.
            cand_tokens: ``(M, S, enc_dim)`` (shared by the batch) or ``(M, B, S, enc_dim)`` candidate tokens.
            depth: decoder layers to run (default ``cfg.corr_depth``, what the head was trained with).
        Only the first ``depth`` decoder layers run: the reference stream for ``depth - 1`` layers, the candidate
        stream for ``depth`` (each layer reading the other stream's previous output).
        """
        if cand_tokens.dim() == 3:  # shared by the batch: their features are computed once
            cand_tokens = cand_tokens.unsqueeze(1)
        self._check_tokens(ref_tokens.unsqueeze(0), "ref_tokens")
        self._check_tokens(cand_tokens, "cand_tokens")
        if cand_tokens.shape[1] not in (1, ref_tokens.shape[0]):
            raise ValueError(f"cand_tokens batch {cand_tokens.shape[1]} does not match {ref_tokens.shape[0]} "
                             "reference frames")
        return self.corr_logits_features(self.view_features(ref_tokens.unsqueeze(0), "ref"),
                                         self.view_features(cand_tokens, "src"), depth)

    def corr_logits_features(self, ref: ViewFeatures, cand: ViewFeatures, depth: int | None = None) -> Tensor:
        """:meth:`corr_logits` from cached :meth:`view_features`: ``ref`` (1, B) in role ``ref``, ``cand`` (M, B)
        or (M, 1) in role ``src``."""
        depth = self.cfg.corr_depth if depth is None else depth
        if not 1 <= depth <= self.cfg.dec_depth:
            raise ValueError(f"retrieval depth {depth} must be in [1, {self.cfg.dec_depth}]")
        b = max(ref.attended.shape[1], cand.attended.shape[1])
        ref, cand = ref.expand(b), cand.expand(b)
        rope = self.rope(self.cfg.dec_embed_dim // self.cfg.dec_num_heads, ref.attended.device)
        x2 = self.mv_dec_blocks2[0](cand.attended, None, rope, kv=ref.kv, attended=True)
        if depth > 1:
            x1 = self.mv_dec_blocks1[0](ref.attended, None, rope, kv=cand.kv, attended=True)
        for i in range(1, depth):
            new_x2 = self.mv_dec_blocks2[i](x2, x1, rope)
            if i + 1 < depth:
                x1 = self.mv_dec_blocks1[i](x1, x2, rope)
            x2 = new_x2
        return self.corr_score_proj(self.corr_score_norm(x2))[..., 0]

    def corr_scores(self, ref_tokens: Tensor, cand_tokens: Tensor, depth: int | None = None) -> Tensor:
        """Retrieval confidences ``1 + exp(logit)``, ``(M, B, S)`` (see :meth:`corr_logits`)."""
        return 1.0 + self.corr_logits(ref_tokens, cand_tokens, depth).exp()
