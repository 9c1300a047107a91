"""``slam3r demo``: reconstruct a held-out synthetic scene with the bundled model and score it against ground truth.

The scene (seed >= 1,000,000, a range never used for training) is rendered directly at the network resolution,
reconstructed by the offline pipeline, and scored with the published protocol (:mod:`slam3r.eval.recon`:
RANSAC + ICP alignment, accuracy / completion in cm) and ATE of the estimated camera centres. A
trivial baseline is scored the same way so the gain is visible: every frame is a fronto-parallel plane at the
median GT depth of the scene, placed with the GT camera poses.

Pipeline and evaluation settings come from the settings resolver (:mod:`slam3r.runtime`). For the bundled model
they are its ``recon.yaml``, chosen on the demo scene only: its confidences are low and nearly uninformative, so
every point is exported and scored (``eval.conf_thresh: 1``; the published protocol's 3 is calibrated on the
released model, and the bundled one has almost no L2W confidence above 3). The baseline is always scored on exactly
the pixels selected for the model.

Outputs (``--out``, default ``outputs/demo/``): the reconstruction (``recon/output.py``: the cloud in every format,
``trajectory.txt``, ``cameras.json``, ``summary.json``, ``preds/``), ``trajectory_gt.txt`` and ``report.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

DEMO_SEED = 1_000_000
DEMO_FRAMES = 60
DEMO_LOOP_FRAMES = 150
"""The demo camera covers ``DEMO_FRAMES`` frames of a path whose full loop would take this many (0.4 loops)."""
DEMO_FOV_DEG = 65.0


def check_heldout(seed: int) -> None:
    """Refuse a seed of the training range (held-out scenes use seeds >= 1,000,000)."""
    from slam3r.data.synth import is_eval_seed
    from slam3r.errors import InputError

    if not is_eval_seed(seed):
        raise InputError(f"--seed {seed} is in the training range; held-out scenes use seeds >= 1,000,000")


def render_heldout(seed: int, num_frames: int, size: int, loop_frames: int = DEMO_LOOP_FRAMES,
                   fov_deg: float = DEMO_FOV_DEG):
    """Held-out sequence rendered at ``size x size`` (:class:`slam3r.data.synth.Sequence`); refuses training seeds."""
    from slam3r.data.synth import render_sequence

    check_heldout(seed)
    return render_sequence(seed, num_frames, size, size, hfov_deg=fov_deg, loops=1.25 * num_frames / loop_frames)


def plane_baseline(depth, K, c2w):
    """The trivial baseline: per frame, a plane at the scene's median GT depth (``depth`` ``(N, H, W)`` metres),
    back-projected with ``K`` ``(3, 3)`` and placed with the GT poses ``c2w`` ``(N, 4, 4)``: world points
    ``(N, H, W, 3)`` float32."""
    import numpy as np

    from slam3r.geometry import depth_to_world

    d = float(np.median(depth[depth > 0]))
    return depth_to_world(np.full(depth.shape, d, np.float32), K, c2w).astype(np.float32)


def evaluate_scene(i2p, l2w, seed: int, num_frames: int, out_dir: str | Path, cfg: Any, eval_conf: float,
                   device: str = "cpu", progress: bool = False, settings: dict | None = None,
                   baseline: bool = True) -> dict[str, Any]:
    """Render, reconstruct with ``cfg`` (a :class:`~slam3r.recon.config.ReconConfig`) and score one held-out scene
    at confidence > ``eval_conf`` (and, unless ``baseline=False``, the plane baseline on the same pixels); returns
    the report dict (also written to ``out_dir/report.json``; ``settings`` goes into the run's summary.json).
    Lengths in cm; FPS of the reconstruction alone."""
    import numpy as np

    from slam3r.config import to_dict
    from slam3r.data import jsonio
    from slam3r.data.pointmaps import gt_pointmaps
    from slam3r.data.trajectory_io import write_tum_trajectory
    from slam3r.eval.recon import EvalConfig, evaluate_pointmaps
    from slam3r.eval.trajectory import ate
    from slam3r.recon.output import RunOutput
    from slam3r.recon.run import reconstruct

    out = Path(out_dir)
    size = i2p.cfg.img_size[0]
    t0 = time.perf_counter()
    seq = render_heldout(seed, num_frames, size)
    t_render = time.perf_counter() - t0
    gt_pts, gt_valid = gt_pointmaps(seq.depth, seq.K, seq.c2w, size)
    frames = [(i, rgb, None) for i, rgb in enumerate(seq.rgb)]
    summary = reconstruct(frames, i2p, l2w, cfg, out, device=device, scene=f"synth_{seed}", progress=progress,
                          settings=settings)
    write_tum_trajectory(out / "trajectory_gt.txt", np.arange(num_frames, dtype=float), seq.c2w)
    # scored from what was written (after any loop-closure correction of the output directory)
    result = RunOutput(out)
    pred, conf = np.asarray(result.pred("registered_pcds")), np.asarray(result.pred("registered_confs"))
    stamps, poses = result.trajectory()  # registered frames only; stamp = frame index
    t0 = time.perf_counter()
    ecfg = EvalConfig(conf_thresh=eval_conf)
    model = evaluate_pointmaps(pred, conf, gt_pts, gt_valid, ecfg)
    traj = ate(poses[:, :3, 3], seq.c2w[np.rint(stamps).astype(int), :3, 3])
    base = evaluate_pointmaps(plane_baseline(seq.depth, seq.K, seq.c2w), conf, gt_pts, gt_valid, ecfg) \
        if baseline else None
    t_eval = time.perf_counter() - t0
    report = {
        "seed": seed, "frames": num_frames, "image_size": size, "recon_config": to_dict(cfg),
        "eval_conf_thresh": eval_conf,
        "model": {"accuracy_cm": model.metrics.accuracy_cm, "completion_cm": model.metrics.completion_cm,
                  "ate_cm": 100 * traj.ate_rmse_m, "fps": summary.fps, "stride": summary.engine.kf_stride,
                  "confident_fraction": float((conf > 3).mean()), "alignment_failed": model.failed,
                  "details": model.to_dict()},
        "baseline": None if base is None else {
            "accuracy_cm": base.metrics.accuracy_cm, "completion_cm": base.metrics.completion_cm, "ate_cm": 0.0,
            "depth_m": float(np.median(seq.depth[seq.depth > 0])), "details": base.to_dict()},
        "seconds": {"render": t_render, "reconstruct": summary.seconds, "evaluate": t_eval},
    }
    (out / "report.json").write_text(jsonio.dumps(report, indent=1))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The printed table of one demo report."""
    m, b = report["model"], report["baseline"]
    lines = [f"held-out synthetic scene seed {report['seed']}: {report['frames']} frames at "
             f"{report['image_size']} px, keyframe stride {m['stride']}; scored on pixels with confidence > "
             f"{report['eval_conf_thresh']:g} (published protocol otherwise)",
             f"{'':24}{'accuracy cm':>12}{'completion cm':>15}{'ATE cm':>9}{'FPS':>8}",
             f"{'bundled model':24}{m['accuracy_cm']:12.2f}{m['completion_cm']:15.2f}{m['ate_cm']:9.2f}"
             f"{m['fps']:8.1f}",
             f"{'plane baseline (GT pose)':24}{b['accuracy_cm']:12.2f}{b['completion_cm']:15.2f}{'(GT)':>9}"
             f"{'-':>8}",
             f"gain: accuracy x{b['accuracy_cm'] / max(m['accuracy_cm'], 1e-9):.1f}, completion "
             f"x{b['completion_cm'] / max(m['completion_cm'], 1e-9):.1f}"]
    if report["recon_config"].get("registration") == "l2w" and m["completion_cm"] > b["completion_cm"]:
        lines.append(FLOW_HINT)
    return "\n".join(lines)


FLOW_HINT = ("note: the bundled model's L2W registration is rotation-blind, so its frames collapse onto the first "
             "ones (MODEL_CARD.md); its default, `registration: flow`, places them by optical flow instead: a more "
             "complete map at about the same FPS (README, registration backends)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slam3r.runtime import add_runtime_arguments, positive_int

    parser.add_argument("--out", default="outputs/demo", help="output directory (default: outputs/demo)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="held-out scene seed (>= 1,000,000)")
    parser.add_argument("--frames", type=positive_int, default=DEMO_FRAMES, help="frames to render and reconstruct")
    parser.add_argument("--eval-conf", type=float, default=None,
                        help="evaluation confidence threshold (default: eval.conf_thresh from the settings: 1 with "
                             "the bundled model, the published protocol's 3 otherwise)")
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slam3r.eval.recon import EvalConfig
    from slam3r.recon.output import RunOutput
    from slam3r.runtime import recon_settings, resolve_settings, runtime_from_args, weights_record

    t0 = time.perf_counter()
    check_heldout(args.seed)  # before anything is loaded
    settings = recon_settings(args)
    ev = resolve_settings(EvalConfig, "eval", weights=args.weights, config=args.config,
                          flags={"conf_thresh": args.eval_conf}).value
    rt = runtime_from_args(args)
    report = evaluate_scene(rt.i2p, rt.l2w, args.seed, args.frames, args.out, settings.value, ev.conf_thresh,
                            device=str(rt.device), progress=True,
                            settings={"weights": weights_record(args.weights), "config_sources": settings.sources})
    print(format_report(report))
    written = ", ".join(p.name for p in RunOutput(args.out).files())
    print(f"outputs in {args.out}/ (report.json, trajectory_gt.txt, {written}); "
          f"total {time.perf_counter() - t0:.0f} s")
    return 0
