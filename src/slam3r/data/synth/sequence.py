"""Render a whole synthetic RGB-D sequence (scene + trajectory + frames) from one integer seed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from slam3r.data.synth.render import render
from slam3r.data.synth.scene import Scene, make_scene
from slam3r.data.synth.trajectory import make_trajectory
from slam3r.geometry.camera import intrinsics_from_fov
from slam3r.system import usable_cores


@dataclass
class Sequence:
    """A rendered sequence: rgb (N, H, W, 3) uint8, depth (N, H, W) float32 metres (0 = no hit), shared
    intrinsics K (3, 3), camera-to-world poses c2w (N, 4, 4) in OpenCV axes, and how it was made."""

    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    seed: int
    kind: str

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


def sequence_camera(seed: int, width: int, height: int, hfov_deg: float | None = None) -> np.ndarray:
    """Intrinsics (3, 3) for a sequence: ``hfov_deg`` if given, else a per-seed field of view in [55, 85] deg."""
    if hfov_deg is None:
        hfov_deg = float(np.random.default_rng([int(seed), 0xCA4]).uniform(55.0, 85.0))
    return intrinsics_from_fov(width, height, hfov_deg)


def default_threads() -> int:
    """Render threads used by sequence rendering: the usable cores, at most 4."""
    return min(4, usable_cores())


def iter_frames(scene: Scene, c2w: np.ndarray, K: np.ndarray, width: int, height: int, threads: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (rgb (H, W, 3) uint8, depth (H, W) float32) for each pose of c2w (N, 4, 4)."""
    threads = default_threads() if threads is None else threads
    for pose in c2w:
        yield render(scene, pose, K, width, height, threads=threads)


def render_sequence(
    seed: int,
    num_frames: int,
    width: int = 640,
    height: int = 480,
    kind: str = "handheld",
    hfov_deg: float | None = None,
    loops: float = 1.25,
    scene: Scene | None = None,
    threads: int | None = None,
) -> Sequence:
    """Render ``num_frames`` frames of the scene and trajectory determined by ``seed``.

    ``scene`` overrides the seed's scene (e.g. one made with custom ``make_scene`` options); everything else is a
    pure function of the arguments (``threads``, default ``default_threads()``, only changes the speed).
    """
    scene = make_scene(seed) if scene is None else scene
    c2w = make_trajectory(scene, num_frames, seed, kind=kind, loops=loops)
    K = sequence_camera(seed, width, height, hfov_deg)
    rgb = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    depth = np.empty((num_frames, height, width), dtype=np.float32)
    for i, (im, d) in enumerate(iter_frames(scene, c2w, K, width, height, threads)):
        rgb[i], depth[i] = im, d
    return Sequence(rgb, depth, K, c2w, int(seed), kind)
