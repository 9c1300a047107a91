"""Which floating-point precision the networks run in, decided once per device at run time.

``auto`` means: on CUDA, bf16 where the GPU supports it, else fp16; on a CPU, bf16 when the CPU has native bf16
matrix instructions (AVX-512 BF16 or AMX-BF16, where a bf16 matmul runs 2-4x as fast as fp32), the networks are wide
enough for it to pay (:data:`CPU_BF16_MIN_WIDTH`) and :data:`CPU_AUTO_BF16` is on, else fp32. ``fp32`` forces exact
arithmetic; ``bf16`` / ``fp16`` force autocast. :func:`resolve` turns ``auto`` into the concrete precision of one
pair of networks on one device, once per run.

Under autocast the networks keep the precision-sensitive parts in fp32: the residual stream, layer norms, RoPE
rotations, the cross-attention max-combination inputs are bf16 matmul outputs added to an fp32 stream, and the
pointmap heads (``base.LinearPts3d``). Only the matrix products (linear layers, convolutions, attention) run in
reduced precision.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Mapping

import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")

CPU_AUTO_BF16 = os.environ.get("SLAM3R_CPU_AUTO_BF16", "1") == "1"
"""Whether ``auto`` picks bf16 on CPUs with native bf16 instructions. On since both accuracy checks of
``bench/bench_precision.py`` passed on an AMX machine on 2026-12-02 (bundled model, ``registration: flow``, the 5
benchmark scenes: accuracy / completion / ATE -0.68% / -0.05% / -0.41% against fp32, within 2%; released-size random
weights, 40 frames: median per-point deviation 0.95% of the scene scale, under 1%; see the README), and again on
an AVX-512 BF16 Zen 4 after the bf16 attention path (-0.28% / -0.21% / -0.47%; 0.954%, 2026-12-02), and the
deviation check on an AMX Xeon after the bf16 linear layers moved to oneDNN with fused GELU (0.938%, 2026-12-03). With
``registration: l2w`` the quality check had failed (accuracy +10.8%, 2026-12-01). ``SLAM3R_CPU_AUTO_BF16=0`` turns it
off; ``--precision bf16`` forces bf16 either way."""

CPU_BF16_MIN_WIDTH = 512
"""Narrowest encoder width (``ModelConfig.enc_embed_dim``) for which ``auto`` picks bf16 on a CPU. Below it the
per-op overhead of small matrices dominates and bf16 buys nothing: the bundled model (width 160) ran 0.95x its fp32
speed in bf16, the released size (1024) 2.35x (offline pipeline, 2 threads, AMX, 2026-12-02) and 2.81x (steady state, 72
frames, 2026-12-03: 3.97 -> 1.41 s per frame)."""


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> Mapping[str, bool]:
    """CPU feature flags as torch reports them (``torch.cpu.get_capabilities``), else from ``/proc/cpuinfo``."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            return {k: bool(v) for k, v in get().items() if isinstance(v, bool)}
        except Exception:  # noqa: BLE001 - any failure of the probe means "unknown", i.e. no fast bf16
            pass
    flags = _cpuinfo_flags()
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def cpu_has_fast_bf16(capabilities: Mapping[str, bool] | None = None) -> bool:
    """True when the CPU has AVX-512 BF16 or AMX-BF16 instructions (bf16 matmuls ~2x fp32)."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def autocast_dtype(device: torch.device | str, precision: str, *,
                   capabilities: Mapping[str, bool] | None = None, width: int | None = None) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for exact fp32. ``width``: the networks'
    encoder width, when known (``auto`` on a CPU keeps fp32 below :data:`CPU_BF16_MIN_WIDTH`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    wide = width is None or width >= CPU_BF16_MIN_WIDTH
    if device.type == "cpu" and CPU_AUTO_BF16 and wide and cpu_has_fast_bf16(capabilities):
        return torch.bfloat16
    return None


def resolve(device: torch.device | str, precision: str, width: int | None = None) -> str:
    """The concrete precision (``fp32`` / ``bf16`` / ``fp16``) that ``precision`` means on ``device`` for networks
    of encoder width ``width``; engines resolve ``auto`` once and run and report that."""
    dtype = autocast_dtype(device, precision, width=width)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Context manager running the networks at ``precision`` on ``device`` (a no-op for fp32)."""
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
