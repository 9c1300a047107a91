"""Accuracy of reduced precision (bf16 autocast) against exact fp32, the two checks ``--precision auto`` rests on.

    python bench/bench_precision.py --check quality            # bundled model, the 5 benchmark scenes
    python bench/bench_precision.py --check deviation --frames 40   # released-size random weights

``quality``: each scene of ``bench_quality.py`` rendered once, reconstructed with the demo's parameters and scored
as ``slam3r demo`` scores it (the plane baseline left out), in fp32 and in bf16; passes when the mean accuracy,
completion and ATE of bf16 are within ``--tol`` (2%) of fp32 (per-scene figures printed too).
``deviation``: the offline pipeline with the reference demo parameters on the bench's synthetic sequence, fp32 and
bf16 with the same discrete choices (the bf16 run replays the fp32 run's initial window, retrieval, keyframes and
masks, see ``bench_pipeline.DECISIONS``); per-point distance between the two runs' world points, relative to the
scene scale (median distance of the fp32 points from their median point); passes when the median is < 1%.
Both print a ``BENCH`` JSON line and ``PASS`` / ``FAIL``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import DEMO, run  # noqa: E402
from bench_quality import SEEDS  # noqa: E402
from common import bench_runtime, device_name, report, synthetic_frames  # noqa: E402

from slam3r.models.loading import resolve_device  # noqa: E402
from slam3r.recon.config import ReconConfig  # noqa: E402
from slam3r.runtime import add_runtime_arguments  # noqa: E402

METRICS = ("accuracy_cm", "completion_cm", "ate_cm")


def scene_metrics(i2p, l2w, seq, gt, precision: str, device) -> dict:
    """Reconstruct a rendered scene offline with the demo's parameters at ``precision`` and score it as
    ``slam3r demo`` does (published protocol at the demo's confidence threshold, ATE of the camera centres)."""
    from slam3r.eval.recon import EvalConfig, evaluate_pointmaps
    from slam3r.eval.trajectory import ate
    from slam3r.recon.offline import run_offline

    from slam3r.runtime import resolve_settings

    cfg = resolve_settings(ReconConfig, "recon", flags={"precision": precision}).value  # the bundled settings
    eval_conf = resolve_settings(EvalConfig, "eval").value.conf_thresh
    t0 = time.perf_counter()
    with torch.no_grad():
        engine, it = run_offline(i2p, l2w, list(seq.rgb), cfg, device=device)
        results = list(it)
    seconds = time.perf_counter() - t0
    pred, conf = np.stack([r.pts3d_world for r in results]), np.stack([r.conf for r in results])
    rep = evaluate_pointmaps(pred, conf, *gt, EvalConfig(conf_thresh=eval_conf))
    held = [r for r in results if r.registered]  # as the demo: ATE over the frames the trajectory holds
    traj = ate(np.stack([r.pose_c2w[:3, 3] for r in held]), seq.c2w[[r.frame_id for r in held], :3, 3])
    return {"accuracy_cm": rep.metrics.accuracy_cm, "completion_cm": rep.metrics.completion_cm,
            "ate_cm": 100 * traj.ate_rmse_m, "fps": len(results) / seconds, "stride": engine.s,
            "unregistered": len(results) - len(held), "world": pred}


def quality(args, device) -> bool:
    from slam3r.data.pointmaps import gt_pointmaps
    from slam3r.demo import DEMO_FRAMES, render_heldout
    from slam3r.runtime import load_runtime

    rt = load_runtime(args.weights, args.device, args.threads)
    i2p, l2w = rt.i2p, rt.l2w
    size = i2p.cfg.img_size[0]
    rows, per = [], {p: {m: [] for m in (*METRICS, "fps")} for p in ("fp32", "bf16")}
    for seed in args.seeds:
        seq = render_heldout(seed, args.frames or DEMO_FRAMES, size)
        gt = gt_pointmaps(seq.depth, seq.K, seq.c2w, size)
        worlds = {}
        for prec in ("fp32", "bf16"):
            r = scene_metrics(i2p, l2w, seq, gt, prec, device)
            worlds[prec] = r.pop("world")
            for m in (*METRICS, "fps"):
                per[prec][m].append(r[m])
            rows.append({"seed": seed, "precision": prec, **{m: round(v, 3) for m, v in r.items()}})
            print(rows[-1], flush=True)
        dev = np.linalg.norm(worlds["bf16"] - worlds["fp32"], axis=-1)
        ref = worlds["fp32"].reshape(-1, 3)
        scale = np.median(np.linalg.norm(ref - np.median(ref, axis=0), axis=1))
        rows[-1]["median_dev_of_scale"] = round(float(np.median(dev) / scale), 5)
    mean = {p: {m: float(np.mean(v)) for m, v in d.items()} for p, d in per.items()}
    rel = {m: mean["bf16"][m] / mean["fp32"][m] - 1 for m in METRICS}
    ok = all(abs(v) <= args.tol for v in rel.values())
    for p in ("fp32", "bf16"):
        rows.append({"seed": "mean", "precision": p, **{m: round(v, 3) for m, v in mean[p].items()}})
    report(f"precision quality — {args.weights} — {device_name(device)}", rows,
           {"relative_change_bf16_vs_fp32": rel, "tol": args.tol, "pass": ok})
    print("relative change bf16 vs fp32 (means over scenes): "
          + ", ".join(f"{m} {100 * v:+.2f}%" for m, v in rel.items()))
    return ok


def deviation(args, device) -> bool:
    rt = bench_runtime(None, args.size, args.device, args.threads)
    i2p, l2w = rt.i2p, rt.l2w
    frames = synthetic_frames(args.frames, i2p.cfg.img_size[0])
    log: dict = {}
    out, seconds = {}, {}
    for prec in ("fp32", "bf16"):
        t0 = time.perf_counter()
        cfg = ReconConfig(**DEMO, precision=prec)
        res = run(i2p, l2w, frames, cfg, "offline", device, log, replay=prec != "fp32",
                  progress=lambda n, s, _p=prec: print(f"{_p}: frame {n}/{len(frames)} at {s:.0f} s", flush=True))
        out[prec] = np.stack([r.pts3d_world for r in res[0]])
        seconds[prec] = time.perf_counter() - t0
        print(f"{prec}: {len(frames)} frames in {seconds[prec]:.0f} s", flush=True)
    ref = out["fp32"].reshape(-1, 3)
    scale = float(np.median(np.linalg.norm(ref - np.median(ref, axis=0), axis=1)))
    dev = np.linalg.norm(out["bf16"].reshape(-1, 3) - ref, axis=1) / scale
    stats = {"median": float(np.median(dev)), "p90": float(np.quantile(dev, 0.9)), "max": float(dev.max()),
             "frac_over_1pct": float((dev > 0.01).mean())}
    ok = stats["median"] < 0.01
    rows = [{"precision": p, "seconds": round(s, 1)} for p, s in seconds.items()]
    report(f"precision deviation — {args.size} — {args.frames} frames — {device_name(device)}", rows,
           {"scene_scale": scale, "relative_deviation": stats, "pass": ok})
    print("bf16 vs fp32 per-point deviation / scene scale: "
          + ", ".join(f"{k} {100 * v:.3f}%" if k != "frac_over_1pct" else f"{k} {v:.3f}" for k, v in stats.items()))
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", choices=["quality", "deviation"], required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="quality: scene seeds")
    ap.add_argument("--size", default="released", help="deviation: random-weight model size")
    ap.add_argument("--frames", type=int, default=None, help="frames per scene (quality: the demo's 60; "
                                                             "deviation: 40)")
    ap.add_argument("--tol", type=float, default=0.02, help="quality: allowed relative change of each metric")
    add_runtime_arguments(ap, options=("weights", "device", "threads"), device_default="cpu",
                          notes={"weights": "quality: the model to score"})
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.check == "deviation" and args.frames is None:
        args.frames = 40
    ok = quality(args, device) if args.check == "quality" else deviation(args, device)
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
