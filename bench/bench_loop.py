"""Loop closure on synthetic loop sequences with ground-truth oracle networks and injected registration drift.

    python bench/bench_loop.py [--seeds 1000001 ...] [--frames 300] [--drift 0.3] [--stride 2] [--local-span 10]
        [--no-loops] [--pair-drift 0.3] [--contrast]

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

``--local-span 0`` turns the local edges off (loop edges only, the graph before them), ``--no-loops`` the loop
edges (local edges only); ``--pair-drift D`` gives the loop closer's pair I2P (loop and local edge verification)
an error of the registration drift's form and size ``D``, one per pair, instead of the oracle's exact answer.

Printed: ATE (cm, Sim(3)-aligned camera centres), accuracy / completion (cm, all frames' points after the same
alignment, published definitions), loop edges found, and the targets: ATE off / on >= 3, wrong within 10% of on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_recon_loop import CovisI2P, DriftL2W, drift_sim3, make_loop_scene  # noqa: E402
from test_recon_oracle import Scene  # noqa: E402

from slam3r.eval.metrics import cloud_metrics  # noqa: E402
from slam3r.eval.trajectory import ate  # noqa: E402
from slam3r.geometry.transforms import apply_sim3, matrix_to_sim3  # noqa: E402
from slam3r.recon.config import ReconConfig  # noqa: E402
from slam3r.recon.loop import apply_sim3_matrix, correct_pose  # noqa: E402
from slam3r.recon.offline import run_offline  # noqa: E402

SEEDS = (1_000_001, 1_000_002, 1_000_003, 1_000_004, 1_000_005)


class NoisyPairI2P:
    """The loop closer's I2P with the pair answers off by a random Sim(3) of the registration drift's size (the
    second view's points about their centroid, one error per pair): loop and local edges then measure as badly as
    one registration does, instead of exactly as the oracle would (``--pair-drift``)."""

    def __init__(self, i2p: CovisI2P, drift: float, seed: int) -> None:
        self.i2p, self.drift, self.seed = i2p, drift, seed

    def corr_scores(self, *args, **kwargs):
        return self.i2p.corr_scores(*args, **kwargs)

    def __call__(self, tokens, ref_id: int = 0, *, ref_only: bool = False):
        out = self.i2p(tokens, ref_id, ref_only=ref_only)
        ids = self.i2p.ids(tokens)
        pts = out.pts3d.numpy().astype(np.float64)
        for b in range(ids.shape[1]):
            rng = np.random.default_rng([self.seed, 7, *ids[:, b].tolist()])
            s, R, t = drift_sim3(rng, self.drift, pts[1 - ref_id, b].reshape(-1, 3))
            pts[1 - ref_id, b] = apply_sim3(s, R, t, pts[1 - ref_id, b])
        return type(out)(torch.from_numpy(pts.astype(np.float32)), out.conf)


def run(scene: Scene, K: np.ndarray, cfg: ReconConfig, drift: float, seed: int, wrong: bool,
        pair_drift: float = 0.0) -> dict:
    """One reconstruction; returns corrected centres (N, 3), points (N, P, 3) and loop statistics."""
    engine, it = run_offline(CovisI2P(scene, K), DriftL2W(scene, drift, seed), list(scene.rgb), cfg, chunk=16)
    if pair_drift and engine.loop is not None:
        engine.loop.i2p = NoisyPairI2P(engine.loop.i2p, pair_drift, seed)
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--drift", type=float, default=0.3, help="per-registration error scale (see docstring)")
    parser.add_argument("--contrast", action="store_true",
                        help="also run the wrong loop with plain least squares (robust optimisation off)")
    parser.add_argument("--off", type=float, nargs=3, metavar=("ATE", "ACC", "COMP"),
                        help="skip the loop-off run (its code path is unchanged) and use these figures (cm)")
    parser.add_argument("--stride", type=int, default=2, help="keyframe stride (2: one frame registered per call)")
    parser.add_argument("--local-span", type=int, default=ReconConfig.loop_local_span,
                        help="loop_local_span (0: no local edges, loop edges only)")
    parser.add_argument("--local-interval", type=int, default=ReconConfig.loop_local_interval,
                        help="loop_local_interval (a local edge tried every this many keyframes)")
    parser.add_argument("--no-loops", action="store_true",
                        help="ablation: loop_min_gap beyond the run (no loop edges; local edges only)")
    parser.add_argument("--pair-drift", type=float, default=0.0,
                        help="error of the loop closer's pair I2P, same units as --drift (0: the exact oracle)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import slam3r.recon.loop  # noqa: F401  (fail early without gtsam)

    base = dict(keyframe_stride=args.stride, win_r=2, num_scene_frame=3, buffer_size=6, buffer_strategy="fifo",
                conf_thres_l2w=3, loop_min_gap=10 * args.frames if args.no_loops else 60,
                loop_local_span=args.local_span, loop_local_interval=args.local_interval,
                loop_score="retrieval")  # the oracle's retrieval head scores GT co-visibility
    runs = {"off": (ReconConfig(**base), False), "on": (ReconConfig(**base, loop_closure=True), False),
            "wrong": (ReconConfig(**base, loop_closure=True), True)}
    if args.contrast:
        runs["wrong-ls"] = (ReconConfig(**base, loop_closure=True, loop_robust=False), True)
    table = {}
    for seed in args.seeds:
        scene, K = make_loop_scene(seed, args.frames)
        table[seed] = {name: score(run(scene, K, cfg, args.drift, seed, wrong, args.pair_drift), scene)
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
