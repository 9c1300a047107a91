"""glTF binaries written by ``slam3r.data.glb`` as a real reader (trimesh) sees them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slam3r.data.cloud import PointCloud
from slam3r.data.glb import DEFAULT_RGB, GLBScene, read_glb_json, write_glb_cloud

trimesh = pytest.importorskip("trimesh")


def test_points_and_lines_read_back_by_trimesh(tmp_path: Path) -> None:
    xyz = np.array([[0, 0, 1], [1, 2, 3]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)
    segs = np.array([[[0, 0, 0], [1, 1, 1]], [[1, 1, 1], [2, 0, 2]]], np.float32)
    path = GLBScene().points(xyz, rgb).lines(segs, (1, 2, 3)).write(tmp_path / "s.glb")
    geoms = list(trimesh.load(path).geometry.values())
    assert [type(g).__name__ for g in geoms] == ["PointCloud", "Path3D"]
    np.testing.assert_allclose(geoms[0].vertices, xyz * [1, -1, -1])      # OpenCV -> glTF: y and z flipped
    np.testing.assert_array_equal(geoms[0].colors[:, :3], rgb)
    np.testing.assert_allclose(geoms[1].vertices, segs.reshape(-1, 3) * [1, -1, -1])
    assert not list(tmp_path.glob(".*.tmp"))                                # written atomically, nothing left


def test_cloud_without_colours_gets_the_default(tmp_path: Path) -> None:
    cloud = PointCloud(xyz=np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32), rgb=None)
    write_glb_cloud(tmp_path / "c.glb", cloud)
    (pc,) = trimesh.load(tmp_path / "c.glb").geometry.values()
    assert len(pc.vertices) == 50
    assert (pc.colors[:, :3] == DEFAULT_RGB).all()
    assert read_glb_json(tmp_path / "c.glb")["asset"]["generator"] == "slam3r"
