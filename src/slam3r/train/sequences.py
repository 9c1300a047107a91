"""Posed RGB-D sequences at network resolution, the raw material of every training sample.

A :class:`Sequence` gives, for frame ids, ``rgb`` ``(n, S, S, 3)`` uint8 (the network crop), metric z-depth
``(n, S, S)`` float32 (0 = invalid), intrinsics ``(n, 3, 3)`` of the crop (pixels) and camera-to-world poses
``(n, 4, 4)`` (OpenCV axes, metres). Sources: the synthetic generator (rendered directly at network resolution
and cached on disk as ``.npz``), and Replica / 7-Scenes folders read with :mod:`slam3r.data`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence as Seq

import numpy as np

from slam3r.data.rgbd import RGBDSequence


class Sequence(Protocol):
    """What samplers need from a sequence."""

    def __len__(self) -> int: ...

    def load(self, ids: Seq[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rgb, depth, K, c2w) of frames ``ids`` (see module docstring)."""
        ...


@dataclass
class ArraySequence:
    """A sequence held in memory."""

    rgb: np.ndarray  # (N, S, S, 3) uint8
    depth: np.ndarray  # (N, S, S) float32 metres
    K: np.ndarray  # (3, 3) float64
    c2w: np.ndarray  # (N, 4, 4) float64

    def __len__(self) -> int:
        return len(self.rgb)

    def load(self, ids: Seq[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(ids)
        return self.rgb[idx], self.depth[idx], np.broadcast_to(self.K, (len(idx), 3, 3)), self.c2w[idx]


# ----------------------------------------------------------------------------------------------------- synthetic
def synth_sequence(seed: int, size: int, num_frames: int, loop_frames: tuple[int, int] = (80, 240),
                   fov_deg: tuple[float, float] = (55.0, 75.0)) -> ArraySequence:
    """Render ``num_frames`` frames of the procedural scene ``seed`` directly at ``size x size``.

    Per seed (deterministically) the trajectory kind (30% drone, else handheld), the camera speed (one loop of
    the path would take a number of frames drawn in ``loop_frames``; the sequence covers the first
    ``num_frames`` of them) and the horizontal field of view (drawn in ``fov_deg``) vary.
    """
    from slam3r.data.synth import render_sequence

    rng = np.random.default_rng([int(seed), 0x7A1])
    loop = int(rng.integers(loop_frames[0], loop_frames[1] + 1))
    kind = "drone" if rng.random() < 0.3 else "handheld"
    fov = float(rng.uniform(*fov_deg))
    seq = render_sequence(seed, num_frames, size, size, kind=kind, hfov_deg=fov, loops=1.25 * num_frames / loop)
    return ArraySequence(seq.rgb, seq.depth, seq.K, seq.c2w)


class SynthSequences:
    """Training sequences from the synthetic generator, rendered on first use and cached as ``.npz`` files
    (``cache_dir/synth_<seed>_<size>px_<frames>f.npz``); later runs and resumes only read them."""

    def __init__(self, seeds: Seq[int], size: int, num_frames: int, cache_dir: str | Path,
                 loop_frames: tuple[int, int] = (80, 240), fov_deg: tuple[float, float] = (55.0, 75.0)) -> None:
        self.seeds = list(seeds)
        self.size, self.num_frames = size, num_frames
        self.loop_frames, self.fov_deg = loop_frames, fov_deg
        self.cache_dir = Path(cache_dir)
        self._mem: dict[int, ArraySequence] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def path(self, seed: int) -> Path:
        lo, hi = self.loop_frames
        return self.cache_dir / f"synth_{seed:06d}_{self.size}px_{self.num_frames}f_loop{lo}-{hi}.npz"

    def __getitem__(self, i: int) -> ArraySequence:
        seed = self.seeds[i]
        if seed not in self._mem:
            path = self.path(seed)
            if path.is_file():
                with np.load(path) as z:
                    seq = ArraySequence(z["rgb"], z["depth"], z["K"], z["c2w"])
            else:
                seq = synth_sequence(seed, self.size, self.num_frames, self.loop_frames, self.fov_deg)
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # concurrent runs may render the same seed
                np.savez(tmp, rgb=seq.rgb, depth=seq.depth, K=seq.K, c2w=seq.c2w)
                tmp.replace(path)
            self._mem[seed] = seq
        return self._mem[seed]


# ----------------------------------------------------------------------------------------------------- real data
class CroppedSequence:
    """An :class:`~slam3r.data.rgbd.RGBDSequence` (files read on demand) cut to the ``size x size`` network
    input exactly like inference preprocessing (images) and the evaluation GT (depth, intrinsics)."""

    def __init__(self, frames: RGBDSequence, size: int) -> None:
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, ids: Seq[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from slam3r.data.pointmaps import crop_resize_depth
        from slam3r.data.preprocess import resize_crop

        rgbs, depths, Ks = [], [], []
        for i in ids:
            rgb = self.frames.load_rgb(i)
            depth, K = crop_resize_depth(self.frames.load_depth(i), self.frames.K, self.size)
            rgbs.append(resize_crop(rgb, self.size))
            depths.append(depth)
            Ks.append(K)
        return np.stack(rgbs), np.stack(depths), np.stack(Ks), self.frames.poses[np.asarray(ids)]


def replica_sequences(root: str | Path, size: int) -> list[CroppedSequence]:
    """Every Replica-layout scene (a folder with ``traj.txt`` and ``results/``) at or one level under ``root``."""
    from slam3r.data.replica import read_replica

    root = Path(root)
    scenes = [root] if (root / "traj.txt").is_file() else sorted(p.parent for p in root.glob("*/traj.txt"))
    if not scenes:
        raise FileNotFoundError(f"no Replica scene (traj.txt + results/) in or under {root}")
    return [CroppedSequence(read_replica(s), size) for s in scenes]


def seven_scenes_sequences(root: str | Path, size: int) -> list[CroppedSequence]:
    """Every 7-Scenes sequence folder (``<scene>/seq-XX``) under ``root``."""
    from slam3r.data.sevenscenes import read_7scenes

    seqs = sorted(p for p in Path(root).glob("*/seq-*") if p.is_dir())
    if not seqs:
        raise FileNotFoundError(f"no 7-Scenes sequence (<scene>/seq-XX/) under {root}")
    return [CroppedSequence(read_7scenes(s), size) for s in seqs]
