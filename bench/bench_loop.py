"""Loop closure on synthetic loop sequences with ground-truth oracle networks and injected registration drift.

    python bench/bench_loop.py [--seeds 1000001 ...] [--frames 300] [--drift 0.3] [--stride 2]

Each held-out seed renders the generator's 1.25-loop handheld trajectory (the end revisits the start). The networks
are the GT oracles of ``tests/test_recon_oracle.py``; the oracle L2W is wrapped so that every registration against
the same latest keyframe is off by the same small random Sim(3), one per keyframe (rotation ``--drift`` degrees, translation ``--drift`` % of the scene frames' spread,
scale ``--drift`` %, standard deviations) about the scene frames' centroid. The buffering set is a short FIFO, so
the error accumulates as drift, as in a long video. The oracle retrieval head scores a candidate by GT co-visibility
(the fraction of its points inside the query camera's view).

Per seed, four runs of the same pipeline (offline driver):

* ``off``: ``loop_closure`` off;
* ``on``: loop closure on (retrieval scoring, I2P pair verification, GTSAM pose graph with GNC);
* ``wrong``: on, plus a deliberately wrong loop edge (a keyframe at 30% of the run said to sit right next to the
  keyframe at 60%), injected mid-run as if detection had produced it;
* ``wrong-ls`` (with ``--contrast``): the same wrong edge with the robust optimisation off (plain least squares).

Printed: ATE (cm, Sim(3)-aligned camera centres), accuracy / completion (cm, all frames' points after the same
alignment, published definitions), loop edges found, and the targets: ATE off / on >= 3, wrong within 10% of on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_recon_loop import CovisI2P, DriftL2W, make_loop_scene  # noqa: E402
from test_recon_oracle import Scene  # noqa: E402

from slam3r.eval.metrics import cloud_metrics  # noqa: E402
from slam3r.eval.trajectory import ate  # noqa: E402
from slam3r.geometry.transforms import apply_sim3, matrix_to_sim3  # noqa: E402
from slam3r.recon.config import ReconConfig  # noqa: E402
from slam3r.recon.loop import apply_sim3_matrix, correct_pose  # noqa: E402
from slam3r.recon.offline import run_offline  # noqa: E402

SEEDS = (1_000_001, 1_000_002, 1_000_003, 1_000_004, 1_000_005)


def run(scene: Scene, K: np.ndarray, cfg: ReconConfig, drift: float, seed: int, wrong: bool) -> dict:
    """One reconstruction; returns corrected centres (N, 3), points (N, P, 3) and loop statistics."""
    engine, it = run_offline(CovisI2P(scene, K), DriftL2W(scene, drift, seed), list(scene.rgb), cfg, chunk=16)
    n = len(scene.rgb)
    if wrong:
        loop, add = engine.loop, engine.loop.add_keyframe
        state = {"done": False}

        def add_with_wrong_loop(fid, *args):
            closed = add(fid, *args)
            if not state["done"] and fid >= 0.6 * n:
                early = [k for k in loop.order if k >= 0.3 * n][0]
                # "the keyframe at 30% sits right next to this one": the relative pose of two adjacent keyframes
                nxt = loop.order[loop.order.index(early) + 1]
                loop.add_loop_edge(early, fid, np.linalg.inv(loop.kfs[early].pose) @ loop.kfs[nxt].pose)
                state["done"] = closed = True
            return closed

        loop.add_keyframe = add_with_wrong_loop
    t0 = time.perf_counter()
    results = list(it)
    seconds = time.perf_counter() - t0
    corr = engine.loop.corrections() if engine.loop is not None else {}
    eye = np.eye(4)
    poses = np.stack([correct_pose(corr.get(r.frame_id, eye), r.pose_c2w) for r in results])
    pts = np.stack([apply_sim3_matrix(corr.get(r.frame_id, eye), r.pts3d_world[::4, ::4].reshape(-1, 3))
                    for r in results])
    info = engine.loop.summary() if engine.loop is not None else {}
    return {"centres": poses[:, :3, 3], "points": pts, "seconds": seconds, "loop": info}


def score(out: dict, scene: Scene) -> dict:
    rep = ate(out["centres"], scene.c2w[:, :3, 3])
    s, R, t = matrix_to_sim3(rep.alignment)
    pred = apply_sim3(s, R, t, out["points"].reshape(-1, 3).astype(np.float64))
    gt = scene.world[:, ::4, ::4].reshape(-1, 3)
    m, _, _ = cloud_metrics(pred, gt)
    loops = out["loop"].get("loop_edges", [])
    return {"ate": rep.ate_rmse_m * 100, "acc": m.accuracy_cm, "comp": m.completion_cm, "loops": len(loops),
            "kept": out["loop"].get("loop_edges_kept", 0), "seconds": out["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--drift", type=float, default=0.3, help="per-registration error scale (see docstring)")
    parser.add_argument("--contrast", action="store_true",
                        help="also run the wrong loop with plain least squares (robust optimisation off)")
    parser.add_argument("--off", type=float, nargs=3, metavar=("ATE", "ACC", "COMP"),
                        help="skip the loop-off run (its code path is unchanged) and use these figures (cm)")
    parser.add_argument("--stride", type=int, default=2, help="keyframe stride (2: one frame registered per call)")
    args = parser.parse_args()
    import slam3r.recon.loop  # noqa: F401  (fail early without gtsam)

    base = dict(keyframe_stride=args.stride, win_r=2, num_scene_frame=3, buffer_size=6, buffer_strategy="fifo",
                conf_thres_l2w=3, loop_min_gap=60,
                loop_score="retrieval")  # the oracle's retrieval head scores GT co-visibility
    runs = {"off": (ReconConfig(**base), False), "on": (ReconConfig(**base, loop_closure=True), False),
            "wrong": (ReconConfig(**base, loop_closure=True), True)}
    if args.contrast:
        runs["wrong-ls"] = (ReconConfig(**base, loop_closure=True, loop_robust=False), True)
    table = {}
    for seed in args.seeds:
        scene, K = make_loop_scene(seed, args.frames)
        table[seed] = {name: score(run(scene, K, cfg, args.drift, seed, wrong), scene)
                       for name, (cfg, wrong) in runs.items() if not (name == "off" and args.off)}
        if args.off:
            table[seed]["off"] = {"ate": args.off[0], "acc": args.off[1], "comp": args.off[2], "seconds": float("nan")}
        row = table[seed]
        print(f"seed {seed}: ATE off {row['off']['ate']:.2f} / on {row['on']['ate']:.2f} / wrong "
              f"{row['wrong']['ate']:.2f} / wrong-ls {row.get('wrong-ls', {}).get('ate', float('nan')):.2f} cm; "
              f"loops {row['on']['loops']} (kept {row['on']['kept']}); acc off {row['off']['acc']:.2f} / on "
              f"{row['on']['acc']:.2f}, comp off {row['off']['comp']:.2f} / on {row['on']['comp']:.2f} cm", flush=True)
    print("\n| seed | ATE off | ATE on | gain | acc off | acc on | comp off | comp on | ATE wrong loop (robust) | "
          "wrong / on | ATE wrong loop (least squares) | loops found / kept | s off / on |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = [("off", "ate"), ("on", "ate"), ("off", "acc"), ("on", "acc"), ("off", "comp"), ("on", "comp"),
            ("wrong", "ate"), ("wrong-ls", "ate")]
    for row in table.values():
        row.setdefault("wrong-ls", {"ate": float("nan")})
    means = {k: float(np.mean([table[s][k[0]][k[1]] for s in table])) for k in keys}
    gains = [table[s]["off"]["ate"] / table[s]["on"]["ate"] for s in table]
    ratios = [table[s]["wrong"]["ate"] / table[s]["on"]["ate"] for s in table]
    for seed, row in table.items():
        print(f"| {seed} | {row['off']['ate']:.2f} | {row['on']['ate']:.2f} | x{row['off']['ate'] / row['on']['ate']:.1f}"
              f" | {row['off']['acc']:.2f} | {row['on']['acc']:.2f} | {row['off']['comp']:.2f} | "
              f"{row['on']['comp']:.2f} | {row['wrong']['ate']:.2f} | {row['wrong']['ate'] / row['on']['ate']:.3f} | "
              f"{row['wrong-ls']['ate']:.2f} | {row['on']['loops']} / {row['on']['kept']} | "
              f"{row['off']['seconds']:.1f} / {row['on']['seconds']:.1f} |")
    print(f"| mean | {means[('off', 'ate')]:.2f} | {means[('on', 'ate')]:.2f} | x{np.mean(gains):.1f} | "
          f"{means[('off', 'acc')]:.2f} | {means[('on', 'acc')]:.2f} | {means[('off', 'comp')]:.2f} | "
          f"{means[('on', 'comp')]:.2f} | {means[('wrong', 'ate')]:.2f} | {np.mean(ratios):.3f} | "
          f"{means[('wrong-ls', 'ate')]:.2f} | | |")
    print(f"\nATE gain >= 3x on every seed: {min(gains) >= 3} (min x{min(gains):.1f}); wrong loop within 10% on "
          f"every seed: {max(ratios) <= 1.1} (max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
