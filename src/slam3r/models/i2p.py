"""I2P (Image-to-Points): a window of frames -> the keyframe's pointmap in its own camera frame, plus the
retrieval scorer that rates buffered frames as scene frames for a new keyframe."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slam3r.models.base import MultiViewTransformer, Pointmaps
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
        f1, f2 = self.decode(x[ref_id:ref_id + 1], src, need=(True, not ref_only))
        ref = self.heads(f1, 1)
        if f2 is None:
            return Pointmaps(*ref)
        return self._merge_views(v, [ref_id], ref, self.heads(f2, 2))

    def corr_logits(self, ref_tokens: Tensor, cand_tokens: Tensor, depth: int | None = None) -> Tensor:
        """Raw per-token retrieval logits ``(M, B, S)`` of ``M`` candidates for ``B`` reference frames.

        Args:
            ref_tokens: ``(B, S, enc_dim)`` tokens of the frames to register.
            cand_tokens: ``(M, S, enc_dim)`` (shared by the batch) or ``(M, B, S, enc_dim)`` candidate tokens.
            depth: decoder layers to run (default ``cfg.corr_depth``, what the head was trained with).
        Only the first ``depth`` decoder layers run: the reference stream for ``depth - 1`` layers, the candidate
        stream for ``depth`` (each layer reading the other stream's previous output).
        """
        depth = self.cfg.corr_depth if depth is None else depth
        if not 1 <= depth <= self.cfg.dec_depth:
            raise ValueError(f"retrieval depth {depth} must be in [1, {self.cfg.dec_depth}]")
        if cand_tokens.dim() == 3:
            cand_tokens = cand_tokens.unsqueeze(1).expand(-1, ref_tokens.shape[0], -1, -1)
        self._check_tokens(ref_tokens.unsqueeze(0), "ref_tokens")
        self._check_tokens(cand_tokens, "cand_tokens")
        rope = self.rope(self.cfg.dec_embed_dim // self.cfg.dec_num_heads, ref_tokens.device)
        x1, x2 = self.embed(ref_tokens.unsqueeze(0)), self.embed(cand_tokens)
        for i in range(depth):
            new_x2 = self.mv_dec_blocks2[i](x2, x1, rope)
            if i + 1 < depth:
                x1 = self.mv_dec_blocks1[i](x1, x2, rope)
            x2 = new_x2
        return self.corr_score_proj(self.corr_score_norm(x2))[..., 0]

    def corr_scores(self, ref_tokens: Tensor, cand_tokens: Tensor, depth: int | None = None) -> Tensor:
        """Retrieval confidences ``1 + exp(logit)``, ``(M, B, S)`` (see :meth:`corr_logits`)."""
        return 1.0 + self.corr_logits(ref_tokens, cand_tokens, depth).exp()
