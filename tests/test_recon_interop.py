"""COLMAP / nerfstudio exports of a reconstruction directory, read back with the real pycolmap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slam3r.data.trajectory_io import read_tum_trajectory
from slam3r.recon.config import ReconConfig
from slam3r.recon.interop import OPENCV_TO_OPENGL, export_recon
from slam3r.recon.offline import run_offline
from slam3r.recon.output import ReconWriter
from slam3r.recon.summary import RunSummary
from test_app_scene import with_unregistered_frame
from test_recon_oracle import OracleI2P, OracleL2W, scene  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def recon_dir(scene, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("recon")
    cfg = ReconConfig(keyframe_stride=2, win_r=2, num_scene_frame=3, buffer_size=6, conf_thres_l2w=3)
    _, it = run_offline(OracleI2P(scene), OracleL2W(scene), list(scene.rgb), cfg)
    writer = ReconWriter(out, conf_thres_l2w=3)
    for r in it:
        writer.add(r)
    writer.close(RunSummary(config={"conf_thres_l2w": 3}))
    return out


def test_colmap_round_trip_with_pycolmap(recon_dir):
    pycolmap = pytest.importorskip("pycolmap")
    written = export_recon(recon_dir, ["colmap"], max_points=500)
    model = pycolmap.Reconstruction(str(written["colmap"]))
    _, traj = read_tum_trajectory(recon_dir / "trajectory.txt")
    cams = json.loads((recon_dir / "cameras.json").read_text())
    assert model.num_images() == len(traj) == len(cams)
    assert model.num_points3D() == 500
    for i, pose in enumerate(traj):
        img = model.image(i + 1)
        w2c = np.eye(4)
        w2c[:3] = img.cam_from_world().matrix()
        np.testing.assert_allclose(np.linalg.inv(w2c), pose, atol=1e-6)
        cam = model.camera(img.camera_id)
        assert cam.model.name == "PINHOLE" and cam.width == cam.height == 64
        np.testing.assert_allclose(cam.params, [cams[i]["focal"]] * 2 + [32, 32], rtol=1e-12)
    # every 3-D point projects onto the pixel it was predicted at (oracle: exact geometry)
    preds = np.load(recon_dir / "preds" / "registered_pcds.npy")
    for pid, pt in list(model.points3D.items())[:50]:
        el = pt.track.elements[0]
        img = model.image(el.image_id)
        xy = img.points2D[el.point2D_idx].xy
        u, v = int(xy[0] - 0.5), int(xy[1] - 0.5)
        np.testing.assert_allclose(pt.xyz, preds[el.image_id - 1, v, u], atol=1e-5)
        proj = img.project_point(pt.xyz)
        np.testing.assert_allclose(proj, xy, atol=2e-3)


def test_nerfstudio_transforms_schema(recon_dir, tmp_path):
    written = export_recon(recon_dir, ["nerfstudio"], dest=tmp_path, max_points=200)
    doc = json.loads(written["nerfstudio"].read_text())
    _, traj = read_tum_trajectory(recon_dir / "trajectory.txt")
    assert doc["camera_model"] == "OPENCV" and (tmp_path / doc["ply_file_path"]).is_file()
    assert len(doc["frames"]) == len(traj)
    for frame, pose in zip(doc["frames"], traj):
        assert {"file_path", "transform_matrix", "fl_x", "fl_y", "cx", "cy", "w", "h"} <= set(frame)
        assert (tmp_path / frame["file_path"]).is_file()
        c2w_gl = np.array(frame["transform_matrix"])
        np.testing.assert_allclose(c2w_gl @ OPENCV_TO_OPENGL, pose, atol=1e-6)
        # OpenGL camera: it looks down its -z axis, y up; in OpenCV terms +z forward, y down
        np.testing.assert_allclose(-c2w_gl[:3, 2], pose[:3, 2], atol=1e-6)


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished reconstruction"):
        export_recon(tmp_path, ["colmap"])
    with pytest.raises(ValueError, match="unknown export format"):
        export_recon(tmp_path, ["ply"])


def test_unregistered_frames_are_left_out_of_the_exports(tmp_path):
    with_unregistered_frame(tmp_path)
    written = export_recon(tmp_path, ["nerfstudio"], tmp_path / "export")
    frames = json.loads(written["nerfstudio"].read_text())["frames"]
    assert [f["file_path"] for f in frames] == [f"images/frame_{i:06d}.png" for i in (0, 2, 3)]
    assert all(np.isfinite(f["transform_matrix"]).all() for f in frames)
