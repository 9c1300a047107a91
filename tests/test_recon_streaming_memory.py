"""A long stream must not grow memory: the buffering set and a bounded window are the only state."""

from __future__ import annotations

import gc

import numpy as np

from slam3r.recon.config import ReconConfig
from slam3r.recon.streaming import StreamingReconstructor


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        import os
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_2000_frames_flat_memory(tiny_models):
    i2p, l2w = tiny_models
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (64, 2200, 3), dtype=np.uint8)
    rec = StreamingReconstructor(i2p, l2w, ReconConfig(keyframe_stride=2, win_r=2, num_scene_frame=4,
                                                       buffer_size=20))
    registered = 0
    samples = {}
    for i in range(2000):
        registered += len(rec.push(np.ascontiguousarray(texture[:, i // 2: i // 2 + 80])))
        if i == 200:
            gc.collect()
            base = rss_bytes()
        if i > 200 and i % 100 == 0:
            samples[i] = rss_bytes()
        assert len(rec.engine.frames) <= 20 + 2 * 2 * 2 + 4  # buffer + window + pending batch
    registered += len(rec.flush())
    assert registered == 2000
    peak = max(samples.values())
    assert peak < base * 1.05, f"RSS grew from {base / 2**20:.1f} MiB to {peak / 2**20:.1f} MiB"
    assert len(rec.engine.buffer) == 20
