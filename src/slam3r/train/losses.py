"""The reference training losses: DUSt3R's confidence-aware regression (with the I2P / L2W normalisations) and
the retrieval head's confidence-matching L1."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slam3r.train.samples import mean_distance


def conf_regression_loss(pred: Tensor, conf: Tensor, gt: Tensor, valid: Tensor, alpha: float = 0.2
                         ) -> tuple[Tensor, Tensor]:
    """Confidence-aware regression, summed over views.

    For each view v: mean over its valid pixels (all batch elements together) of
    ``conf * ||pred - gt||_2 - alpha * log(conf)``. ``pred``, ``gt`` ``(V, B, H, W, 3)``; ``conf``, ``valid``
    ``(V, B, H, W)``. Returns (loss, per-view mean regression error ``(V,)``, detached, for logging).
    """
    dist = (pred - gt).norm(dim=-1)
    w = valid.to(dist.dtype)
    count = w.sum(dim=(1, 2, 3)).clamp(min=1)
    per_view = ((conf * dist - alpha * torch.log(conf)) * w).sum(dim=(1, 2, 3)) / count
    return per_view.sum(), ((dist * w).sum(dim=(1, 2, 3)) / count).detach()


def normalize_i2p(pts: Tensor, valid: Tensor) -> Tensor:
    """Divide each sample's points ``(V, B, H, W, 3)`` by their joint mean distance (all views) over ``valid``."""
    return pts / mean_distance(pts, valid, dims=(0, 2, 3))


def i2p_loss(pred: Tensor, conf: Tensor, gt: Tensor, valid: Tensor, alpha: float = 0.2) -> tuple[Tensor, Tensor]:
    """I2P loss: prediction and GT (reference camera frame) each normalised by its own joint mean distance."""
    return conf_regression_loss(normalize_i2p(pred, valid), conf, normalize_i2p(gt, valid), valid, alpha)


def retrieval_loss(logits: Tensor, conf: Tensor) -> Tensor:
    """Retrieval-head loss: L1 between ``x / (1 + x)`` of the head's ``mean(exp(score))`` over tokens and of the
    I2P ``mean(conf - 1)`` over pixels, averaged over candidates and batch.

    ``logits`` ``(M, B, S)`` raw per-token scores; ``conf`` ``(M, B, H, W)`` I2P confidences of the same
    candidates (source views) -- the target, not differentiated. ``x / (1 + x) = sigmoid(log x)`` is used for the
    score side so large logits cannot overflow.
    """
    score = torch.sigmoid(torch.logsumexp(logits, dim=-1) - math.log(logits.shape[-1]))
    target = (conf.detach() - 1).mean(dim=(-2, -1))
    return (score - target / (1 + target)).abs().mean()
