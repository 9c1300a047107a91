"""Batched similarity alignment on tensors (any device; the fit itself runs in float64 where the device has it)."""

from __future__ import annotations

import torch
from torch import Tensor


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the 3x3 SVD wherever the device supports it (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def umeyama_torch(
    src: Tensor,
    dst: Tensor,
    weights: Tensor | None = None,
    with_scale: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weighted least-squares similarity (Umeyama 1991), batched: ``dst ~= s * R @ src + t``.

    Args:
        src, dst: corresponding points ``(..., N, 3)`` in the same units.
        weights: non-negative per-pair weights ``(..., N)`` (0 = ignore); ``None`` = all equal. Minimises
            ``sum_i w_i |dst_i - (s R src_i + t)|^2`` for each batch element.
        with_scale: estimate ``s``; otherwise ``s = 1`` (rigid fit).
    Returns:
        ``s (...)``, ``R (..., 3, 3)`` (proper rotations), ``t (..., 3)`` in ``src``'s dtype and device, and
        ``ok (...)`` (bool): False where fewer than 3 pairs have positive weight or, with scale, the weighted source
        points are all identical. Those elements hold the identity ``(1, I, 0)``.
    """
    if src.shape != dst.shape or src.ndim < 2 or src.shape[-1] != 3:
        raise ValueError(f"umeyama needs two (..., N, 3) tensors of equal shape, got {tuple(src.shape)} and "
                         f"{tuple(dst.shape)}")
    work = _work_dtype(src.device)
    a, b = src.to(work), dst.to(work)
    w = torch.ones(a.shape[:-1], dtype=work, device=a.device) if weights is None else weights.to(work)
    w = w.expand(a.shape[:-1]).clamp(min=0)
    wsum = w.sum(-1)
    ok = ((w > 0).sum(-1) >= 3) & (wsum > 0)
    wn = w / wsum.clamp(min=torch.finfo(work).tiny)[..., None]
    mu_s = (wn[..., None] * a).sum(-2)
    mu_d = (wn[..., None] * b).sum(-2)
    xs, xd = a - mu_s[..., None, :], b - mu_d[..., None, :]
    cov = (xd * wn[..., None]).transpose(-1, -2) @ xs
    u, d, vh = torch.linalg.svd(cov)
    flip = torch.linalg.det(u) * torch.linalg.det(vh) < 0
    sign = torch.ones_like(d)
    sign[..., 2] = torch.where(flip, -1.0, 1.0)
    rot = (u * sign[..., None, :]) @ vh
    if with_scale:
        var_s = (wn * (xs * xs).sum(-1)).sum(-1)
        tol = (1e-12 * (1.0 + a.abs().amax(dim=(-1, -2)))) ** 2
        ok = ok & (var_s > tol)
        s = (d * sign).sum(-1) / var_s.clamp(min=torch.finfo(work).tiny)
    else:
        s = torch.ones(a.shape[:-2], dtype=work, device=a.device)
    t = mu_d - s[..., None] * (rot @ mu_s[..., None])[..., 0]
    eye = torch.eye(3, dtype=work, device=a.device).expand_as(rot)
    s = torch.where(ok, s, torch.ones_like(s))
    rot = torch.where(ok[..., None, None], rot, eye)
    t = torch.where(ok[..., None], t, torch.zeros_like(t))
    return s.to(src.dtype), rot.to(src.dtype), t.to(src.dtype), ok
