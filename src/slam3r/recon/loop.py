"""Loop closure over all keyframes: detection, geometric verification, Sim(3) pose graph, per-frame corrections.

Every keyframe the engine inserts into its buffering set is recorded here (tokens on the CPU, camera-frame I2P
points, its similarity ``T_k`` camera -> world as the registration placed it), whether or not the bounded buffer
keeps it. For a new keyframe:

1. **Odometry edge** to the previous keyframe: ``T_prev^-1 T_k`` from the registration.
2. **Detection**: keyframes at least ``loop_min_gap`` frames older are scored against it, by the retrieval head
   (``loop_score: retrieval``, the network's own co-visibility score) or by the cosine of global descriptors
   (``descriptor``: mean of the L2-normalised encoder tokens); the ``loop_candidates`` best are verified, best
   first, until one fails (a keyframe outside a revisit costs one I2P call; inside one, each extra edge also ties
   the old keyframes together).
3. **Verification**: I2P on the pair (old keyframe as reference) gives both keyframes' points in the old camera;
   a robust similarity fit (``geometry.robust_umeyama``) of the new keyframe's own points to them measures
   ``T_old^-1 T_new``. The edge is kept when at least ``loop_min_inliers`` of the pixels agree within
   ``loop_inlier_thresh`` (fraction of the old keyframe's mean point distance) in both fits, and the views really
   overlap: at least ``loop_min_overlap`` of the new keyframe's points fall inside the old view and at least
   ``loop_min_agree`` of those lie on the old keyframe's own surface (depth within ``loop_inlier_thresh``). A
   partial overlap is enough (a revisit is entered gradually); I2P on an unrelated pair also puts the new points
   in view, but off the old surface. Edge sigmas: :data:`EDGE_SIGMA`.
4. **Local edges** (``loop_local_span``): one more verified edge per keyframe (per ``loop_local_interval``
   keyframes), to the keyframe up to ``loop_local_span`` keyframes back (the span halves when a verification
   fails and grows back after successes). A second measurement of the stretch the registration
   drifted over: the graph then also holds down the drift of stretches that are never revisited, where loop
   edges alone leave a chain fixed only at its ends. Robust like loop edges; they trigger no optimisation.
5. **Optimisation** (``recon.pose_graph``) when a verified loop edge disagrees with the current poses (by more
   than ``loop_inlier_thresh``; loops that agree already are only added, for the final optimisation); each keyframe's correction
   ``C_k = T_k_new T_k_old^-1`` is applied at once to the frames the engine still holds (so later registration
   continues in the corrected world) and accumulated for frames already emitted.

Steps 1-4 of a step's new keyframes run on one background thread (``loop_background``, shared by every loop closer
of the process) while the engine registers the next frames: :meth:`LoopCloser.submit` hands them over,
:meth:`LoopCloser.collect` (the engine's next loop step) waits for them and says whether to optimise (step 5, on
the caller's thread). The schedule is the same with or without the thread, so the results are identical: the
thread only decides where the work runs. Everything the work reads is its own (the keyframes' arrays are copied
at submission, and only the work changes the closer's keyframes and edges); every public method that reads them
waits for it first.

A frame's keyframe is the recorded keyframe nearest to it in the stream; a frame emitted before an optimisation
takes its keyframe's correction from it (:meth:`LoopCloser.corrections`).
Offline runs apply them to the output directory (:func:`apply_corrections`); streaming consumers read
:meth:`LoopCloser.map_update` after each optimisation (``version`` increments).
"""

from __future__ import annotations

import bisect
import time
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from slam3r.geometry.transforms import matrix_to_sim3, robust_umeyama, sim3_to_matrix
from slam3r.recon.camera import estimate_focal
from slam3r.recon.config import ReconConfig
from slam3r.recon.pose_graph import Edge, GraphResult, optimize_pose_graph
from slam3r.recon.threads import worker


VERIFY_POINTS = 1024
"""Pixels (evenly spread) used by the similarity fits of a loop verification."""

EDGE_SIGMA = 0.01
"""Pose-graph edge sigma: radians for rotation, log-scale for scale, and for translation this fraction of the
second keyframe's mean point depth (the edge's translation error is in its camera units, which are arbitrary:
a rotation error of ``EDGE_SIGMA`` about the scene moves the camera by about ``EDGE_SIGMA`` x depth)."""


def global_descriptor(tokens: Tensor) -> Tensor:
    """Global image descriptor from encoder tokens ``(..., S, C)``: mean of the L2-normalised tokens, normalised
    again -> ``(..., C)`` unit vectors (cosine similarity = dot product)."""
    d = torch.nn.functional.normalize(tokens.float(), dim=-1).mean(dim=-2)
    return torch.nn.functional.normalize(d, dim=-1)


@dataclass
class _Keyframe:
    fid: int
    tokens: Tensor  # (S, C) CPU
    descriptor: Tensor  # (C,) CPU
    local: np.ndarray  # (H*W, 3) float32 camera-frame I2P points
    shape: tuple[int, int]  # (H, W)
    weight: np.ndarray  # (H*W,) float32, 0 = invalid
    pose: np.ndarray  # (4, 4) similarity camera -> world, current
    depth: float  # mean distance of the valid points from the camera, camera units
    focal: float | None = None  # pixels, estimated on first use (``LoopCloser._focal``)


@dataclass
class MapUpdate:
    """Corrections of frames already emitted: ``corrections[i]`` (4x4 world similarity) maps the world points and
    poses emitted for ``frame_ids[i]`` into the current, loop-corrected world. Cumulative: replace, do not chain."""

    version: int
    frame_ids: list[int]
    corrections: np.ndarray  # (N, 4, 4)
    loops: list[tuple[int, int]] = field(default_factory=list)
    """The loop edges (keyframe ids) the latest optimisation had."""


def apply_sim3_matrix(C: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points ``(..., 3)`` mapped by a 4x4 similarity matrix ``C`` (same dtype as ``pts``)."""
    return (pts @ C[:3, :3].T.astype(pts.dtype) + C[:3, 3].astype(pts.dtype)).astype(pts.dtype)


def correct_pose(C: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Rigid camera-to-world pose ``(4, 4)`` moved by the world similarity ``C``: rotation and centre follow, the
    result stays rigid (the scale acts on the world, not on the camera)."""
    s, R, _ = matrix_to_sim3(C)
    out = np.eye(4)
    out[:3, :3] = R @ c2w[:3, :3]
    out[:3, 3] = C[:3, :3] @ c2w[:3, 3] + C[:3, 3]
    return out


class LoopCloser:
    """Keyframe memory + pose graph (see module docstring). ``i2p`` verifies candidate pairs."""

    def __init__(self, i2p, cfg: ReconConfig, device: torch.device) -> None:
        self.i2p, self.cfg, self.device = i2p, cfg, device
        self.kfs: dict[int, _Keyframe] = {}
        self.order: list[int] = []  # keyframe ids in insertion (= frame) order
        self.edges: list[Edge] = []
        self.emitted: dict[int, int] = {}  # emitted frame -> map version at its emission
        self.history: list[dict[int, np.ndarray]] = []  # per optimisation: world correction by keyframe
        self.version = 0
        self.optimised_loops: list[tuple[int, int]] = []  # loop edges of the latest optimisation
        self.last: GraphResult | None = None
        self._dirty = False
        self._pending = False  # a loop edge disagrees with the current poses
        self._since_opt = 0  # keyframes since the last optimisation
        self._span = cfg.loop_local_span  # current local-edge span, keyframes (``_add_local``)
        self.stats = {"candidates": 0, "verified": 0, "local": 0, "optimisations": 0}
        self.busy_s = 0.0  # seconds spent in add_keyframe (on the loop thread when ``loop_background``)
        self._job: Future | None = None  # the keyframes handed over by :meth:`submit`, until :meth:`collect`

    # -------------------------------------------------------------------------------------------- hand-over
    def submit(self, keyframes: list[tuple[int, Tensor, Tensor, Tensor, Tensor]],
               autocast: Callable[[], AbstractContextManager]) -> None:
        """Hand keyframes ``(fid, tokens, local, world, weight)`` (as :meth:`add_keyframe` takes them) to the loop
        thread (``loop_background``; else they are added now); :meth:`collect` reads the outcome. Waits for an
        earlier hand-over that was not collected (its outcome then only counts at the final optimisation)."""
        self._settle()
        items = [(fid, tokens.detach().cpu().clone(), local.detach().cpu().clone(), world.detach().cpu().clone(),
                  weight.detach().cpu().clone()) for fid, tokens, local, world, weight in keyframes]

        def work() -> bool:
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    return any([self.add_keyframe(*item, autocast) for item in items])
            finally:
                self.busy_s += time.perf_counter() - t0

        if self.cfg.loop_background:
            self._job = worker("slam3r-loop").submit(work)
        else:
            self._job = Future()
            try:
                self._job.set_result(work())
            except Exception as exc:  # noqa: BLE001 - re-raised by collect, as the thread's would be
                self._job.set_exception(exc)

    def collect(self) -> bool:
        """Wait for the keyframes of the last :meth:`submit`; returns whether to optimise now (see
        :meth:`add_keyframe`). Re-raises the work's exception."""
        job, self._job = self._job, None
        return bool(job.result()) if job is not None else False

    def _settle(self) -> None:
        """Wait for handed-over keyframes before reading or changing the graph (their outcome is kept for the
        final optimisation: :meth:`add_keyframe` already recorded the pending loop)."""
        self.collect()

    # -------------------------------------------------------------------------------------------- keyframes
    def add_keyframe(self, fid: int, tokens: Tensor, local: Tensor, world: Tensor, weight: Tensor,
                     autocast: Callable[[], AbstractContextManager]) -> bool:
        """Record keyframe ``fid`` (tokens ``(S, C)``, camera / world points ``(H, W, 3)``, weights ``(H, W)``),
        add its odometry, verified loop and local (:meth:`_add_local`) edges; returns whether to optimise now: a
        loop edge disagrees with the current poses by more than ``loop_inlier_thresh`` and
        ``loop_optimize_interval`` keyframes have passed since the last optimisation (consistent loops only wait
        for the final one).
        ``autocast()`` gives the networks' autocast context."""
        loc = local.reshape(-1, 3).float().cpu().numpy()
        wld = world.reshape(-1, 3).float().cpu().numpy()
        w = weight.reshape(-1).float().cpu().numpy()
        sub = slice(None, None, max(1, len(loc) // VERIFY_POINTS))
        try:
            s, R, t, _ = robust_umeyama(loc[sub], wld[sub], w[sub], self._thresh(wld[sub]), iters=1)
        except ValueError:  # nothing confident: the keyframe cannot anchor anything
            return False
        depth = float(np.linalg.norm(loc[sub][w[sub] > 0], axis=1).mean())
        kf = _Keyframe(fid, tokens.detach().cpu(), global_descriptor(tokens.detach()).cpu(), loc,
                       tuple(local.shape[:2]), w, sim3_to_matrix(s, R, t), depth)
        if self.order:
            prev = self.kfs[self.order[-1]]
            self._add_edge(prev.fid, kf, np.linalg.inv(prev.pose) @ kf.pose, "odometry")
        self.kfs[fid] = kf
        self.order.append(fid)
        cands, local = self._candidates(kf, autocast), self._local_target(kf)
        first = [self.kfs[c] for c in cands[:1]] + ([local] if local is not None else [])
        pairs = dict(zip([o.fid for o in first], self._pair_i2p(first, kf, autocast)))  # one batched I2P call
        for cand in cands:  # best first, until one fails: outside a revisit that is the one batched call
            rel = self._verify(self.kfs[cand], kf, autocast, pairs.pop(cand, None))
            if rel is None:
                break
            self._add_edge(cand, kf, rel, "loop")
            self.stats["verified"] += 1
            self._pending |= self._disagreement(self.kfs[cand], kf, rel) > self.cfg.loop_inlier_thresh
        if local is not None:
            self._add_local(kf, local, self._verify(local, kf, autocast, pairs[local.fid]))
        self._since_opt += 1
        return self._pending and self._since_opt >= self.cfg.loop_optimize_interval

    def _local_target(self, kf: _Keyframe) -> _Keyframe | None:
        """The keyframe a local edge (``loop_local_span``) of ``kf`` goes to: ``span`` keyframes before it
        (``span`` >= 2: the previous one has the odometry edge), on every ``loop_local_interval``-th keyframe;
        none once that keyframe is old enough to be a loop candidate. ``span`` adapts to the camera's motion
        (:meth:`_add_local`)."""
        if (len(self.order) - 1) % self.cfg.loop_local_interval:
            return None
        span = min(self._span, len(self.order) - 1)
        if span < 2:
            return None
        old = self.kfs[self.order[-1 - span]]
        return None if old.fid <= kf.fid - self.cfg.loop_min_gap else old

    def _add_local(self, kf: _Keyframe, old: _Keyframe, rel: np.ndarray | None) -> None:
        """The local edge ``old -> kf`` measured as ``rel`` (``None``: its verification failed). The span starts
        at ``loop_local_span``, halves when a verification fails (the views no longer overlap) and grows by one
        after a success, up to ``loop_local_span``."""
        span = len(self.order) - 1 - self.order.index(old.fid)
        if rel is None:
            self._span = max(2, span // 2)
            return
        self._span = min(self.cfg.loop_local_span, span + 1)
        self._add_edge(old.fid, kf, rel, "local")
        self.stats["local"] += 1

    def _add_edge(self, i: int, new: _Keyframe, rel: np.ndarray, kind: str) -> None:
        """Edge ``i -> new.fid`` measuring ``rel`` (4x4), with sigmas per :data:`EDGE_SIGMA`."""
        self.edges.append(Edge(i, new.fid, rel, kind, (EDGE_SIGMA, EDGE_SIGMA * new.depth, EDGE_SIGMA)))
        self._dirty |= kind != "odometry"

    def _disagreement(self, old: _Keyframe, new: _Keyframe, rel: np.ndarray) -> float:
        """How far the loop edge would move the new keyframe's points from where the current poses put them, as a
        fraction of their mean distance from the camera (0 = the loop is already closed)."""
        pts = new.local[new.weight > 0][::16]
        moved = apply_sim3_matrix(old.pose @ rel, pts) - apply_sim3_matrix(new.pose, pts)
        scale = np.linalg.norm(apply_sim3_matrix(new.pose, pts) - new.pose[:3, 3], axis=1).mean() + 1e-12
        return float(np.linalg.norm(moved, axis=1).mean() / scale)

    def _thresh(self, pts: np.ndarray) -> float:
        return self.cfg.loop_inlier_thresh * float(np.linalg.norm(pts, axis=1).mean() + 1e-12)

    def _candidates(self, kf: _Keyframe, autocast) -> list[int]:
        old = [k for k in self.order if k <= kf.fid - self.cfg.loop_min_gap]
        if not old:
            return []
        if self.cfg.loop_score == "descriptor":
            scores = torch.stack([self.kfs[k].descriptor for k in old]) @ kf.descriptor
        else:
            with torch.no_grad(), autocast():
                cand = torch.stack([self.kfs[k].tokens for k in old]).to(self.device)
                scores = self.i2p.corr_scores(kf.tokens[None].to(self.device), cand,
                                              self.cfg.retrieval_depth).float().mean(dim=(1, 2)).cpu()
        best = torch.argsort(scores, descending=True)[:self.cfg.loop_candidates].tolist()
        self.stats["candidates"] += len(best)
        return [old[i] for i in best]

    def _pair_i2p(self, olds: list[_Keyframe], new: _Keyframe, autocast) -> list[tuple[np.ndarray, np.ndarray]]:
        """I2P on the pairs ``(old, new)`` for each of ``olds`` (old keyframe as reference), batched in one call:
        per pair the points ``(2, H*W, 3)`` of both keyframes in the old camera frame and their confidences
        ``(2, H*W)``."""
        if not olds:
            return []
        tokens = torch.stack([torch.stack([old.tokens, new.tokens]) for old in olds], dim=1).to(self.device)
        with torch.no_grad(), autocast():
            out = self.i2p(tokens, 0)  # (2, B, ...)
        pts = out.pts3d.float().reshape(2, len(olds), -1, 3).cpu().numpy()
        conf = out.conf.float().reshape(2, len(olds), -1).cpu().numpy()
        return [(pts[:, b], conf[:, b]) for b in range(len(olds))]

    def _verify(self, old: _Keyframe, new: _Keyframe, autocast,
                pair: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
        """``T_old^-1 T_new`` measured by I2P on the pair (``pair``: its :meth:`_pair_i2p` output, computed here
        when not given), or ``None`` when too few pixels agree."""
        pts, conf = pair if pair is not None else self._pair_i2p([old], new, autocast)[0]
        thresh, need = self._thresh(old.local), self.cfg.loop_min_inliers
        sub = slice(None, None, max(1, len(old.local) // VERIFY_POINTS))  # evenly spread pixels
        va, vb = old.weight[sub] > 0, new.weight[sub] > 0
        try:  # the pair's scale (and any residual frame change) onto the old keyframe's own points
            sa, ra, ta, in_a = robust_umeyama(pts[0, sub], old.local[sub], conf[0, sub] * va, thresh, iters=2)
            if in_a.sum() < need * max(1, va.sum()):
                return None
            pb = sa * pts[1] @ ra.T + ta
            seen, agree = self._overlap(old, pb, new.weight > 0)
            if seen < self.cfg.loop_min_overlap or agree < self.cfg.loop_min_agree:
                return None
            s, R, t, in_b = robust_umeyama(new.local[sub], pb[sub], conf[1, sub] * vb, thresh, iters=2)
        except ValueError:
            return None
        if in_b.sum() < need * max(1, vb.sum()):
            return None
        return sim3_to_matrix(s, R, t)

    def _overlap(self, old: _Keyframe, pts: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
        """How the new keyframe's valid points ``pts`` ``(H*W, 3)`` (in the old camera frame) meet the old view:
        ``(seen, agree)``: the fraction of them that project inside the old image (in front of the camera), and
        the fraction of those that land on the old keyframe's own surface (depth within ``loop_inlier_thresh``).
        A true revisit agrees wherever the views overlap, however partly; I2P merely agreeing with itself on the
        new frame's shape puts its points somewhere in the old view, off the old surface."""
        h, w = old.shape
        f = self._focal(old)
        z = pts[:, 2]
        front = valid & (z > 1e-6)
        u = np.rint(f * pts[:, 0] / np.maximum(z, 1e-6) + (w - 1) / 2).astype(np.int64)
        v = np.rint(f * pts[:, 1] / np.maximum(z, 1e-6) + (h - 1) / 2).astype(np.int64)
        inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        idx = v[inside] * w + u[inside]
        za = old.local[idx, 2]
        agree = (old.weight[idx] > 0) & (np.abs(z[inside] - za) < self.cfg.loop_inlier_thresh * np.abs(za))
        n_in = int(inside.sum())
        return n_in / max(1, int(valid.sum())), float(agree.sum() / max(1, n_in))

    def _focal(self, kf: _Keyframe) -> float:
        """Focal length (pixels) of a keyframe's I2P points, estimated once."""
        if kf.focal is None:
            h, w = kf.shape
            kf.focal = float(estimate_focal(torch.from_numpy(kf.local.reshape(h, w, 3)),
                                            torch.from_numpy((kf.weight > 0).reshape(h, w)).float()))
        return kf.focal

    def add_loop_edge(self, i: int, j: int, rel: np.ndarray) -> None:
        """Add a loop edge by hand (e.g. a known revisit, or a deliberately wrong one in a robustness test)."""
        self._settle()
        if i not in self.kfs or j not in self.kfs:
            raise ValueError(f"loop edge {i} -> {j}: both ends must be recorded keyframes")
        self._add_edge(i, self.kfs[j], np.asarray(rel, dtype=np.float64), "loop")

    # -------------------------------------------------------------------------------------------- graph
    def optimize(self) -> dict[int, np.ndarray]:
        """Optimise the graph; returns this round's world correction ``C_k`` per keyframe (and updates poses)."""
        self._settle()
        if not self._dirty:
            return {}
        self.last = optimize_pose_graph({k: kf.pose for k, kf in self.kfs.items()}, self.edges,
                                        robust=self.cfg.loop_robust)
        deltas = {k: self.last.poses[k] @ np.linalg.inv(kf.pose) for k, kf in self.kfs.items()}
        for k, kf in self.kfs.items():
            kf.pose = self.last.poses[k]
        self._dirty = self._pending = False
        self._since_opt = 0
        self.history.append(deltas)
        self.optimised_loops = [(e.i, e.j) for e in self.edges if e.kind == "loop"]
        self.version += 1
        self.stats["optimisations"] += 1
        return deltas

    def keyframe_of(self, fid: int, among: list[int] | None = None) -> int:
        """The keyframe nearest to frame ``fid`` by frame index (the earlier one on a tie), among ``among``
        (sorted ids; default all recorded keyframes)."""
        ids = self.order if among is None else among
        i = bisect.bisect_left(ids, fid)
        if i == 0:
            return ids[0]
        if i == len(ids) or fid - ids[i - 1] <= ids[i] - fid:
            return ids[i - 1]
        return ids[i]

    def note_emitted(self, fid: int) -> None:
        """Remember the map version the frame's result was emitted in (later corrections apply to it)."""
        self.emitted[fid] = self.version

    def corrections(self, final: bool = True) -> dict[int, np.ndarray]:
        """Per emitted frame: the 4x4 world similarity taking its emitted points / pose to the corrected world,
        the product of its nearest keyframe's correction in every optimisation since its emission. ``final``:
        first a final optimisation if edges were added since the last one (the end of a run; mid-stream the
        engine alone optimises, when it can also move the frames it holds)."""
        if final:
            self.optimize()
        keys = [sorted(d) for d in self.history]
        out = {}
        for f, version in self.emitted.items():
            C = np.eye(4)
            for deltas, ids in zip(self.history[version:], keys[version:]):
                C = deltas[self.keyframe_of(f, ids)] @ C
            out[f] = C
        return out

    def map_update(self, final: bool = True) -> MapUpdate:
        """Current corrections of every emitted frame, for streaming consumers (see :class:`MapUpdate`;
        ``final`` as in :meth:`corrections`: ``False`` while the stream goes on)."""
        corr = self.corrections(final)
        ids = sorted(corr)
        mats = np.stack([corr[f] for f in ids]) if ids else np.zeros((0, 4, 4))
        return MapUpdate(self.version, ids, mats, list(self.optimised_loops))

    def summary(self) -> dict:
        """Counts for ``summary.json``: keyframes, loop edges found / kept by the robust graph, optimisations."""
        self._settle()
        loops = [e for e in self.edges if e.kind == "loop"]
        robust = [e for e in self.edges if e.kind != "odometry"]  # GraphResult.loop_inliers' order
        kept = [e for e, ok in zip(robust, self.last.loop_inliers if self.last is not None else []) if ok]
        return {"keyframes": len(self.order), "loop_edges": [[e.i, e.j] for e in loops],
                "loop_edges_kept": sum(e.kind == "loop" for e in kept),
                "local_edges_kept": sum(e.kind == "local" for e in kept), **self.stats,
                "busy_s": round(self.busy_s, 3)}


def apply_corrections(out_dir: str | Path, corrections: dict[int, np.ndarray]) -> None:
    """Apply per-frame world corrections (frame id -> 4x4 similarity) to a finished recon directory in place:
    ``preds/registered_pcds.npy``, ``cameras.json`` poses and ``trajectory.txt``; the point cloud files are then
    rewritten by the caller (``recon.output`` owns the layout). Frames that were not registered have no pose (and
    no trajectory line) to correct and stay as they are."""
    from slam3r.recon.output import RunOutput, unregistered_notes

    out = RunOutput(out_dir)
    cams = out.cameras()
    pts_path = out.pred_path("registered_pcds")
    pts = np.load(pts_path, mmap_mode="r+") if pts_path.is_file() else None
    stamps, poses = out.trajectory()
    registered = [i for i, cam in enumerate(cams) if cam["pose_c2w"] is not None]  # one trajectory line each
    for row, i in enumerate(registered):
        C = corrections.get(cams[i]["frame_id"])
        if C is None:
            continue
        poses[row] = correct_pose(C, np.asarray(cams[i]["pose_c2w"]))
        cams[i]["pose_c2w"] = np.round(poses[row], 8).tolist()
        if pts is not None:
            pts[i] = apply_sim3_matrix(C, np.asarray(pts[i]))
    if pts is not None:
        pts.flush()
        del pts
    out.write_cameras(cams)
    out.write_trajectory(stamps, poses, notes=unregistered_notes(cams))


def finish_output(out_dir: str | Path, corrections: dict[int, np.ndarray], scene: str, cfg: ReconConfig,
                  keep_preds: bool) -> None:
    """After ``ReconWriter.close``: apply the final loop ``corrections`` (``LoopCloser.corrections``) to the
    directory (predictions, poses, trajectory), rewrite the point cloud files from the corrected predictions and
    drop ``preds/`` if the run did not ask to keep them (``summary.json`` already holds the loop statistics, from
    ``Engine.summary``). Per-frame PLYs (``--frame-plys``) stay as registered, before the correction."""
    from slam3r.recon.output import RunOutput

    out = RunOutput(out_dir, scene)
    apply_corrections(out_dir, corrections)
    out.write_cloud(out.select(cfg.conf_thres_l2w, cfg.num_points_save, cfg.seed))
    if not keep_preds:
        out.drop_preds()
