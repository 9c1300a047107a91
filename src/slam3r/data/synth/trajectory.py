"""Smooth, collision-free camera trajectories inside a ``Scene``: handheld loops and indoor-drone flights.

Both kinds are closed paths traversed ``loops`` times (default 1.25), so the end of a sequence revisits its start.
Motion is built from low-frequency periodic functions (smooth position, yaw, pitch) plus a little higher-frequency
shake for the handheld kind; every camera centre keeps ``wall_margin`` from walls and ``object_margin`` from
furniture. The whole path is spread over the requested frames, so motion per frame scales with 1 / num_frames: at
100 frames a handheld camera moves ~5-10 cm and ~5 degrees per frame, at 300 frames a third of that.
"""

from __future__ import annotations

import math

import numpy as np

from slam3r.data.synth.scene import Scene

KINDS = ("handheld", "drone")


def look_pose(position: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Camera-to-world poses (N, 4, 4) in OpenCV axes from centres (N, 3) and yaw / pitch / roll (N,) radians.

    Yaw is the heading about world z (0 = looking along +x), pitch > 0 looks up, roll turns about the view axis.
    """
    f = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=-1)
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], axis=-1)
    down = np.cross(f, right)
    cr, sr = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x = cr * right + sr * down
    y = -sr * right + cr * down
    T = np.tile(np.eye(4), (len(yaw), 1, 1))
    T[:, :3, 0], T[:, :3, 1], T[:, :3, 2], T[:, :3, 3] = x, y, f, position
    return T


def _wave(rng: np.random.Generator, phase: np.ndarray, freqs: tuple[int, ...], amp: float) -> np.ndarray:
    """Sum of sinusoids of integer frequencies (periodic in ``phase`` over 2 pi) with random phases, peak <= amp."""
    out = np.zeros_like(phase)
    weights = rng.uniform(0.5, 1.0, len(freqs))
    weights /= weights.sum()
    for w, k in zip(weights, freqs):
        out += w * np.sin(k * phase + rng.uniform(0, 2 * math.pi))
    return amp * out


def _handheld(scene: Scene, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = (scene.lo + scene.hi) / 2
    half = (scene.hi - scene.lo)[:2] / 2
    a = rng.uniform(0.3, 0.75) * max(half[0] - 1.0, 0.3)
    b = rng.uniform(0.3, 0.75) * max(half[1] - 1.0, 0.3)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    theta = direction * s + rng.uniform(0, 2 * math.pi)
    radius = 1.0 + _wave(rng, s, (2, 3), 0.15)
    off = rng.uniform(-0.3, 0.3, 2) * np.maximum(half - 1.5, 0.0)
    x = centre[0] + off[0] + a * radius * np.cos(theta)
    y = centre[1] + off[1] + b * radius * np.sin(theta)
    z = rng.uniform(1.3, 1.65) + _wave(rng, s, (2, 5), 0.06)
    shake = _wave(rng, s, (23, 31, 37), 0.004)
    pos = np.stack([x + shake, y - shake, z + _wave(rng, s, (29, 41), 0.003)], axis=-1)
    outward = np.arctan2(y - centre[1], x - centre[0])
    yaw = outward + rng.uniform(-0.4, 0.4) + _wave(rng, s, (1, 2), rng.uniform(0.3, 0.7))
    yaw += _wave(rng, s, (17, 25), 0.012)
    pitch = -rng.uniform(0.1, 0.4) + _wave(rng, s, (3, 5), 0.12) + _wave(rng, s, (19, 27), 0.01)
    roll = _wave(rng, s, (4, 7), 0.05) + _wave(rng, s, (21, 33), 0.01)
    return look_pose(pos, yaw, pitch, roll)


def _drone(scene: Scene, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = (scene.lo + scene.hi) / 2
    half = (scene.hi - scene.lo)[:2] / 2
    ax = rng.uniform(0.4, 0.8) * max(half[0] - 0.9, 0.3)
    ay = rng.uniform(0.4, 0.8) * max(half[1] - 0.9, 0.3)
    ph = rng.uniform(0, 2 * math.pi)
    fx, fy = (1, 2) if rng.random() < 0.5 else (2, 1)  # a figure-of-eight crossing the room centre
    x = centre[0] + ax * np.sin(fx * (s + ph))
    y = centre[1] + ay * np.sin(fy * (s + ph))
    z = rng.uniform(1.4, min(2.2, scene.hi[2] - 0.6)) + _wave(rng, s, (1, 3), 0.15)
    # A stabilised drone panning steadily (one turn per loop) while it flies the figure-of-eight.
    turn = 1.0 if rng.random() < 0.5 else -1.0
    yaw = rng.uniform(0, 2 * math.pi) + turn * s + _wave(rng, s, (1, 2), rng.uniform(0.2, 0.5))
    pitch = -rng.uniform(0.25, 0.6) + _wave(rng, s, (2, 3), 0.1)
    roll = _wave(rng, s, (3, 5), 0.02)
    return look_pose(np.stack([x, y, z], axis=-1), yaw, pitch, roll)


def _clear(scene: Scene, path: np.ndarray, wall_margin: float, object_margin: float) -> bool:
    """True when every point of ``path`` (M, 3) keeps the required clearance from the room and the primitives."""
    if np.minimum(path - scene.lo, scene.hi - path).min() < wall_margin:
        return False
    return all(prim.sdf(path).min() >= object_margin for prim in scene.primitives)


def make_trajectory(
    scene: Scene,
    num_frames: int,
    seed: int,
    kind: str = "handheld",
    loops: float = 1.25,
    wall_margin: float = 0.5,
    object_margin: float = 0.3,
    max_tries: int = 200,
) -> np.ndarray:
    """Camera-to-world poses (N, 4, 4), OpenCV axes, for ``num_frames`` frames of a smooth path in ``scene``.

    Args:
        kind: "handheld" (eye-height loop looking mostly at the walls, with shake) or "drone" (higher
            figure-of-eight, looking down, stabilised).
        loops: number of times the closed path is traversed; > 1 revisits the start.
        wall_margin / object_margin: minimum clearance (m) of every camera centre from the room / furniture.
    Raises:
        ValueError for an unknown kind; RuntimeError when no collision-free path is found in ``max_tries``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown trajectory kind {kind!r}; expected one of {KINDS}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng([int(seed), KINDS.index(kind), 0x7A7])
    s = np.linspace(0.0, 2 * math.pi * loops, num_frames, endpoint=False) if num_frames > 1 else np.zeros(1)
    dense = np.linspace(0.0, 2 * math.pi * loops, max(num_frames * 4, 400))
    build = _handheld if kind == "handheld" else _drone
    for _ in range(max_tries):
        state = rng.bit_generator.state
        path = build(scene, dense, rng)[:, :3, 3]
        if _clear(scene, path, wall_margin, object_margin):
            rng.bit_generator.state = state
            return build(scene, s, rng)
    raise RuntimeError(f"no collision-free {kind} trajectory found in scene {scene.seed} after {max_tries} tries")
