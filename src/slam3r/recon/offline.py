"""Offline driver (the reference ``recon.py`` algorithm): all frames known, symmetric I2P windows, automatic
keyframe stride over the whole video. Frames flow through the engine in chunks so device memory stays bounded."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from slam3r.data.preprocess import to_tensor
from slam3r.errors import InputError
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.models.precision import resolve as resolve_precision
from slam3r.recon.config import ReconConfig, resolve_geometry
from slam3r.recon.engine import Engine, autocast_context
from slam3r.recon.types import FrameResult


def choose_stride(i2p: Image2PointsModel, frames: Sequence[np.ndarray], cfg: ReconConfig,
                  device: torch.device, cache: dict[int, torch.Tensor] | None = None) -> tuple[int, dict[int, float]]:
    """Automatic keyframe stride: for each candidate s, the mean I2P confidence of up to
    ``cfg.auto_stride_windows`` random 7-frame windows (centre -+ i*s, i = 1..3); the best mean wins.
    Returns the stride and the mean confidence of every stride tried; ``cache`` (frame index -> encoder tokens)
    receives the tokens it computed, so the reconstruction need not encode those frames again."""
    n = len(frames)
    rng = np.random.default_rng(cfg.seed)
    hi = min((n - 1) // 6, cfg.keyframe_adapt_max)
    tried: dict[int, float] = {}
    cache = {} if cache is None else cache
    precision = resolve_precision(device, cfg.precision, i2p.cfg.enc_embed_dim)
    for s in range(cfg.keyframe_adapt_min, hi + 1, cfg.keyframe_adapt_stride):
        centres = rng.choice(np.arange(3 * s, n - 3 * s), min(n - 6 * s, cfg.auto_stride_windows), replace=False)
        wins = [[int(c)] + [int(c) + d * i * s for i in range(1, 4) for d in (-1, 1)] for c in centres]
        need = sorted({i for w in wins for i in w} - set(cache))
        with torch.no_grad(), autocast_context(device, precision):
            if need:
                toks = i2p.encode(to_tensor(np.stack([frames[i] for i in need])).to(device))
                cache.update(zip(need, toks))
            tokens = torch.stack([torch.stack([cache[i] for i in w]) for w in wins], dim=1)  # (7, B, S, C)
            tried[s] = i2p(tokens, 0).conf.float().mean().item()
    if not tried:
        return 1, tried
    return max(tried, key=tried.get), tried


def run_offline(i2p: Image2PointsModel, l2w: Local2WorldModel, frames: Sequence[np.ndarray], cfg: ReconConfig,
                *, device: torch.device | str = "cpu", timestamps: Sequence[int | None] | None = None,
                frame_shape: tuple[int, ...] | None = None, chunk: int = 32,
                on_stride: Callable[[int], None] | None = None) -> tuple[Engine, Iterator[FrameResult]]:
    """Reconstruct ``frames`` (network-resolution ``(S, S, 3)`` uint8). Returns the engine (geometry, buffer,
    timings, ``summary()``) and an iterator of per-frame results in frame order; consume it to run the
    reconstruction. ``frame_shape``: ``(H, W, ...)`` of the original frames ``cfg.intrinsics`` refer to (default:
    the frames given)."""
    device = torch.device(device)
    n = len(frames)
    if n < 2:
        raise InputError(f"need at least 2 frames to reconstruct, got {n}")
    tokens: dict[int, torch.Tensor] = {}  # encoded by the stride search, handed to the engine (then dropped)
    geometry = resolve_geometry(cfg, i2p.cfg.img_size[0], causal=False, frame_shape=frame_shape or frames[0].shape,
                                search=lambda: choose_stride(i2p, frames, cfg, device, tokens)[0])
    if on_stride is not None:
        on_stride(geometry.stride)
    engine = Engine(i2p, l2w, cfg, geometry, device=device)
    ts = list(timestamps) if timestamps is not None else [None] * n

    def results() -> Iterator[FrameResult]:
        for start in range(0, n, chunk):
            engine.add(frames[start:start + chunk], ts[start:start + chunk],
                       [tokens.pop(i, None) for i in range(start, min(n, start + chunk))])
            if engine.n == n:
                engine.finish()
            yield from engine.advance()
        if not engine.final:
            engine.finish()
            yield from engine.advance()

    return engine, results()
