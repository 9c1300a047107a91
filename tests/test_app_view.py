"""``slam3r view``: the offscreen mp4 render of a growing reconstruction, the splatting renderer, and the viser
viewer, on a ground-truth "reconstruction" of a synthetic scene."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from slam3r.app.splat import BACKGROUND, look_at, splat
from slam3r.app.view import load_reconstruction
from slam3r.cli import main
from slam3r.recon.output import ReconWriter
from slam3r.recon.summary import EngineSummary, RunSummary
from slam3r.recon.types import FrameResult

S, N = 48, 12


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reconstruction directory whose world points are the synthetic scene's ground truth."""
    from slam3r.data.pointmaps import gt_pointmaps
    from slam3r.data.preprocess import resize_crop
    from slam3r.data.synth import render_sequence

    out = tmp_path_factory.mktemp("gt")
    seq = render_sequence(seed=1_000_004, num_frames=N, width=96, height=72)
    pts, valid = gt_pointmaps(seq.depth, seq.K, seq.c2w, size=S)
    writer = ReconWriter(out, "gt", conf_thres_l2w=3.0, num_points_save=10**6)
    for i in range(N):
        conf = np.where(valid[i], 20.0, 1.0).astype(np.float32)
        writer.add(FrameResult(i, None, resize_crop(seq.rgb[i], S), pts[i], conf, pts[i], conf, seq.c2w[i],
                               S * 0.6, is_keyframe=i % 4 == 0))
    writer.close(RunSummary(engine=EngineSummary(init_winsize=2, kf_stride=1, init_ref_id=0),
                            config={"seed": 42, "conf_thres_l2w": 3.0, "num_points_save": 10**6}))
    return out


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


@pytest.mark.parametrize("camera", ["follow", "orbit"])
def test_render_mp4_of_the_growing_reconstruction(result_dir: Path, tmp_path: Path, camera: str) -> None:
    out = tmp_path / "recon.mp4"
    assert main(["view", str(result_dir), "--render", str(out), "--camera", camera, "--size", "160x120",
                 "--points-per-frame", "800"]) == 0
    frames = read_video(out)
    assert len(frames) == N and frames[0].shape == (120, 160, 3)
    drawn = [int((np.abs(f.astype(int) - BACKGROUND[::-1]).sum(-1) > 30).sum()) for f in frames]
    assert drawn[0] > 100 and drawn[-1] > drawn[0]  # the cloud grows as frames are added


def test_splat_projects_and_occludes() -> None:
    w2c = look_at(np.zeros(3), np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0]))
    np.testing.assert_allclose(w2c, np.eye(4), atol=1e-12)  # OpenCV camera at the origin looking along +z
    xyz = np.array([[0.0, 0.0, 4.0], [0.0, 0.0, 2.0], [0.5, 0.0, 2.0]])
    rgb = np.array([[0, 0, 255], [255, 0, 0], [0, 255, 0]], np.uint8)
    img = splat(xyz, rgb, w2c, focal=20.0, width=21, height=21, radius=0)
    assert tuple(img[10, 10]) == (255, 0, 0)  # the nearer red point hides the blue one behind it
    assert tuple(img[10, 15]) == (0, 255, 0)  # x = 0.5 at z = 2 -> 20 * 0.25 = 5 px right of the centre
    assert tuple(img[0, 0]) == BACKGROUND
    behind = splat(np.array([[0.0, 0.0, -1.0]]), rgb[:1], w2c, 20.0, 21, 21)
    assert (behind == np.array(BACKGROUND, np.uint8)).all()


def test_viser_viewer_serves_the_scene(result_dir: Path) -> None:
    pytest.importorskip("viser")
    from slam3r.app.view import start_viewer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = load_reconstruction(result_dir)
    assert (rec.scene, len(rec.poses_c2w), rec.size, rec.conf_thres) == ("gt", N, S, 3.0)
    server = start_viewer(rec, "127.0.0.1", port, max_points=5000)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
        assert b"<html" in page.lower()
    finally:
        server.stop()


def test_view_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["view", str(tmp_path)]) == 2
    assert "needs the per-frame predictions" in capsys.readouterr().err
