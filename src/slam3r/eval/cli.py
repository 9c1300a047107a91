"""``slam3r eval``: score a reconstruction (and optionally a trajectory) against an RGB-D ground-truth folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slam3r.runtime import add_runtime_arguments, positive_int

    parser.add_argument("--pred", required=True,
                        help="prediction: a slam3r recon output directory (preds/ and trajectory.txt), "
                             ".npz with pts3d (N, S, S, 3) + conf (N, S, S) [+ frame_ids (N,)], "
                             "or a .ply point cloud")
    parser.add_argument("--gt", required=True, help="ground-truth sequence folder (Replica layout, TUM or 7-Scenes)")
    parser.add_argument("--out", default=None, help="write the JSON report here (default: print it)")
    parser.add_argument("--traj", default=None,
                        help="predicted camera trajectory (TUM format) scored by ATE against the GT poses; GT "
                             "without timestamps (Replica) uses frame indices as timestamps")
    parser.add_argument("--evo", action="store_true",
                        help="also compute the trajectory's ATE with the evo package and report it beside the "
                             "project's own (report key trajectory_evo; they should agree to about 1e-6 m)")
    parser.add_argument("--conf-thresh", type=float, default=None,
                        help="keep predicted points with confidence above this (a recon output directory or .npz; "
                             "default: eval.conf_thresh from the settings: the weights' recon.yaml < --config < "
                             "--set; 1 for the bundled model, the published protocol's 3 otherwise)")
    parser.add_argument("--num-samples", type=positive_int, default=None,
                        help="corresponding pairs sampled (recon directory or .npz; default: 200000)")
    parser.add_argument("--sim3", default=None,
                        help="text file with a 4x4 pred->GT similarity to start ICP from (ply); by default the "
                             "trajectory alignment of --traj is used, else the identity")
    parser.add_argument("--gt-size", type=int, default=224,
                        help="GT pointmap resolution for scoring a .ply (network input crop, default 224)")
    parser.add_argument("--max-gt-points", type=int, default=2_000_000, help="GT cloud subsample for a .ply")
    parser.add_argument("--heatmaps", default=None, help="folder for accuracy.ply / completion.ply error maps")
    parser.add_argument("--refine-inliers", action="store_true", default=None,
                        help="re-fit the RANSAC similarity on its inliers (npz; not part of the published protocol)")
    add_runtime_arguments(parser, models=False, section="eval", weights_default=None)


def eval_settings(args: argparse.Namespace, pred: Path):
    """The :class:`~slam3r.eval.recon.EvalConfig` of this evaluation from the settings resolver; the weights are
    ``--weights`` or those recorded in a recon output directory's summary.json."""
    from slam3r.eval.recon import EvalConfig
    from slam3r.recon.output import RunOutput
    from slam3r.runtime import resolve_settings

    weights = args.weights
    if weights is None and pred.is_dir():
        try:
            weights = RunOutput(pred).summary().get("weights")
        except (ValueError, AttributeError):
            weights = None
    flags = {"conf_thresh": args.conf_thresh, "num_samples": args.num_samples, "refine_inliers": args.refine_inliers}
    return resolve_settings(EvalConfig, "eval", weights=weights or "default", config=args.config, flags=flags,
                            overrides=args.set)


def _print_summary(report: dict) -> None:
    rows = []
    if "reconstruction" in report:
        m = report["reconstruction"]["metrics"]
        rows += [("accuracy (cm)", m["accuracy_cm"]), ("completion (cm)", m["completion_cm"]),
                 ("chamfer-L1 (cm)", m["chamfer_l1_cm"]), ("F-score @1cm", m["fscore_1cm"]),
                 ("F-score @1.5cm", m["fscore_1_5cm"]), ("F-score @2cm", m["fscore_2cm"]),
                 ("completion ratio <5cm", m["completion_ratio_5cm"]),
                 ("alignment failed", report["reconstruction"]["failed"])]
    if "trajectory" in report:
        rows += [("ATE RMSE (cm)", report["trajectory"]["ate_rmse_m"] * 100),
                 ("matched poses", report["trajectory"]["num_poses"])]
    if "trajectory_evo" in report:
        rows += [("ATE RMSE, evo (cm)", report["trajectory_evo"]["ate_rmse_m"] * 100)]
    for name, value in rows:
        print(f"{name:<24} {value:.4f}" if isinstance(value, float) else f"{name:<24} {value}")


def load_pointmaps(pred_path: Path, n_gt: int):
    """Predicted ``pts3d (N, S, S, 3)``, ``conf (N, S, S)`` and the GT frame index of each, from a recon output
    directory (``preds/``) or an ``.npz``; malformed input raises ``ValueError`` naming the problem."""
    import numpy as np

    from slam3r.recon.output import RunOutput

    out = RunOutput(pred_path)
    data = np.load(pred_path) if not pred_path.is_dir() else {"pts3d": out.pred("registered_pcds"),
                                                               "conf": out.pred("registered_confs")}
    for key in ("pts3d", "conf"):
        if key not in data:
            raise ValueError(f"{pred_path}: missing array {key!r} (has {sorted(data)})")
    pts, conf = data["pts3d"], data["conf"]
    if pts.ndim != 4 or pts.shape[-1] != 3 or pts.shape[1] != pts.shape[2] or conf.shape != pts.shape[:3]:
        raise ValueError(f"{pred_path}: expected pts3d (N, S, S, 3) and conf (N, S, S), got "
                         f"{pts.shape} and {conf.shape}")
    if "frame_ids" in data:
        ids = data["frame_ids"].astype(int)
        if len(ids) != len(pts) or ids.min() < 0 or ids.max() >= n_gt:
            raise ValueError(f"{pred_path}: frame_ids must be {len(pts)} indices into the {n_gt} GT frames")
    elif len(pts) != n_gt:
        raise ValueError(f"mismatched frame counts: {pred_path} has {len(pts)} pointmaps but the GT has "
                         f"{n_gt} frames (store frame_ids in the npz to score a subset)")
    else:
        ids = np.arange(n_gt)
    return pts, conf, ids


def _check_pred(args: argparse.Namespace, pred_path: Path) -> None:
    """Refuse a missing prediction; a recon directory brings its trajectory.txt when --traj is not given."""
    from slam3r.recon.output import RunOutput

    out = RunOutput(pred_path)
    if pred_path.is_dir():  # a `slam3r recon` output directory
        out.require_preds("slam3r eval")
        if args.traj is None and out.trajectory_path.is_file():
            args.traj = str(out.trajectory_path)
    elif not pred_path.is_file():
        raise FileNotFoundError(f"prediction file not found: {pred_path}")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from slam3r.data import jsonio
    from slam3r.data.datasets import read_rgbd
    from slam3r.data.ply import read_ply
    from slam3r.data.pointmaps import sequence_gt_pointmaps
    from slam3r.data.trajectory_io import read_tum_trajectory
    from slam3r.errors import InputError
    from slam3r.eval.recon import evaluate_pointcloud, evaluate_pointmaps
    from slam3r.eval.trajectory import evaluate_trajectory, evo_ate

    try:
        pred_path = Path(args.pred)
        _check_pred(args, pred_path)
        settings = eval_settings(args, pred_path)
        seq = read_rgbd(args.gt)
        cfg = settings.value
        report: dict = {"pred": str(pred_path), "gt": str(args.gt), "gt_frames": len(seq), **settings.record()}
        traj = None
        if args.traj:
            t_pred, c2w_pred = read_tum_trajectory(args.traj)
            t_gt = seq.timestamps if seq.timestamps is not None else np.arange(len(seq), dtype=np.float64)
            traj = evaluate_trajectory(t_pred, c2w_pred, t_gt, seq.poses)
            report["trajectory"] = traj.to_dict()
            if args.evo:
                report["trajectory_evo"] = evo_ate(t_pred, c2w_pred, t_gt, seq.poses)
        if pred_path.is_dir() or pred_path.suffix.lower() == ".npz":
            pts, conf, ids = load_pointmaps(pred_path, len(seq))
            gt_pts, gt_valid = sequence_gt_pointmaps(seq, ids, size=pts.shape[1])
            recon = evaluate_pointmaps(pts, conf, gt_pts, gt_valid, cfg, args.heatmaps)
        elif pred_path.suffix.lower() == ".ply":
            cloud = read_ply(pred_path)
            gt_pts, gt_valid = sequence_gt_pointmaps(seq, size=args.gt_size)
            gt = gt_pts[gt_valid]
            if len(gt) > args.max_gt_points:
                gt = gt[np.random.RandomState(cfg.seed).choice(len(gt), args.max_gt_points, replace=False)]
            init = np.loadtxt(args.sim3).reshape(4, 4) if args.sim3 else traj.alignment if traj else None
            recon = evaluate_pointcloud(cloud.xyz, gt, init, cfg, args.heatmaps)
        else:
            raise ValueError(f"{pred_path}: unsupported prediction type (expected .npz or .ply)")
        report["reconstruction"] = recon.to_dict()
    except ValueError as exc:  # malformed prediction / GT arrays (ConfigError is one too)
        raise InputError(str(exc)) from exc

    _print_summary(report)
    text = jsonio.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"report written to {args.out}")
    else:
        print(text)
    return 0
