"""Does a model register frames? Relative rotations recovered by I2P and by the full pipeline vs ground truth.

    python bench/bench_registration.py [--weights default] [--seeds 1000001 ...] [--stride 3] [--set KEY=VALUE ...]

A fast check (about 15 s per scene with the bundled model on CPU) of the ability the quality benchmark
(``bench_quality.py``) needs first: recovering how the camera turns between keyframes. Per held-out scene:

* I2P: for keyframes ``k`` with windows ``[k, k -+ s, k -+ 2s]``, the rotation between the previous keyframe's own
  pointmap and its points as predicted in ``k``'s frame (a similarity fit), against the GT relative rotation;
* pipeline: the camera rotations with the weights' settings (their recon.yaml, ``--config``, ``--set``) between
  consecutive frames and over the whole sequence, against GT.

``recovered`` is the mean predicted angle over the mean GT angle: about 0 for a rotation-blind model, 1 for one
that turns as much as the camera does; ``error`` is the mean geodesic angle between predicted and GT relative
rotations. Prints a table and a ``BENCH {json}`` line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from slam3r.data.preprocess import to_tensor
from slam3r.geometry import rotation_angle_deg, umeyama

SEEDS = (1_000_001, 1_000_002, 1_000_003)


def i2p_relative_rotations(i2p, rgb: np.ndarray, c2w: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and GT rotations ``(K, 3, 3)`` taking keyframe ``k - stride``'s camera frame to keyframe ``k``'s."""
    n, s = len(rgb), stride
    keys = list(range(2 * s, n - 2 * s, s))
    with torch.no_grad():
        tokens = i2p.encode(to_tensor(rgb))
        own, prev_in_k = {}, {}
        for k in keys:
            out = i2p(tokens[[k, k - 2 * s, k - s, k + s, k + 2 * s]][:, None], 0)
            own[k], prev_in_k[k] = out.pts3d[0, 0].reshape(-1, 3).numpy(), out.pts3d[2, 0].reshape(-1, 3).numpy()
    pairs = [k for k in keys if k - s in own]
    pred = np.stack([umeyama(own[k - s], prev_in_k[k])[1] for k in pairs])
    gt = np.stack([c2w[k, :3, :3].T @ c2w[k - s, :3, :3] for k in pairs])
    return pred, gt


def pipeline_rotations(i2p, l2w, rgb: np.ndarray, cfg) -> np.ndarray:
    """Camera-to-world rotations ``(N, 3, 3)`` estimated by the offline pipeline with ``cfg`` (a ReconConfig); NaN
    for frames it did not register."""
    import tempfile

    from slam3r.recon.run import reconstruct

    results = []
    with tempfile.TemporaryDirectory() as out:
        reconstruct([(i, im, None) for i, im in enumerate(rgb)], i2p, l2w, cfg, out, progress=False,
                    on_result=results.append)
    return np.stack([r.pose_c2w[:3, :3] for r in results])


def registered(rot: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's rotations ``(N, 3, 3)`` and the ground-truth ones of ``c2w`` ``(N, 4, 4)`` for the frames it
    registered (the others have NaN poses; comparing them would make every mean NaN)."""
    keep = np.isfinite(rot).all(axis=(1, 2))
    return rot[keep], c2w[keep, :3, :3]


def frame_steps(rot: np.ndarray) -> np.ndarray:
    """Frame-to-frame relative rotations ``(N - 1, 3, 3)`` of rotations ``(N, 3, 3)``."""
    return np.swapaxes(rot[:-1], -1, -2) @ rot[1:]


def compare(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Recovered fraction and mean error (degrees) of relative rotations ``(K, 3, 3)``."""
    gt_deg, pred_deg = rotation_angle_deg(gt).mean(), rotation_angle_deg(pred).mean()
    return {"gt_deg": float(gt_deg), "pred_deg": float(pred_deg), "recovered": float(pred_deg / max(gt_deg, 1e-9)),
            "error_deg": float(rotation_angle_deg(np.swapaxes(pred, -1, -2) @ gt).mean())}


def main() -> None:
    from slam3r.demo import DEMO_FRAMES, render_heldout
    from slam3r.runtime import add_runtime_arguments, recon_settings, runtime_from_args

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--frames", type=int, default=DEMO_FRAMES)
    parser.add_argument("--stride", type=int, default=3, help="keyframe stride of the I2P check")
    add_runtime_arguments(parser, device_default="cpu")
    args = parser.parse_args()
    cfg = recon_settings(args).value
    rt = runtime_from_args(args)
    i2p, l2w = rt.i2p, rt.l2w
    rows = []
    for seed in args.seeds:
        seq = render_heldout(seed, args.frames, i2p.cfg.img_size[0])
        i2p_stats = compare(*i2p_relative_rotations(i2p, seq.rgb, seq.c2w, args.stride))
        rot, gt = registered(pipeline_rotations(i2p, l2w, seq.rgb, cfg), seq.c2w)
        step = compare(frame_steps(rot), frame_steps(gt))
        total = compare(rot[:1].swapaxes(-1, -2) @ rot[-1:], gt[:1].swapaxes(-1, -2) @ gt[-1:])
        rows.append({"seed": seed, "i2p": i2p_stats, "pipeline_step": step, "pipeline_total": total})
    print(f"{'scene':>9} | {'I2P keyframe pairs':^30} | {'pipeline, frame to frame':^30} | {'pipeline, first to last':^30}")
    print(f"{'':>9} | " + " | ".join(f"{'GT deg':>7}{'pred deg':>9}{'recovered':>10}{'err':>4}" for _ in range(3)))
    for r in rows:
        cells = [r[k] for k in ("i2p", "pipeline_step", "pipeline_total")]
        print(f"{r['seed']:>9} | " + " | ".join(f"{c['gt_deg']:7.1f}{c['pred_deg']:9.1f}{c['recovered']:10.2f}"
                                                 f"{c['error_deg']:4.0f}" for c in cells))
    print("BENCH " + json.dumps({"bench": "registration", "weights": args.weights, "overrides": args.set,
                                 "rows": rows}))


if __name__ == "__main__":
    main()
