"""PointBuffer against a brute-force voxel reference (np.unique over floor(xyz / voxel))."""

from __future__ import annotations

import numpy as np
import pytest

from slam3r.recon.point_buffer import PointBuffer


def make_points(n: int, seed: int, extent: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points in a cube of side ``extent`` with distinct confidences."""
    rng = np.random.default_rng(seed)
    xyz = (rng.random((n, 3), dtype=np.float32) * extent - extent / 3).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    conf = (1.0 + rng.permutation(n) / n + seed).astype(np.float32)     # distinct within and across seeds
    return xyz, rgb, conf


def reference(xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, voxel: float) -> dict[tuple, tuple]:
    """voxel -> (xyz, rgb, conf) of its highest-confidence point, brute force."""
    q = np.floor(xyz / np.float32(voxel)).astype(np.int64)
    uniq, inv = np.unique(q, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.lexsort((-conf, inv))                      # by voxel, then by decreasing confidence
    first = order[np.r_[True, np.diff(inv[order]) != 0]]
    return {tuple(uniq[inv[i]]): (tuple(xyz[i]), tuple(rgb[i]), float(conf[i])) for i in first}


def count_voxels(xyz: np.ndarray, voxel: float) -> int:
    q = np.floor(xyz / np.float32(voxel)).astype(np.int64) + (1 << 20)
    return len(np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2]))


def as_dict(buf: PointBuffer) -> dict[tuple, tuple]:
    xyz, rgb, conf = buf.points()
    q = np.floor(xyz / np.float32(buf.voxel_size)).astype(np.int64)
    out = {tuple(k): (tuple(p), tuple(c), float(f)) for k, p, c, f in zip(q, xyz, rgb, conf)}
    assert len(out) == len(buf), "two stored points share a voxel"
    return out


def test_matches_brute_force_reference_over_batches():
    xyz, rgb, conf = make_points(400_000, seed=0)
    buf = PointBuffer(voxel_size=0.03)
    created = 0
    # Batch sizes include one larger than the internal merge chunk.
    edges = [0, 1, 1000, 50_000, 330_000, 400_000]
    for a, b in zip(edges[:-1], edges[1:]):
        got = buf.insert(xyz[a:b], rgb[a:b], conf[a:b])
        created += got
        assert got == count_voxels(xyz[:b], 0.03) - count_voxels(xyz[:a], 0.03)
    ref = reference(xyz, rgb, conf, 0.03)
    assert len(buf) == len(ref) == created
    assert as_dict(buf) == ref


def test_revisits_keep_highest_confidence():
    xyz, rgb, conf = make_points(20_000, seed=1)
    buf = PointBuffer(voxel_size=0.05)
    buf.insert(xyz, rgb, conf)
    # Same positions seen again with higher confidence for half of them and lower for the rest.
    conf2 = conf + np.where(np.arange(len(conf)) % 2 == 0, 10.0, -0.5).astype(np.float32)
    rgb2 = 255 - rgb
    assert buf.insert(xyz, rgb2, conf2) == 0
    ref = reference(np.concatenate([xyz, xyz]), np.concatenate([rgb, rgb2]), np.concatenate([conf, conf2]), 0.05)
    assert as_dict(buf) == ref


def test_invalid_points_are_ignored():
    buf = PointBuffer(voxel_size=0.01)
    xyz = np.array([[0, 0, 0], [np.nan, 0, 0], [0, np.inf, 0], [1e5, 0, 0], [0.5, 0.5, 0.5]], np.float32)
    rgb = np.zeros((5, 3), np.uint8)
    conf = np.array([2, 2, 2, 2, np.nan], np.float32)
    assert buf.insert(xyz, rgb, conf) == 1
    np.testing.assert_array_equal(buf.points()[0], [[0, 0, 0]])


def test_cap_is_honoured_by_coarsening():
    xyz, rgb, conf = make_points(200_000, seed=2)
    # Power-of-two voxel sizes nest exactly, so the coarsened buffer must equal the reference at the final size.
    buf = PointBuffer(voxel_size=1 / 64, max_points=5_000, coarsen_factor=2.0)
    for i in range(0, len(xyz), 25_000):
        buf.insert(xyz[i:i + 25_000], rgb[i:i + 25_000], conf[i:i + 25_000])
        assert len(buf) <= 5_000
    assert buf.voxel_size > 1 / 64
    assert as_dict(buf) == reference(xyz, rgb, conf, buf.voxel_size)
    buf.clear()
    assert len(buf) == 0 and buf.voxel_size == 1 / 64


def test_changes_since_marker():
    xyz, rgb, conf = make_points(30_000, seed=3)
    buf = PointBuffer(voxel_size=0.05)
    buf.insert(xyz[:20_000], rgb[:20_000], conf[:20_000])
    mark = buf.marker()
    assert buf.changes_since(mark).index.size == 0
    xyz2, rgb2, conf2 = make_points(10_000, seed=4)        # higher confidences: replaces where it overlaps
    buf.insert(xyz2, rgb2, conf2)
    delta = buf.changes_since(mark)
    assert not delta.reset
    _, _, stored_conf = buf.points()
    expected = np.flatnonzero(np.isin(stored_conf, conf2))
    np.testing.assert_array_equal(np.sort(delta.index), expected)
    np.testing.assert_array_equal(delta.conf, stored_conf[delta.index])
    assert buf.changes_since(delta.marker).index.size == 0
    buf.clear()
    buf.insert(xyz[:10], rgb[:10], conf[:10])
    after_clear = buf.changes_since(delta.marker)
    assert after_clear.reset and len(after_clear.xyz) == len(buf)


def test_rebin_flags_reset():
    xyz, rgb, conf = make_points(10_000, seed=5)
    buf = PointBuffer(voxel_size=0.01, max_points=2_000)
    mark = buf.marker()
    buf.insert(xyz, rgb, conf)
    assert len(buf) <= 2_000
    assert buf.changes_since(mark).reset


def test_points_views_are_read_only_and_inputs_validated():
    buf = PointBuffer()
    buf.insert(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8), np.ones(3, np.float32))
    xyz, _, _ = buf.points(copy=False)
    with pytest.raises(ValueError):
        xyz[0, 0] = 1.0
    with pytest.raises(ValueError):
        buf.insert(np.zeros((3, 3)), np.zeros((2, 3), np.uint8), np.ones(3))
    for kwargs in ({"voxel_size": 0}, {"max_points": 0}, {"coarsen_factor": 1.0}):
        with pytest.raises(ValueError):
            PointBuffer(**kwargs)


def test_transform_tags_moves_what_each_insert_contributed_and_rebins():
    """``transform_tags``: the points of a tag move by its matrix (others stay), the map is re-binned (voxels that
    now coincide merge by confidence, the next delta is a reset), and tags survive re-binning."""
    g = (np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2) + 0.5) * 0.1
    low = np.c_[g, np.full(len(g), 0.05)].astype(np.float32)
    high = low + np.float32([0, 0, 5.0])
    rgb = np.zeros((len(g), 3), np.uint8)
    buf = PointBuffer(voxel_size=0.1)
    buf.insert(low, rgb, np.ones(len(g), np.float32), tag=0)
    buf.insert(high, rgb + 255, np.full(len(g), 2.0, np.float32), tag=1)
    buf.insert(low + np.float32([5, 0, 0]), rgb, np.ones(len(g), np.float32))  # untagged
    assert len(buf) == 300
    marker = buf.marker()
    down = np.eye(4)
    down[2, 3] = -5.0
    assert buf.transform_tags({1: down, 7: np.eye(4)}) == 100  # tag 7 has no point
    xyz, col, conf = buf.points()
    assert len(buf) == 200 and buf.changes_since(marker).reset
    assert np.abs(xyz[:, 2] - 0.05).max() < 1e-5                   # tag 1 came down onto tag 0's plane ...
    on_plane = xyz[:, 0] < 1
    assert (col[on_plane] == 255).all() and (conf[on_plane] == 2.0).all()  # ... and its surer points won
    assert buf.transform_tags({1: np.linalg.inv(down)}) == 100     # their tag stayed through the re-bin
    xyz = buf.points()[0]
    np.testing.assert_allclose(np.sort(xyz[xyz[:, 2] > 1][:, :2], axis=0), np.sort(high[:, :2], axis=0), atol=1e-6)
    assert buf.transform_tags({}) == 0 and buf.transform_tags({0: down}) == 0  # tag 0 lost every voxel to tag 1
