"""Which floating-point precision the networks run in, decided once per device at run time.

``auto`` means: on CUDA, bf16 where the GPU supports it, else fp16; on a CPU, bf16 when the CPU has native bf16
matrix instructions (AVX-512 BF16 or AMX-BF16, where a bf16 matmul runs about twice as fast as fp32) and
:data:`CPU_AUTO_BF16` is on (off by default until its accuracy checks pass), else fp32. ``fp32`` forces exact arithmetic; ``bf16`` / ``fp16`` force autocast.

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

CPU_AUTO_BF16 = os.environ.get("SLAM3R_CPU_AUTO_BF16", "0") == "1"
"""Whether ``auto`` picks bf16 on CPUs with native bf16 instructions. Off until both accuracy checks of
``bench/bench_precision.py`` have passed on the bench machine (bundled model on the 5 benchmark scenes: accuracy /
completion / ATE within 2% of fp32; released-size random weights: median per-point deviation < 1% of the scene
scale). On 2026-12-01 the deviation check passed (0.92%) and the quality check failed (mean accuracy +10.8%,
completion +2.0%; see the README), so it stays off. ``SLAM3R_CPU_AUTO_BF16=1`` turns it
on; ``--precision bf16`` forces bf16 either way."""


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
                   capabilities: Mapping[str, bool] | None = None) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for exact fp32."""
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
    if device.type == "cpu" and CPU_AUTO_BF16 and cpu_has_fast_bf16(capabilities):
        return torch.bfloat16
    return None


def describe(device: torch.device | str, precision: str) -> str:
    """``fp32`` / ``bf16`` / ``fp16``: what ``precision`` resolves to on ``device`` (for logs and summaries)."""
    dtype = autocast_dtype(device, precision)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Context manager running the networks at ``precision`` on ``device`` (a no-op for fp32)."""
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
