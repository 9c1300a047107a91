"""Shared helpers of the benchmark scripts: model sizes, random-weight networks, synthetic frames, timing."""

from __future__ import annotations

import json
import platform
import time
from typing import Callable

import numpy as np
import torch

from slam3r.models import Image2PointsModel, Local2WorldModel, PRESETS, blocks
from slam3r.config import replace
from slam3r.system import usable_cores
from slam3r.models.loading import configure_threads, resolve_device
from slam3r.runtime import Runtime, load_runtime


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{usable_cores()} cores, {torch.get_num_threads()} threads"


def make_models(size: str, device: torch.device, seed: int = 0) -> tuple[Image2PointsModel, Local2WorldModel]:
    """Random-weight networks of a named size (speed does not depend on the weights)."""
    if size not in PRESETS:
        raise SystemExit(f"unknown size {size!r}; choose from {sorted(PRESETS)}")
    torch.manual_seed(seed)
    cfg = PRESETS[size]
    i2p = Image2PointsModel(cfg).to(device).eval()
    l2w = Local2WorldModel(replace(cfg, need_encoder=False)).to(device).eval()
    return i2p, l2w


def bench_runtime(weights: str | None, size: str, device: str = "auto", threads: int | None = None) -> Runtime:
    """The networks of a bench: ``weights`` loaded by :func:`slam3r.runtime.load_runtime`, or without weights
    (``None``) random networks of preset ``size``, on the same ``device`` under the same thread policy."""
    if weights:
        return load_runtime(weights, device, threads)
    dev = resolve_device(device)
    i2p, l2w = make_models(size, dev)
    return Runtime(i2p, l2w, dev, configure_threads(dev, threads))


def synthetic_frames(n: int, size: int, seed: int = 1_000_123) -> list[np.ndarray]:
    """``n`` rendered frames ``(size, size, 3)`` uint8 of a held-out synthetic scene (rendered at network size)."""
    from slam3r.data.synth import render_sequence

    return list(render_sequence(seed=seed, num_frames=n, width=size, height=size).rgb)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Best-of-``repeat`` wall seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def report(title: str, rows: list[dict], extra: dict | None = None) -> None:
    """Print a table and one JSON line (``BENCH {...}``) for machines to read."""
    print(f"\n## {title}")
    if rows:
        keys = list(rows[0])
        widths = [max(len(k), *(len(str(r.get(k, ''))) for r in rows)) for k in keys]
        print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
        for r in rows:
            print("  ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))
    print("BENCH " + json.dumps({"bench": title, "rows": rows, **(extra or {})}))


def matmul_peak(device: torch.device, precision: str = "fp32", n: int | None = None, repeat: int = 5) -> float:
    """The machine's matmul rate now: best GFLOP/s of ``repeat`` ``n x n`` products in ``precision`` (fp32 / bf16 /
    fp16; the yardstick for "share of peak"). Measured, so it drops as other processes load the machine. On a CPU
    it is the better of ``torch.mm`` and the oneDNN product that the networks' linear layers use where it is faster
    (``models.blocks.cpu_onednn_linear``; on a Zen 4 oneDNN's fp32 product ran 1.3x MKL's)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = timeit(lambda: torch.mm(a, b), device, repeat=repeat)
    if device.type == "cpu" and blocks.cpu_onednn_linear(dtype):
        best = min(best, timeit(lambda: blocks.onednn_linear(a, b, None, "none"), device, repeat=repeat))
    return 2 * n**3 / best / 1e9
