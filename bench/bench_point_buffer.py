"""Insert throughput of :class:`slam3r.recon.point_buffer.PointBuffer` (points per second).

Workloads (all inputs generated before timing):
  * ``frames``: a camera turning inside a 4 x 3 x 2.5 m room; every frame is 224 x 224 = 50,176 noisy wall points
    (one loop every 120 frames, so later frames revisit); default buffer (1 cm voxels, cap 2,000,000).
  * ``new-voxels``: worst case, every point lands in a new voxel (uniform in a 20-unit cube), cap raised so no
    re-bin happens; batches of 50,176 points.
  * ``one-batch``: the whole set inserted in a single call (room points).
  * ``python-lists``: the deployed service's approach for comparison (append ``tolist()`` rows to lists, then one
    ``np.unique`` voxel downsampling pass), 1M points only.

Each figure is the best of ``--repeat`` runs; ``Mpts/cpu-s`` divides by this thread's CPU time instead of wall time
(comparable on a machine shared with other work). Prints a table and one JSON line.
Usage: ``python bench/bench_point_buffer.py [--quick] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np

from slam3r.recon.point_buffer import PointBuffer

FRAME = 224 * 224


def room_frames(n_frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_frames * FRAME`` wall points of a box room seen by a camera turning at its centre."""
    rng = np.random.default_rng(seed)
    n = n_frames * FRAME
    yaw = np.repeat(2 * np.pi * np.arange(n_frames) / 120.0, FRAME)
    az = yaw + rng.uniform(-0.35, 0.35, n)
    c, s = np.cos(az), np.sin(az)
    r = np.minimum(2.0 / np.maximum(np.abs(c), 1e-9), 1.5 / np.maximum(np.abs(s), 1e-9))
    xyz = np.stack([r * c, r * s, rng.uniform(0.0, 2.5, n)], axis=1) + rng.normal(0, 0.002, (n, 3))
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    conf = (1.0 + rng.exponential(5.0, n)).astype(np.float32)
    return xyz.astype(np.float32), rgb, conf


def random_points(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points uniform in a 20-unit cube (practically all in distinct 1 cm voxels)."""
    rng = np.random.default_rng(seed)
    return ((rng.random((n, 3), dtype=np.float32) * 20).astype(np.float32),
            rng.integers(0, 256, (n, 3), dtype=np.uint8), rng.random(n, dtype=np.float32) + 1)


def time_inserts(make: Callable[[], PointBuffer], data: tuple[np.ndarray, np.ndarray, np.ndarray], batch: int,
                 repeat: int) -> tuple[float, float, PointBuffer]:
    """Best-of-``repeat`` wall and CPU seconds to insert ``data`` in batches of ``batch`` points into a fresh
    buffer (CPU time of this thread: robust to other processes competing for the cores)."""
    xyz, rgb, conf = data
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        buf = make()
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(0, len(xyz), batch):
            buf.insert(xyz[i:i + batch], rgb[i:i + batch], conf[i:i + batch])
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.thread_time() - c0)
    return best, best_cpu, buf


def python_lists(data: tuple[np.ndarray, np.ndarray, np.ndarray], voxel: float = 0.01) -> tuple[float, float]:
    """Wall and CPU seconds for the list-based accumulation + one voxel downsampling pass."""
    xyz, rgb, _ = data
    t0, c0 = time.perf_counter(), time.thread_time()
    pts: list[list[float]] = []
    cols: list[list[int]] = []
    for i in range(0, len(xyz), FRAME):
        pts.extend(xyz[i:i + FRAME].tolist())
        cols.extend(rgb[i:i + FRAME].tolist())
    arr = np.asarray(pts, dtype=np.float32)
    _, first = np.unique(np.floor(arr / voxel).astype(np.int64), axis=0, return_index=True)
    _ = arr[first], np.asarray(cols, dtype=np.uint8)[first]
    return time.perf_counter() - t0, time.thread_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1M-point sizes only")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    args = ap.parse_args()
    sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    rows = []
    for total in sizes:
        frames = -(-total // FRAME)
        room = room_frames(frames)
        rnd = random_points(total)
        for name, data, batch, make in (
                ("frames", room, FRAME, PointBuffer),
                ("new-voxels", rnd, FRAME, lambda: PointBuffer(max_points=100_000_000)),
                ("one-batch", room, len(room[0]), PointBuffer)):
            dt, cpu, buf = time_inserts(make, data, batch, args.repeat)
            rows.append((name, len(data[0]), batch, dt, cpu, len(buf), buf.voxel_size))
        if total == 1_000_000:
            rows.append(("python-lists", len(room[0]), FRAME, *python_lists(room), -1, 0.01))
        del room, rnd
    print(f"{'workload':<13} {'points':>11} {'batch':>10} {'seconds':>9} {'Mpts/s':>8} {'Mpts/cpu-s':>11} "
          f"{'stored':>10} {'voxel':>7}")
    out = []
    for name, n, batch, dt, cpu, stored, voxel in rows:
        rate, cpu_rate = n / dt, n / max(cpu, 1e-9)
        print(f"{name:<13} {n:>11,} {batch:>10,} {dt:>9.3f} {rate / 1e6:>8.1f} {cpu_rate / 1e6:>11.1f} "
              f"{stored:>10,} {voxel:>7.4f}")
        out.append({"workload": name, "points": n, "batch": batch, "seconds": round(dt, 4),
                    "points_per_s": round(rate), "points_per_cpu_s": round(cpu_rate), "stored": stored,
                    "voxel": voxel})
    print(json.dumps({"bench": "point_buffer", "results": out}))


if __name__ == "__main__":
    main()
