"""Speed of the synthetic-data renderer and of the published evaluation protocol on this machine.

    python bench/bench_data_eval.py [--frames 20] [--eval-frames 10] [--samples 200000]

Prints a table and, last, one JSON line: render ms/frame at 640x480 (ray casting + shading; 1 thread and the
sequence default) and the evaluation
time for ``--samples`` corresponding points (selection, RANSAC, both ICP stages, metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from scipy.spatial.transform import Rotation

from slam3r.data.pointmaps import gt_pointmaps
from slam3r.data.synth import make_scene, make_trajectory, render, sequence_camera
from slam3r.data.synth.sequence import default_threads
from slam3r.eval.recon import EvalConfig, evaluate_pointmaps
from slam3r.geometry import apply_sim3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=20, help="frames rendered for the timing")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--eval-frames", type=int, default=10, help="frames whose 224x224 GT pointmaps are scored")
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args()

    t0 = time.perf_counter()
    scene = make_scene(args.seed)
    c2w = make_trajectory(scene, 100, args.seed)
    t_setup = time.perf_counter() - t0
    K = sequence_camera(args.seed, args.width, args.height)
    render(scene, c2w[0], K, args.width, args.height)  # warm-up
    threads = default_threads()
    render_ms: dict[int, float] = {}
    for th in sorted({1, threads}):
        times, depths = [], []
        for i in range(args.frames):
            t0 = time.perf_counter()
            _, depth = render(scene, c2w[i * 100 // args.frames], K, args.width, args.height, threads=th)
            times.append(time.perf_counter() - t0)
            depths.append(depth)
        render_ms[th] = 1e3 * float(np.median(times))

    idx = np.linspace(0, args.frames - 1, args.eval_frames).astype(int)
    poses = c2w[idx * 100 // args.frames]
    gt, valid = gt_pointmaps(np.stack([depths[i] for i in idx]), K, poses, 224)
    rng = np.random.default_rng(0)
    pred = apply_sim3(0.7, Rotation.random(random_state=0).as_matrix(), np.array([0.5, -1.0, 2.0]),
                      gt + rng.normal(0, 0.01, gt.shape))
    conf = np.full(valid.shape, 10.0, np.float32)
    t0 = time.perf_counter()
    rep = evaluate_pointmaps(pred, conf, gt, valid, EvalConfig(num_samples=args.samples))
    eval_s = time.perf_counter() - t0

    rows = [
        ("scene + 100-pose trajectory", f"{t_setup * 1e3:.1f} ms"),
        *((f"render {args.width}x{args.height}, {th} thread(s) (median of {args.frames})", f"{ms:.1f} ms/frame")
          for th, ms in render_ms.items()),
        ("render 100 frames (estimate, sequence default threads)", f"{render_ms[threads] * 100 / 1e3:.1f} s"),
        (f"evaluate {rep.num_pairs} pairs (of {rep.num_candidates})", f"{eval_s:.2f} s"),
        *((f"  {k}", f"{v:.2f} s") for k, v in rep.timings_s.items()),
        ("accuracy / completion (1 cm noise)", f"{rep.metrics.accuracy_cm:.3f} / {rep.metrics.completion_cm:.3f} cm"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps({
        "bench": "data_eval", "cpus": os.cpu_count(), "width": args.width, "height": args.height,
        "render_ms_per_frame": {str(th): round(ms, 2) for th, ms in render_ms.items()},
        "render_100_frames_s": round(render_ms[threads] * 0.1, 2),
        "eval_pairs": rep.num_pairs, "eval_s": round(eval_s, 3),
        "eval_stages_s": {k: round(v, 3) for k, v in rep.timings_s.items()},
        "accuracy_cm": round(rep.metrics.accuracy_cm, 4), "completion_cm": round(rep.metrics.completion_cm, 4),
    }))


if __name__ == "__main__":
    main()
