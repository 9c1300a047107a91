"""Training samples: windows cut from posed RGB-D sequences, turned into network inputs and ground truth.

Every batch is a pure function of ``(seed, step, rank)``, so an interrupted run resumes on exactly the batches it
would have seen. Layout is views first, like the networks: images ``(V, B, 3, S, S)`` in [-1, 1], points
``(V, B, S, S, 3)`` (metres or normalised units, see each builder), masks ``(V, B, S, S)`` bool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

import numpy as np
import torch
from torch import Tensor

from slam3r.data.preprocess import to_tensor
from slam3r.geometry import backproject_depth, invert_pose, transform_points
from slam3r.train.config import DataConfig
from slam3r.train.sequences import Sequence


@dataclass
class I2PBatch:
    """Windows for I2P / retrieval: view ``ref_id`` is the reference; ``pts`` are GT points in its camera frame
    (metres); ``valid`` marks pixels with depth."""

    images: Tensor
    pts: Tensor
    valid: Tensor
    ref_id: int


@dataclass
class L2WBatch:
    """L2W samples: views ``[0, num_scene)`` are scene frames, the rest keyframes. ``inputs`` holds the network's
    point inputs (scene frames: world points jointly normalised; keyframes: camera points each normalised alone;
    invalid pixels 0); ``gt`` the world points of every view divided by the scene frames' normalisation factor."""

    images: Tensor
    inputs: Tensor
    gt: Tensor
    valid: Tensor
    num_scene: int


def mean_distance(pts: Tensor, valid: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Mean norm of the ``valid`` points ``(..., 3)`` over ``dims`` (of the mask), kept as broadcastable dims."""
    valid = valid.to(pts.dtype)
    total = (pts.norm(dim=-1) * valid).sum(dim=dims, keepdim=True)
    return (total / valid.sum(dim=dims, keepdim=True).clamp(min=1)).clamp(min=1e-8)[..., None]


def frames_to_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """GT points ``(n, S, S, 3)`` float32 of frames with depth ``(n, S, S)``, K ``(n, 3, 3)`` and poses ``(n, 4, 4)``,
    expressed in the camera frame whose camera-to-world pose is ``frame`` ``(4, 4)``."""
    cam = backproject_depth(depth.astype(np.float64), K)
    rel = invert_pose(frame)[None] @ c2w
    return transform_points(rel, cam).astype(np.float32)


def _mirror(rgb: np.ndarray, *maps: np.ndarray) -> tuple[np.ndarray, ...]:
    """Horizontal mirror of a sample: images and per-pixel maps flipped left-right, x of point maps negated (a
    reflection of the whole scene about the camera's y-z plane, consistent across views)."""
    out = [rgb[:, :, ::-1]]
    for m in maps:
        m = m[:, :, ::-1].copy()
        if m.ndim == 4:
            m[..., 0] *= -1
        out.append(m)
    return tuple(out)


class Sampler:
    """Draws batches for one training stage from a collection of sequences (indexable, each a :class:`Sequence`)."""

    def __init__(self, sequences: Seq[Sequence], cfg: DataConfig, seed: int, rank: int = 0) -> None:
        self.seqs, self.cfg, self.seed, self.rank = sequences, cfg, seed, rank

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step, self.rank])

    def _pick(self, rng: np.random.Generator, span: int) -> tuple[Sequence, int]:
        """A random sequence long enough for ``span`` frames and a random start in it."""
        for _ in range(100):
            seq = self.seqs[int(rng.integers(len(self.seqs)))]
            if len(seq) >= span:
                return seq, int(rng.integers(0, len(seq) - span + 1))
        raise ValueError(f"no training sequence has the {span} frames a sample needs")

    # ------------------------------------------------------------------------------------------------- I2P
    def i2p_window(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One window: rgb ``(V, S, S, 3)``, GT points in the middle view's camera frame, valid mask."""
        v = self.cfg.num_views
        s = int(rng.integers(self.cfg.stride[0], self.cfg.stride[1] + 1))
        seq, start = self._pick(rng, (v - 1) * s + 1)
        ids = start + s * np.arange(v)
        if rng.random() < 0.5:
            ids = ids[::-1]
        rgb, depth, K, c2w = seq.load(ids)
        pts = frames_to_points(depth, K, c2w, c2w[v // 2])
        valid = depth > 0
        if self.cfg.flip and rng.random() < 0.5:
            rgb, pts, valid = _mirror(rgb, pts, valid)
        return rgb, pts, valid

    def retrieval_window(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query frame (view 0) and ``num_views - 1`` candidates drawn anywhere within ``retrieval_span`` frames
        (some overlap it well, some barely): rgb, GT points in the query's frame, valid."""
        v, span = self.cfg.num_views, self.cfg.retrieval_span
        seq, start = self._pick(rng, min(span, self.cfg.frames_per_sequence))
        n = min(span, len(seq) - start)
        ids = start + rng.choice(n, v, replace=False)
        rgb, depth, K, c2w = seq.load(ids)
        return rgb, frames_to_points(depth, K, c2w, c2w[0]), depth > 0

    def batch_i2p(self, step: int, batch_size: int, retrieval: bool = False) -> I2PBatch:
        """A batch of I2P windows (reference = middle view) or retrieval windows (reference = view 0)."""
        rng = self.rng(step)
        make = self.retrieval_window if retrieval else self.i2p_window
        rgb, pts, valid = zip(*(make(rng) for _ in range(batch_size)))
        images = to_tensor(np.stack(rgb, axis=1))
        return I2PBatch(images, torch.from_numpy(np.stack(pts, axis=1)), torch.from_numpy(np.stack(valid, axis=1)),
                        0 if retrieval else self.cfg.num_views // 2)

    # ------------------------------------------------------------------------------------------------- L2W
    def l2w_sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One L2W sample: 1 + num_scene + num_keyframes distinct frames of a random run; the first defines the
        world frame and is dropped. Returns, for the other views, rgb, world points (in the dropped view's camera
        frame) and camera-frame points (metres), and the valid mask. With ``l2w_order`` ``keyframes_last`` the
        keyframes are the run's latest frames and the frame-defining view one of the earlier ones; with ``anchor``
        the frame-defining view is a copy of the latest scene frame."""
        ns, nk = self.cfg.num_scene, self.cfg.num_keyframes
        span = int(rng.integers(self.cfg.l2w_span[0], self.cfg.l2w_span[1] + 1))
        seq, start = self._pick(rng, span)
        if self.cfg.l2w_order == "anchor":
            ids = np.sort(start + rng.choice(span, ns + nk, replace=False))
            if rng.random() < 0.5:
                ids = ids[::-1]
            ids = np.concatenate([ids[ns - 1:ns], ids])  # view 0 (dropped below) defines the world frame
        else:
            ids = start + rng.choice(span, 1 + ns + nk, replace=False)
        if self.cfg.l2w_order == "keyframes_last":
            ids = np.sort(ids)
            if rng.random() < 0.5:
                ids = ids[::-1]
            first = rng.permutation(1 + ns)  # the frame-defining view and the scene frames, in random order
            ids = np.concatenate([ids[:1 + ns][first], ids[1 + ns:]])
        rgb, depth, K, c2w = seq.load(ids)
        world = frames_to_points(depth[1:], K[1:], c2w[1:], c2w[0])
        cam = backproject_depth(depth[1:], K[1:]).astype(np.float32)
        rgb, valid = rgb[1:], depth[1:] > 0
        if self.cfg.flip and rng.random() < 0.5:
            rgb, world, cam, valid = _mirror(rgb, world, cam, valid)
        return rgb, world, cam, valid

    def batch_l2w(self, step: int, batch_size: int) -> L2WBatch:
        """A batch of L2W samples with the reference normalisation (see :class:`L2WBatch`)."""
        rng = self.rng(step)
        rgb, world, cam, valid = (np.stack(x, axis=1) for x in zip(*(self.l2w_sample(rng) for _ in range(batch_size))))
        world_t, cam_t, valid_t = torch.from_numpy(world), torch.from_numpy(cam), torch.from_numpy(valid)
        ns = self.cfg.num_scene
        scale = mean_distance(world_t[:ns], valid_t[:ns], dims=(0, 2, 3))  # (1, B, 1, 1, 1) per sample
        gt = world_t / scale
        cam_n = cam_t / mean_distance(cam_t, valid_t, dims=(2, 3))  # each view alone
        inputs = torch.cat([gt[:ns], cam_n[ns:]]) * valid_t[..., None]
        return L2WBatch(to_tensor(rgb), inputs, gt, valid_t, ns)
