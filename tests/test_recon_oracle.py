"""Bookkeeping proof: with stand-in networks that return ground truth, the pipeline must reproduce the scene and
the camera trajectory exactly (up to one similarity), offline and streaming. Any mix-up of frame ids, windows,
buffer positions, retrieval order or normalisation shows up as a per-frame error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from slam3r.data.synth import render_sequence
from slam3r.geometry.camera import backproject_depth
from slam3r.geometry.transforms import umeyama
from slam3r.models import TINY, Pointmaps, preset
from slam3r.recon.config import ReconConfig
from slam3r.recon.offline import run_offline
from slam3r.recon.streaming import StreamingReconstructor

S = 64
SCALE_I2P = 2.7  # the oracle I2P answers in an arbitrary unit, as a real network does


def frame_id_image(rgb: np.ndarray, fid: int) -> np.ndarray:
    """Stamp the frame id into pixel (0, 0) so the oracle encoder can tell frames apart."""
    out = rgb.copy()
    out[0, 0, 0], out[0, 0, 1] = fid % 256, fid // 256
    return out


@dataclass
class Scene:
    rgb: np.ndarray  # (N, S, S, 3)
    cam: np.ndarray  # (N, S, S, 3) camera-frame GT points, metres
    world: np.ndarray  # (N, S, S, 3)
    c2w: np.ndarray  # (N, 4, 4)


class OracleI2P:
    """Ground-truth I2P: the window's points in the reference camera, with a high confidence."""

    def __init__(self, scene: Scene) -> None:
        self.cfg, self.scene = TINY, scene

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        px = torch.round((images[:, :2, 0, 0] * 0.5 + 0.5) * 255).long()
        ids = px[:, 0] + 256 * px[:, 1]
        tok = torch.zeros(len(images), 16, 64)
        tok[:, 0, 0] = ids.float()
        return tok

    @staticmethod
    def ids(tokens: torch.Tensor) -> np.ndarray:
        return tokens[..., 0, 0].long().numpy()

    def __call__(self, tokens: torch.Tensor, ref_id: int = 0, *, ref_only: bool = False) -> Pointmaps:
        ids = self.ids(tokens)  # (V, B)
        views = ids[ref_id:ref_id + 1] if ref_only else ids
        pts = np.zeros((*views.shape, S, S, 3), np.float32)
        for b in range(ids.shape[1]):
            w2c = np.linalg.inv(self.scene.c2w[ids[ref_id, b]])
            for v in range(views.shape[0]):
                world = self.scene.world[views[v, b]]
                pts[v, b] = (world @ w2c[:3, :3].T + w2c[:3, 3]) * SCALE_I2P
        return Pointmaps(torch.from_numpy(pts), torch.full(pts.shape[:-1], 20.0))

    def corr_scores(self, ref: torch.Tensor, cand: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        r, c = ref[:, 0, 0], cand[:, 0, 0]
        gap = (c[:, None] - r[None, :]).abs()  # (M, B)
        return (1 + torch.exp(-gap / 10))[..., None].expand(-1, -1, 16)


class OracleL2W:
    """Ground-truth L2W: finds the similarity between GT and the engine's world frame from the scene frames it is
    given, and answers the keyframes' GT world points in that frame."""

    def __init__(self, scene: Scene) -> None:
        self.cfg, self.scene = preset("tiny", l2w=True), scene

    def __call__(self, tokens: torch.Tensor, pts3d: torch.Tensor, ref_ids, *, sources_only: bool = False) -> Pointmaps:
        ids = OracleI2P.ids(tokens)
        out = pts3d.clone().numpy()
        for b in range(ids.shape[1]):
            src = np.concatenate([self.scene.world[ids[r, b]].reshape(-1, 3) for r in ref_ids])
            dst = np.concatenate([pts3d[r, b].reshape(-1, 3).numpy() for r in ref_ids])
            keep = np.linalg.norm(dst, axis=1) > 0
            s, rot, t = umeyama(src[keep], dst[keep])
            for v in range(ids.shape[0]):
                if v not in ref_ids:
                    out[v, b] = s * self.scene.world[ids[v, b]] @ rot.T + t
        if sources_only:
            out = out[[v for v in range(ids.shape[0]) if v not in ref_ids]]
        return Pointmaps(torch.from_numpy(out), torch.full(out.shape[:-1], 20.0))


@pytest.fixture(scope="module")
def scene() -> Scene:
    seq = render_sequence(seed=123, num_frames=48, width=S, height=S, kind="handheld")
    cam = backproject_depth(seq.depth, seq.K)
    world = cam @ np.transpose(seq.c2w[:, None, :3, :3], (0, 1, 3, 2)) + seq.c2w[:, None, None, :3, 3]
    assert (seq.depth > 0).all()
    rgb = np.stack([frame_id_image(im, i) for i, im in enumerate(seq.rgb)])
    return Scene(rgb, cam.astype(np.float32), world.astype(np.float32), seq.c2w)


def check(results, scene: Scene) -> None:
    n = len(scene.rgb)
    assert [r.frame_id for r in results] == list(range(n))
    pred = np.concatenate([r.pts3d_world.reshape(-1, 3) for r in results])
    gt = scene.world.reshape(-1, 3)
    s, rot, t = umeyama(pred, gt)
    err = np.linalg.norm(s * pred @ rot.T + t - gt, axis=1).reshape(n, -1)
    assert err.max() < 1e-3, f"per-frame world error up to {err.max():.2e} m (frame {err.max(1).argmax()})"
    centres = np.stack([r.pose_c2w[:3, 3] for r in results])
    aligned = s * centres @ rot.T + t
    ate = np.sqrt(np.mean(np.sum((aligned - scene.c2w[:, :3, 3]) ** 2, axis=1)))
    assert ate < 1e-3, f"ATE {ate:.2e} m"
    rot_err = [np.linalg.norm(rot @ r.pose_c2w[:3, :3] - g[:3, :3]) for r, g in zip(results, scene.c2w)]
    assert max(rot_err) < 1e-3
    # focal: GT intrinsics are shared; every frame's estimate agrees with the others
    focals = np.array([r.focal for r in results])
    assert np.ptp(focals) / focals.mean() < 1e-3


@pytest.mark.parametrize("stride,buffer_size,strategy", [(2, 6, "reservoir"), (3, 8, "fifo"), (1, -1, "reservoir")])
def test_offline_oracle(scene, stride, buffer_size, strategy):
    cfg = ReconConfig(keyframe_stride=stride, win_r=3, num_scene_frame=3, buffer_size=buffer_size,
                      buffer_strategy=strategy, conf_thres_l2w=3)
    engine, it = run_offline(OracleI2P(scene), OracleL2W(scene), list(scene.rgb), cfg, chunk=7)
    results = list(it)
    check(results, scene)
    assert engine.s == stride
    if buffer_size > 0:
        assert len(engine.buffer) <= buffer_size
    assert len(set(engine.buffer)) == len(engine.buffer)


@pytest.mark.parametrize("norm_input", [False, True])
def test_offline_oracle_anchor_frame(scene, norm_input):
    """Feeding L2W the scene frames in the latest scene frame's camera frame (and mapping its output back) keeps
    the reconstruction exact."""
    cfg = ReconConfig(keyframe_stride=2, win_r=2, num_scene_frame=3, buffer_size=4, buffer_strategy="fifo",
                      l2w_frame="anchor", norm_input=norm_input, conf_thres_l2w=3)
    engine, it = run_offline(OracleI2P(scene), OracleL2W(scene), list(scene.rgb), cfg, chunk=7)
    check(list(it), scene)


def test_offline_oracle_auto_stride(scene):
    engine, it = run_offline(OracleI2P(scene), OracleL2W(scene), list(scene.rgb),
                             ReconConfig(win_r=2, num_scene_frame=4, buffer_size=10))
    check(list(it), scene)
    assert 1 <= engine.s <= (len(scene.rgb) - 1) // 6


def test_streaming_oracle(scene):
    rec = StreamingReconstructor(OracleI2P(scene), OracleL2W(scene),
                                 ReconConfig(keyframe_stride=2, win_r=3, num_scene_frame=4, buffer_size=6))
    results = []
    first_output_at = None
    for i, im in enumerate(scene.rgb):
        got = rec.push(im)
        if got and first_output_at is None:
            first_output_at = i
        results += got
    results += rec.flush()
    check(results, scene)
    # causal: the initial window (frames 0, 2, 4, 6, 8) is registered as soon as frame 8 arrives
    assert first_output_at == 8


def test_streaming_results_do_not_depend_on_push_batching(tiny_models):
    """Pushing frames one by one or in micro-batches (as the service does) gives the same reconstruction."""
    i2p, l2w = tiny_models
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 255, (64, 200, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(texture[:, 2 * i: 2 * i + 64]) for i in range(40)]
    cfg = ReconConfig(keyframe_stride=3, win_r=5, num_scene_frame=4, buffer_size=8)
    runs = []
    for batch in (1, 4, 7):
        rec = StreamingReconstructor(i2p, l2w, cfg)
        out = []
        with torch.no_grad():
            for k in range(0, len(frames), batch):
                out += rec.push_many(frames[k:k + batch])
            out += rec.flush()
        runs.append(out)
    for other in runs[1:]:
        assert [r.frame_id for r in other] == list(range(40))
        for a, b in zip(runs[0], other):
            np.testing.assert_allclose(a.pts3d_world, b.pts3d_world, atol=1e-4)
            np.testing.assert_allclose(a.pose_c2w, b.pose_c2w, atol=1e-4)


def test_short_streams(tiny_models):
    """A stream shorter than the initial window initialises on the keyframes it has; one frame is an error."""
    i2p, l2w = tiny_models
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    rec = StreamingReconstructor(i2p, l2w, ReconConfig(keyframe_stride=3))
    out = [r for f in frames for r in rec.push(f)] + rec.flush()
    assert [r.frame_id for r in out] == [0, 1, 2, 3, 4]
    assert rec.engine.init_ids == [0, 3]
    rec = StreamingReconstructor(i2p, l2w, ReconConfig(keyframe_stride=3))
    rec.push(frames[0])
    with pytest.raises(ValueError, match="not enough frames to initialise: 1 frame"):
        rec.flush()


def test_keyframe_flags_follow_the_buffer(scene):
    """The keyframe history is the buffering set when nothing is evicted; per-frame flags never claim a frame that
    was not buffered."""
    cfg = ReconConfig(keyframe_stride=2, win_r=2, num_scene_frame=3, buffer_size=-1)
    engine, it = run_offline(OracleI2P(scene), OracleL2W(scene), list(scene.rgb), cfg)
    results = list(it)
    assert engine.keyframes == engine.buffer and len(engine.buffer) > len(engine.init_ids)
    flagged = [r.frame_id for r in results if r.is_keyframe]
    assert set(engine.init_ids) <= set(flagged) <= set(engine.keyframes)
