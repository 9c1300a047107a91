"""Per-frame time must stay flat as a stream grows: streaming driver, frames 1-100 vs 901-1000 (tiny networks by
default), the two timed alternately on two streams (one started 900 frames ahead), plus resident memory over the
last 100 frames.

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
    add_runtime_arguments(ap, options=("device", "threads"))
    args = ap.parse_args()
    rt = bench_runtime(None, args.size, args.device, args.threads)
    i2p, l2w, device = rt.i2p, rt.l2w, rt.device
    size = i2p.cfg.img_size[0]
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (size, args.frames // 2 + 2 * size, 3), dtype=np.uint8)
    cfg = ReconConfig(keyframe_stride=2, win_r=3, num_scene_frame=5, buffer_size=args.buffer_size)
    early_rec, late_rec = (StreamingReconstructor(i2p, l2w, cfg, device) for _ in range(2))
    n = args.frames

    def push(rec, i: int) -> float:
        t0 = time.perf_counter()
        rec.push(np.ascontiguousarray(texture[:, i // 2: i // 2 + size]))
        return time.perf_counter() - t0

    early, late = np.zeros(100), np.zeros(100)
    with torch.no_grad():
        for i in range(n - 100):  # the late stream runs ahead to frame n - 100 ...
            push(late_rec, i)
        rss_before = rss_mib()
        for i in range(100):  # ... then its last 100 frames alternate with the first 100 of a new stream
            early[i] = push(early_rec, i)
            late[i] = push(late_rec, n - 100 + i)
    # alternating, both see the machine at the same moments: a VM whose speed drifts by a quarter within minutes
    # (seen here) moves both alike; the median is robust to other processes' bursts, the mean includes initialisation
    rows = [{"frames": label, "median_ms": round(np.median(t) * 1e3, 2), "mean_ms": round(t.mean() * 1e3, 2)}
            for label, t in (("1-100", early), (f"{n - 99}-{n}", late))]
    ratio = float(np.median(late) / np.median(early))
    rows[0]["rss_MiB"], rows[1]["rss_MiB"] = "", f"{rss_before:.1f} -> {rss_mib():.1f} (process, last 100 frames)"
    report(f"streaming scaling — {args.size} — {device_name(device)}", rows, {"late_over_early": ratio, "frames": n})
    print(f"late/early median per-frame time: {ratio:.3f} (target: within 10%)")


if __name__ == "__main__":
    main()
