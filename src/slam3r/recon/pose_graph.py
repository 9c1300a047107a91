"""Sim(3) pose graph over keyframes, optimised with GTSAM.

A node is a keyframe's similarity ``T_k`` (4x4, ``[[s R, t], [0, 1]]``) mapping its camera-frame (I2P) points to
the world; an edge ``(i, j, M)`` measures ``T_i^-1 T_j`` (odometry: consecutive keyframes as the registration
placed them; loop: a verified revisit; local: a verified edge to a recent keyframe). Scale is a node variable, so
scale drift is corrected too. Loop and local edges are the robust ones; odometry edges are known inliers.

Why GTSAM: it ships the Lie group ``Similarity3`` with ``BetweenFactorSimilarity3`` (no hand-written Jacobians),
Levenberg-Marquardt, and graduated non-convexity (``GncLMOptimizer``, truncated least squares) that rejects
outlier loop edges even when the inliers also start with large residuals (a plain Huber / Cauchy kernel down-weights
a true loop as much as a false one when drift is large). Odometry edges are marked as known inliers. pypose has no
GNC and pyceres no Sim(3) manifold in Python; both would need the parametrisation written by hand.

GTSAM's ``Similarity3(R, t, s)`` acts as ``x -> s (R x + t)``; the conversions below keep this module's
``x -> s R x + t`` convention (the project's, see ``geometry``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slam3r.geometry.transforms import matrix_to_sim3, sim3_to_matrix


@dataclass
class Edge:
    """Relative Sim(3) measurement ``rel`` (4x4) of ``T_i^-1 T_j`` with isotropic sigmas (radians, the node's
    local units, log-scale) for rotation, translation and scale."""

    i: int
    j: int
    rel: np.ndarray
    kind: str  # "odometry" | "loop" | "local"
    sigmas: tuple[float, float, float] = (0.01, 0.01, 0.01)


def _to_gtsam(M: np.ndarray):
    import gtsam

    s, R, t = matrix_to_sim3(M)
    return gtsam.Similarity3(gtsam.Rot3(R), np.asarray(t) / s, s)


def _from_gtsam(S) -> np.ndarray:
    s = float(S.scale())
    return sim3_to_matrix(s, S.rotation().matrix(), np.asarray(S.translation()) * s)


def _noise(sigmas: tuple[float, float, float]):
    import gtsam

    r, t, s = sigmas
    return gtsam.noiseModel.Diagonal.Sigmas(np.array([r, r, r, t, t, t, s], dtype=np.float64))


@dataclass
class GraphResult:
    """Optimised node similarities (4x4 by keyframe id), which robust (non-odometry: loop, local) edges survived,
    in edge order, and the optimiser's error."""

    poses: dict[int, np.ndarray]
    loop_inliers: list[bool]
    initial_error: float
    final_error: float


def optimize_pose_graph(poses: dict[int, np.ndarray], edges: list[Edge], robust: bool = True,
                        max_iters: int = 100) -> GraphResult:
    """Optimise keyframe similarities ``poses`` (4x4 by id, the initial estimate) under ``edges``; the first
    (lowest) id is held fixed (the world gauge). ``robust``: graduated non-convexity (truncated least squares)
    over the loop and local edges, odometry edges known inliers; else plain Levenberg-Marquardt."""
    import gtsam

    if not poses:
        return GraphResult({}, [], 0.0, 0.0)
    for e in edges:
        if e.i not in poses or e.j not in poses:
            raise ValueError(f"edge {e.i} -> {e.j} refers to a keyframe without a pose")
    graph = gtsam.NonlinearFactorGraph()
    values = gtsam.Values()
    for k, M in poses.items():
        values.insert(k, _to_gtsam(M))
    anchor = min(poses)
    graph.add(gtsam.PriorFactorSimilarity3(anchor, _to_gtsam(poses[anchor]), _noise((1e-6, 1e-6, 1e-6))))
    known, loops = [0], []
    for e in edges:
        known.append(graph.size()) if e.kind == "odometry" else loops.append(graph.size())
        graph.add(gtsam.BetweenFactorSimilarity3(e.i, e.j, _to_gtsam(e.rel), _noise(e.sigmas)))
    initial_error = graph.error(values)
    if robust and loops:
        params = gtsam.GncLMParams()
        params.setKnownInliers(known)
        opt = gtsam.GncLMOptimizer(graph, values, params)
        result = opt.optimize()
        weights = np.asarray(opt.getWeights())
        inliers = [bool(weights[f] > 0.5) for f in loops]
    else:
        lm = gtsam.LevenbergMarquardtParams()
        lm.setMaxIterations(max_iters)
        result = gtsam.LevenbergMarquardtOptimizer(graph, values, lm).optimize()
        inliers = [True] * len(loops)
    return GraphResult({k: _from_gtsam(result.atSimilarity3(k)) for k in poses}, inliers, float(initial_error),
                       float(graph.error(result)))
