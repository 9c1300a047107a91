"""Per-frame time must stay flat as a stream grows: streaming driver, frames 1-100 vs 900-1000 (tiny networks by
default), plus resident memory at both points.

    python bench/bench_scaling.py --frames 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_runtime, device_name, report  # noqa: E402

from slam3r.recon.config import ReconConfig  # noqa: E402
from slam3r.recon.streaming import StreamingReconstructor  # noqa: E402
from slam3r.runtime import add_runtime_arguments  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--buffer-size", type=int, default=30)
    add_runtime_arguments(ap, options=("device", "threads"), threads_default=1)
    args = ap.parse_args()
    rt = bench_runtime(None, args.size, args.device, args.threads)
    i2p, l2w, device = rt.i2p, rt.l2w, rt.device
    size = i2p.cfg.img_size[0]
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (size, args.frames // 2 + 2 * size, 3), dtype=np.uint8)
    rec = StreamingReconstructor(i2p, l2w, ReconConfig(keyframe_stride=2, win_r=3, num_scene_frame=5,
                                                       buffer_size=args.buffer_size), device)
    per_frame = np.zeros(args.frames)
    rss = {}
    with torch.no_grad():
        for i in range(args.frames):
            frame = np.ascontiguousarray(texture[:, i // 2: i // 2 + size])
            t0 = time.perf_counter()
            rec.push(frame)
            per_frame[i] = time.perf_counter() - t0
            if i + 1 in (100, args.frames):
                rss[i + 1] = rss_mib()
    n = args.frames
    early, late = per_frame[:100], per_frame[n - 100:n]
    # the median is robust to other processes' bursts on a shared machine; the mean includes initialisation
    rows = [{"frames": "1-100", "median_ms": round(np.median(early) * 1e3, 2), "mean_ms": round(early.mean() * 1e3, 2),
             "rss_MiB": round(rss[100], 1)},
            {"frames": f"{n - 99}-{n}", "median_ms": round(np.median(late) * 1e3, 2),
             "mean_ms": round(late.mean() * 1e3, 2), "rss_MiB": round(rss[n], 1)}]
    ratio = float(np.median(late) / np.median(early))
    report(f"streaming scaling — {args.size} — {device_name(device)}", rows, {"late_over_early": ratio, "frames": n})
    print(f"late/early median per-frame time: {ratio:.3f} (target: within 10%)")


if __name__ == "__main__":
    main()
