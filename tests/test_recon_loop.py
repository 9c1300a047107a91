"""Loop closure: robust similarity fits, the GTSAM Sim(3) pose graph (with a wrong loop), and the engine with GT
oracle networks plus injected per-keyframe registration drift on a 1.25-loop sequence (offline and streaming)."""

from __future__ import annotations

import contextlib
import json
import threading

import numpy as np
import pytest
import torch

from slam3r.data.synth import render_sequence
from slam3r.data.trajectory_io import read_tum_trajectory
from slam3r.eval.trajectory import ate
from slam3r.geometry.camera import backproject_depth
from slam3r.geometry.transforms import apply_sim3, quat_to_rotmat, robust_umeyama, sim3_to_matrix, umeyama
from slam3r.models import Pointmaps
from slam3r.recon.config import ReconConfig
from test_recon_oracle import SCALE_I2P, OracleI2P, OracleL2W, Scene, frame_id_image

pytest.importorskip("gtsam")


class CovisI2P(OracleI2P):
    """Oracle I2P whose retrieval head scores GT co-visibility: 1 + 10 x the fraction of the candidate's points
    (a fixed 8 x 8 sample) in front of the query camera and inside its field of view."""

    def __init__(self, scene: Scene, K: np.ndarray) -> None:
        super().__init__(scene)
        s = scene.world.shape[1]
        grid = np.linspace(0, s - 1, 8).astype(int)
        self.sample = scene.world[:, grid][:, :, grid].reshape(len(scene.world), -1, 3)
        self.K, self.size = K, s

    def corr_scores(self, ref: torch.Tensor, cand: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        q, c = self.ids(ref[:, None]).reshape(-1), self.ids(cand[:, None]).reshape(-1)
        scores = np.zeros((len(c), len(q)))
        for b, qi in enumerate(q):
            w2c = np.linalg.inv(self.scene.c2w[qi])
            cam = self.sample[c] @ w2c[:3, :3].T + w2c[:3, 3]  # (M, 64, 3)
            z = cam[..., 2]
            uv = cam[..., :2] / np.maximum(z, 1e-6)[..., None] * self.K[[0, 1], [0, 1]] + self.K[:2, 2]
            inside = (z > 0.05) & (uv >= 0).all(-1) & (uv <= self.size - 1).all(-1)
            scores[:, b] = 1 + 10 * inside.mean(-1)
        return torch.from_numpy(scores).float()[..., None].expand(-1, -1, 16)


class DriftL2W(OracleL2W):
    """Oracle L2W whose every answer is moved by a small random Sim(3) about the scene frames' centroid."""

    def __init__(self, scene: Scene, drift: float, seed: int) -> None:
        super().__init__(scene)
        self.drift, self.seed = drift, seed

    def __call__(self, tokens, pts3d, ref_ids, *, sources_only=False) -> Pointmaps:
        out = super().__call__(tokens, pts3d, ref_ids, sources_only=sources_only)
        ids = OracleI2P.ids(tokens)
        pts = out.pts3d.numpy().copy()
        for b in range(ids.shape[1]):
            rng = np.random.default_rng([self.seed, int(ids[list(ref_ids), b].max())])  # one error per keyframe
            s, R, t = drift_sim3(rng, self.drift, pts3d[list(ref_ids), b].reshape(-1, 3).numpy())
            pts[:, b] = apply_sim3(s, R, t, pts[:, b].astype(np.float64)).astype(np.float32)
        return Pointmaps(torch.from_numpy(pts), out.conf)


def drift_sim3(rng: np.random.Generator, drift: float, pts: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """A small random similarity about the centroid of ``pts`` ``(N, 3)``: rotation ``drift`` degrees, scale
    ``drift`` % and translation ``drift`` % of the points' spread (standard deviations) -> ``(s, R, t)``."""
    pts = pts.astype(np.float64)
    centre = pts.mean(0)
    spread = float(np.linalg.norm(pts - centre, axis=1).mean())
    angle = np.radians(drift) * rng.normal(size=3)
    R = quat_to_rotmat(np.r_[np.sin(np.linalg.norm(angle) / 2) * angle / max(np.linalg.norm(angle), 1e-12),
                             np.cos(np.linalg.norm(angle) / 2)])
    s = float(np.exp(drift / 100 * rng.normal()))
    return s, R, centre - s * R @ centre + drift / 100 * spread * rng.normal(size=3)

def make_loop_scene(seed: int, frames: int) -> tuple[Scene, np.ndarray]:
    """The generator's 1.25-loop handheld sequence at the oracles' 64 px, with frame ids stamped; and K."""
    seq = render_sequence(seed=seed, num_frames=frames, width=64, height=64, kind="handheld")
    cam = backproject_depth(seq.depth, seq.K)
    world = cam @ np.transpose(seq.c2w[:, None, :3, :3], (0, 1, 3, 2)) + seq.c2w[:, None, None, :3, 3]
    rgb = np.stack([frame_id_image(im, i) for i, im in enumerate(seq.rgb)])
    return Scene(rgb, cam.astype(np.float32), world.astype(np.float32), seq.c2w), seq.K


def _random_sim3(rng: np.random.Generator, rot: float, trans: float, scale: float) -> np.ndarray:
    R = quat_to_rotmat(np.r_[rng.normal(0, rot / 2, 3), 1.0])
    return sim3_to_matrix(float(np.exp(rng.normal(0, scale))), R, rng.normal(0, trans, 3))


def test_robust_umeyama_ignores_outliers():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(400, 3))
    R = quat_to_rotmat(np.array([0.2, -0.1, 0.4, 0.9]))
    dst = apply_sim3(1.7, R, np.array([0.3, -2.0, 1.0]), src) + rng.normal(0, 1e-3, src.shape)
    bad = rng.random(400) < 0.3
    dst[bad] += rng.normal(0, 2.0, (bad.sum(), 3))
    s, R_est, t, inliers = robust_umeyama(src, dst, inlier_thresh=0.05, iters=20)
    assert s == pytest.approx(1.7, rel=1e-3) and np.abs(R_est - R).max() < 1e-3
    assert (inliers == ~bad).mean() > 0.98


def _ring_graph(n: int, seed: int):
    """Keyframes on a circle (period 40), odometry with noise, exact loops for the second lap."""
    from slam3r.recon.pose_graph import Edge

    rng = np.random.default_rng(seed)
    gt = {}
    for k in range(n):
        a = 2 * np.pi * k / 40
        gt[k] = sim3_to_matrix(1.0, quat_to_rotmat(np.array([0, 0, np.sin(a / 2), np.cos(a / 2)])),
                               np.array([3 * np.cos(a), 3 * np.sin(a), 0.0]))
    odo = [np.linalg.inv(gt[k - 1]) @ gt[k] @ _random_sim3(rng, 0.01, 0.02, 0.01) for k in range(1, n)]
    est = {0: gt[0]}
    for k in range(1, n):
        est[k] = est[k - 1] @ odo[k - 1]
    edges = [Edge(k - 1, k, odo[k - 1], "odometry") for k in range(1, n)]
    loops = [Edge(k - 40, k, np.linalg.inv(gt[k - 40]) @ gt[k], "loop") for k in range(40, n)]
    return gt, est, edges, loops


def _rmse(poses, gt):
    return float(np.sqrt(np.mean([np.sum((poses[k][:3, 3] - gt[k][:3, 3]) ** 2) for k in gt])))


def test_pose_graph_closes_loops_and_rejects_a_wrong_one():
    from slam3r.recon.pose_graph import Edge, optimize_pose_graph

    gt, est, edges, loops = _ring_graph(50, 1)
    drift = _rmse(est, gt)
    closed = optimize_pose_graph(est, edges + loops)
    assert _rmse(closed.poses, gt) < drift / 3
    np.testing.assert_allclose(closed.poses[0], gt[0], atol=1e-6)  # the gauge stays put
    wrong = Edge(5, 25, np.eye(4), "loop")  # "keyframe 25 is where keyframe 5 was": half a circle off
    robust = optimize_pose_graph(est, edges + loops + [wrong])
    assert robust.loop_inliers[-1] is False and all(robust.loop_inliers[:-1])
    assert _rmse(robust.poses, gt) <= 1.1 * _rmse(closed.poses, gt)
    plain = optimize_pose_graph(est, edges + loops + [wrong], robust=False)
    assert _rmse(plain.poses, gt) > 3 * _rmse(closed.poses, gt)  # without GNC the wrong loop wrecks it
    with pytest.raises(ValueError, match="without a pose"):
        optimize_pose_graph(est, [Edge(0, 99, np.eye(4), "loop")])


@pytest.fixture(scope="module")
def loop_scene():
    return make_loop_scene(1_000_003, 120)


LOOP_CFG = dict(keyframe_stride=2, win_r=2, num_scene_frame=3, buffer_size=6, buffer_strategy="fifo",
                conf_thres_l2w=3, loop_min_gap=40, loop_score="retrieval")  # oracle tokens carry only ids


@pytest.fixture(scope="module")
def drift_ate(loop_scene) -> float:
    """ATE (m) of the drifting reconstruction without loop closure."""
    from slam3r.recon.offline import run_offline

    scene, K = loop_scene
    _, it = run_offline(CovisI2P(scene, K), DriftL2W(scene, 0.5, 7), list(scene.rgb), ReconConfig(**LOOP_CFG))
    return ate(np.stack([r.pose_c2w[:3, 3] for r in it]), scene.c2w[:, :3, 3]).ate_rmse_m


def test_offline_loop_closure_through_the_output_directory(loop_scene, drift_ate, tmp_path):
    """``reconstruct`` with loop closure writes corrected predictions, poses and trajectory: ATE drops; the
    cloud and the per-frame predictions are corrected too, and ``--no-preds`` is still honoured."""
    from slam3r.data.ply import read_ply
    from slam3r.recon.run import reconstruct

    scene, K = loop_scene
    frames = [(i, im, None) for i, im in enumerate(scene.rgb)]
    out = tmp_path / "run"
    seen = []
    summary = reconstruct(frames, CovisI2P(scene, K), DriftL2W(scene, 0.5, 7),
                          ReconConfig(**LOOP_CFG, loop_closure=True), out, progress=False, on_result=seen.append)
    _, poses = read_tum_trajectory(out / "trajectory.txt")
    assert ate(poses[:, :3, 3], scene.c2w[:, :3, 3]).ate_rmse_m < 0.75 * drift_ate  # bench_loop.py: 300 frames
    info = summary.engine.loop_closure
    assert info["loop_edges"] and info["optimisations"] >= 1
    assert json.loads((out / "summary.json").read_text())["loop_closure"] == info
    cams = json.loads((out / "cameras.json").read_text())
    np.testing.assert_allclose(np.array([c["pose_c2w"] for c in cams]), poses, atol=1e-6)
    # every written point moved with its frame's camera: local points through the corrected pose, up to scale
    preds = np.load(out / "preds" / "registered_pcds.npy")
    for i in (0, 60, 119):
        s, R, t = umeyama(seen[i].pts3d_local.reshape(-1, 3), preds[i].reshape(-1, 3))
        np.testing.assert_allclose(R, poses[i][:3, :3], atol=1e-4)
    cloud = read_ply(out / "scene_recon.ply")
    assert len(cloud) == summary.points
    assert np.isin(cloud.xyz[:50, 0], preds[..., 0]).all()  # the cloud was rewritten from corrected predictions
    reconstruct(frames, CovisI2P(scene, K), DriftL2W(scene, 0.5, 7), ReconConfig(**LOOP_CFG, loop_closure=True),
                tmp_path / "nopreds", progress=False, keep_preds=False)
    assert not (tmp_path / "nopreds" / "preds" / "registered_pcds.npy").exists()


def test_streaming_map_updates_correct_emitted_frames(loop_scene, drift_ate):
    from slam3r.recon.loop import correct_pose
    from slam3r.recon.streaming import StreamingReconstructor

    scene, K = loop_scene
    rec = StreamingReconstructor(CovisI2P(scene, K), DriftL2W(scene, 0.5, 7),
                                 ReconConfig(**LOOP_CFG, loop_closure=True))
    results, versions, mid = [], [], []
    for im in scene.rgb:
        results += rec.push(im)
        versions.append(rec.engine.loop.version)
        up = rec.map_update(mid[-1].version if mid else 0)  # what a consumer polls (the service does)
        if up is not None:
            assert up.frame_ids == [r.frame_id for r in results] and up.version == versions[-1]
            mid.append(up)
    results += rec.flush()
    assert [r.frame_id for r in results] == list(range(len(scene.rgb)))
    assert versions[-1] >= 1 and versions[0] == 0 and mid  # corrections were published during the stream
    assert rec.map_update(mid[-1].version) is None or rec.engine.loop.version > mid[-1].version
    update = rec.map_update()
    assert update.version == rec.engine.loop.version and update.loops
    assert update.frame_ids == list(range(len(scene.rgb)))
    raw = np.stack([r.pose_c2w[:3, 3] for r in results])
    fixed = np.stack([correct_pose(C, r.pose_c2w)[:3, 3] for C, r in zip(update.corrections, results)])
    gt = scene.c2w[:, :3, 3]
    assert ate(fixed, gt).ate_rmse_m < min(0.75 * drift_ate, ate(raw, gt).ate_rmse_m)


def test_corrections_skip_frames_that_were_not_registered(tmp_path):
    """A loop correction of a result with an unregistered frame moves the registered ones only and keeps the
    trajectory's note for the other."""
    from slam3r.recon.loop import apply_corrections
    from test_app_scene import with_unregistered_frame

    out = with_unregistered_frame(tmp_path)
    shift = np.eye(4)
    shift[1, 3] = 2.0
    before = np.load(out / "preds" / "registered_pcds.npy")
    apply_corrections(out, {f: shift for f in range(4)})
    stamps, poses = read_tum_trajectory(out / "trajectory.txt")
    np.testing.assert_allclose(stamps, [0, 2, 3])
    np.testing.assert_allclose(poses[:, :3, 3], [[f, 2.0, 0] for f in (0, 2, 3)])
    assert "# frame 1 (timestamp_ns None) not registered: no confident point" in (out / "trajectory.txt").read_text()
    cams = json.loads((out / "cameras.json").read_text())
    assert cams[1]["pose_c2w"] is None and cams[2]["pose_c2w"][1][3] == 2.0
    after = np.load(out / "preds" / "registered_pcds.npy")
    np.testing.assert_allclose(after[[0, 2, 3], ..., 1], before[[0, 2, 3], ..., 1] + 2.0, atol=1e-6)
    np.testing.assert_array_equal(after[1], before[1])


class PlacedInViewI2P(CovisI2P):
    """A failing I2P: the second view's points come back in its own camera frame, as if it stood where the
    reference does (in view, but off the reference's surface), as a network does on an unrelated pair."""

    def __call__(self, tokens: torch.Tensor, ref_id: int = 0, *, ref_only: bool = False) -> Pointmaps:
        out = super().__call__(tokens, ref_id, ref_only=ref_only)
        ids = self.ids(tokens)
        pts = out.pts3d.clone()
        pts[1 - ref_id] = torch.from_numpy(self.scene.cam[ids[1 - ref_id]] * SCALE_I2P)
        return Pointmaps(pts, out.conf)


def _seen_by(scene, K, old: int, new: int) -> float:
    """GT fraction of frame ``new``'s points that frame ``old``'s camera sees."""
    w2c = np.linalg.inv(scene.c2w[old])
    p = scene.world[new].reshape(-1, 3) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = p[:, :2] / np.maximum(p[:, 2:], 1e-6) * K[[0, 1], [0, 1]] + K[:2, 2]
    return float(((p[:, 2] > 0.05) & (uv >= 0).all(1) & (uv <= scene.world.shape[1] - 1).all(1)).mean())


def test_loop_verification_keeps_partial_overlap_and_rejects_points_off_the_surface(loop_scene):
    """A revisit seen only in part is a loop (the old rule, overlap x agreement >= 0.5, dropped it); a pair whose
    I2P puts the new points in the old view but off the old surface is not."""
    from slam3r.recon.loop import LoopCloser

    scene, K = loop_scene
    partial = next(f for f in range(60, len(scene.rgb)) if 0.2 < _seen_by(scene, K, 0, f) < 0.45)
    unrelated = int(np.argmin([_seen_by(scene, K, 0, f) + _seen_by(scene, K, f, 0) for f in range(60)]))

    def loops(i2p, new: int) -> list:
        lc = LoopCloser(i2p, ReconConfig(**{**LOOP_CFG, "loop_min_gap": 1}, loop_closure=True), torch.device("cpu"))
        for fid in (0, new):
            tok = torch.zeros(16, 64)
            tok[0, 0] = fid
            lc.add_keyframe(fid, tok, torch.from_numpy(scene.cam[fid] * SCALE_I2P), torch.from_numpy(scene.world[fid]),
                            torch.ones(scene.cam.shape[1:3]), contextlib.nullcontext)
        return [e for e in lc.edges if e.kind == "loop"], lc

    found, lc = loops(CovisI2P(scene, K), partial)
    assert len(found) == 1
    np.testing.assert_allclose(found[0].rel, np.linalg.inv(lc.kfs[0].pose) @ lc.kfs[partial].pose, atol=1e-4)
    assert loops(PlacedInViewI2P(scene, K), partial)[0] == []
    assert loops(PlacedInViewI2P(scene, K), unrelated)[0] == []


def _closer(scene, cfg: dict, fids):
    """A loop closer fed GT keyframes ``fids`` (oracle I2P points, GT world points)."""
    from slam3r.recon.loop import LoopCloser

    lc = LoopCloser(CovisI2P(*scene), ReconConfig(**{**LOOP_CFG, **cfg}, loop_closure=True), torch.device("cpu"))
    sc, _ = scene
    for fid in fids:
        tok = torch.zeros(16, 64)
        tok[0, 0] = fid
        lc.add_keyframe(fid, tok, torch.from_numpy(sc.cam[fid] * SCALE_I2P), torch.from_numpy(sc.world[fid]),
                        torch.ones(sc.cam.shape[1:3]), contextlib.nullcontext)
    return lc


def test_local_edges_adapt_their_span_and_hold_down_drift_without_a_revisit(loop_scene):
    """``loop_local_span``: a verified edge to the keyframe that many keyframes back, the span halving when the
    views no longer overlap; with loops out of reach (gap larger than the run) they alone still reduce the drift,
    and they go through the robust graph (a wrong loop is rejected)."""
    from slam3r.recon.loop import correct_pose
    from slam3r.recon.offline import run_offline

    # keyframes 3 frames (11 degrees) apart: 0 -> 12 (4 back) fails, so 15 tries 2 back, 18 3 back, 21 4 back
    # (fails again), ...; where the scene allows (18 -> 30) 4 back passes
    fids = list(range(0, 40, 3))
    lc = _closer(loop_scene, {"loop_local_span": 4, "loop_local_interval": 1}, fids)
    local = [(e.i, e.j) for e in lc.edges if e.kind == "local"]
    assert local == [(0, 6), (0, 9), (9, 15), (9, 18), (18, 24), (18, 27), (18, 30), (21, 33), (24, 36), (27, 39)]
    assert lc.stats["local"] == len(local) and not lc.stats["verified"]  # no loop edges
    gt = {k: loop_scene[0].c2w[k] @ np.diag([1 / SCALE_I2P] * 3 + [1]) for k in (0, 6)}
    np.testing.assert_allclose(lc.edges[[e.kind for e in lc.edges].index("local")].rel[:3, :3],
                               (np.linalg.inv(gt[0]) @ gt[6])[:3, :3], atol=1e-4)
    every_other = _closer(loop_scene, {"loop_local_span": 2, "loop_local_interval": 2}, fids)
    assert [(e.i, e.j) for e in every_other.edges if e.kind == "local"] == [(f - 6, f) for f in range(6, 40, 6)]

    scene, K = loop_scene
    no_loops = {**LOOP_CFG, "loop_min_gap": 10_000}

    def run(span: int, wrong: bool = False):
        engine, it = run_offline(CovisI2P(scene, K), DriftL2W(scene, 0.5, 7), list(scene.rgb),
                                 ReconConfig(**no_loops, loop_closure=True, loop_local_span=span))
        results = list(it)
        if wrong:  # "the keyframe at a sixth of the run is where the one at two thirds is"
            order = engine.loop.order
            engine.loop.add_loop_edge(order[len(order) // 6], order[2 * len(order) // 3], np.eye(4))
        corr = engine.loop.corrections()
        fixed = np.stack([correct_pose(corr[r.frame_id], r.pose_c2w)[:3, 3] for r in results])
        return ate(fixed, scene.c2w[:, :3, 3]).ate_rmse_m, engine.loop.summary()

    plain, info = run(0)
    assert info["local"] == 0 and info["optimisations"] == 0
    held, info = run(10)
    assert info["local"] > 20 and info["local_edges_kept"] == info["local"] and not info["loop_edges"]
    assert held < 0.9 * plain  # x0.78 measured (4-keyframe spans: this short sequence turns fast)
    robust, info = run(10, wrong=True)
    assert robust <= 1.1 * held and info["loop_edges_kept"] == 0


def test_background_loop_thread_changes_where_the_work_runs_not_the_result(loop_scene):
    """``loop_background``: the same schedule on the loop thread as on the caller's, so streaming results, map
    updates and loop statistics are identical; the work ran on the thread (``busy_s`` counted there)."""
    from slam3r.recon.streaming import StreamingReconstructor

    scene, K = loop_scene

    def stream(background: bool):
        rec = StreamingReconstructor(CovisI2P(scene, K), DriftL2W(scene, 0.5, 7),
                                     ReconConfig(**LOOP_CFG, loop_closure=True, loop_background=background))
        threads = set()
        add = rec._engine(scene.rgb[0].shape).loop.add_keyframe

        def spy(*args, **kwargs):
            threads.add(threading.current_thread().name)
            return add(*args, **kwargs)

        rec.engine.loop.add_keyframe = spy
        results = [r for im in scene.rgb for r in rec.push(im)] + rec.flush()
        update = rec.engine.loop.map_update()
        return results, update, rec.engine.loop.summary(), threads

    (fg, fg_update, fg_info, fg_threads), (bg, bg_update, bg_info, bg_threads) = stream(False), stream(True)
    assert fg_threads == {threading.main_thread().name} and len(bg_threads) == 1
    assert next(iter(bg_threads)).startswith("slam3r-loop")
    assert fg_info["optimisations"] >= 1 and fg_info["verified"] >= 1
    assert {k: v for k, v in fg_info.items() if k != "busy_s"} == {k: v for k, v in bg_info.items() if k != "busy_s"}
    assert bg_info["busy_s"] > 0
    for a, b in zip(fg, bg, strict=True):
        np.testing.assert_array_equal(a.pts3d_world, b.pts3d_world)
        np.testing.assert_array_equal(a.pose_c2w, b.pose_c2w)
    assert fg_update.version == bg_update.version and fg_update.frame_ids == bg_update.frame_ids
    np.testing.assert_array_equal(fg_update.corrections, bg_update.corrections)


def test_loop_thread_errors_reach_the_caller(loop_scene):
    """An exception in the loop thread's work is raised by the engine's next loop step, not lost."""
    from slam3r.recon.streaming import StreamingReconstructor

    scene, K = loop_scene
    rec = StreamingReconstructor(CovisI2P(scene, K), DriftL2W(scene, 0.5, 7),
                                 ReconConfig(**LOOP_CFG, loop_closure=True))

    def broken(*args, **kwargs):
        raise RuntimeError("verification exploded")

    rec._engine(scene.rgb[0].shape).loop.add_keyframe = broken
    with pytest.raises(RuntimeError, match="verification exploded"):
        for im in scene.rgb:
            rec.push(im)
        rec.flush()
