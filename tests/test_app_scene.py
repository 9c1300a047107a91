"""The page's 3D view file (points, camera frusta, trajectory, a highlighted frame), the per-session folders, and
messages without server paths."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from slam3r.app.scene import HIGHLIGHT_RGB, ViewOptions, frustum_segments, trajectory_segments, write_view
from slam3r.data.glb import GLBScene, read_glb_json
from slam3r.app.sessions import Sessions, public_message
from slam3r.recon.output import ReconWriter
from slam3r.recon.summary import EngineSummary, RunSummary
from slam3r.recon.types import FrameResult


def test_frustum_segments_geometry() -> None:
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    segs = frustum_segments(c2w[None], np.array([50.0]), size=100, depth=2.0)
    assert segs.shape == (8, 2, 3)
    np.testing.assert_allclose(segs[:4, 0], np.tile([1, 2, 3], (4, 1)))  # from the camera centre ...
    # ... to the image corners at depth 2: half-width 100 / 2 / 50 = 1 at unit depth, so +-2 at depth 2
    np.testing.assert_allclose(sorted(map(tuple, segs[:4, 1] - [1, 2, 3])),
                               sorted([(-2, -2, 2), (2, -2, 2), (2, 2, 2), (-2, 2, 2)]))
    np.testing.assert_allclose(segs[4:, 0], segs[:4, 1])  # the rim joins the corners in turn
    np.testing.assert_allclose(segs[4:, 1], np.roll(segs[:4, 1], -1, axis=0))
    rot = np.eye(4)
    rot[:3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]  # looking along +x
    far = frustum_segments(rot[None], np.array([50.0]), 100, 1.0)[:4, 1]
    np.testing.assert_allclose(far[:, 0], 1.0)


def test_trajectory_segments_join_consecutive_centres() -> None:
    c = np.arange(12, dtype=np.float32).reshape(4, 3)
    segs = trajectory_segments(c)
    assert segs.shape == (3, 2, 3)
    np.testing.assert_array_equal(segs[:, 0], c[:-1])
    np.testing.assert_array_equal(segs[:, 1], c[1:])


def test_scene_glb_layout(tmp_path: Path) -> None:
    xyz = np.array([[0, 0, 1], [1, 2, 3]], np.float32)
    glb = GLBScene().points(xyz, np.array([[255, 0, 0], [0, 255, 0]], np.uint8))
    glb.lines(np.zeros((3, 2, 3)), (1, 2, 3)).lines(np.zeros((0, 2, 3)), (0, 0, 0))  # empty sets are left out
    path = glb.write(tmp_path / "s.glb")
    doc = read_glb_json(path)
    prims = doc["meshes"][0]["primitives"]
    assert [p["mode"] for p in prims] == [0, 1]
    assert [doc["accessors"][p["attributes"]["POSITION"]]["count"] for p in prims] == [2, 6]
    data = path.read_bytes()
    assert len(data) % 4 == 0 and int.from_bytes(data[8:12], "little") == len(data)
    pos = doc["accessors"][0]
    assert pos["min"] == [0, -2, -3] and pos["max"] == [1, 0, -1]  # OpenCV -> glTF: y and z flipped
    (tmp_path / "x.glb").write_bytes(b"nope" * 8)
    with pytest.raises(ValueError, match="not a glTF"):
        read_glb_json(tmp_path / "x.glb")


@pytest.fixture()
def result_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    writer = ReconWriter(tmp_path, "toy", conf_thres_l2w=2.0, num_points_save=10**6)
    for f in range(5):
        pts = rng.normal(size=(8, 8, 3)).astype(np.float32)
        pose = np.eye(4)
        pose[0, 3] = f
        conf = np.where(np.arange(64).reshape(8, 8) < 32, 5.0, 1.0).astype(np.float32)
        writer.add(FrameResult(f, None, np.full((8, 8, 3), 100, np.uint8), pts, conf, pts, conf, pose, 8.0,
                               is_keyframe=f == 0))
    writer.close(RunSummary(engine=EngineSummary(init_winsize=2, kf_stride=1, init_ref_id=0),
                            config={"seed": 42, "conf_thres_l2w": 2.0, "num_points_save": 10**6}))
    return tmp_path


def test_view_shows_what_is_switched_on(result_dir: Path) -> None:
    def modes(opt: ViewOptions) -> list[int]:
        doc = read_glb_json(write_view(result_dir, result_dir / "v.glb", opt))
        return [p["mode"] for p in doc["meshes"][0]["primitives"]]

    doc = read_glb_json(write_view(result_dir, result_dir / "v.glb", ViewOptions()))
    prims = doc["meshes"][0]["primitives"]
    counts = [doc["accessors"][p["attributes"]["POSITION"]]["count"] for p in prims]
    assert [p["mode"] for p in prims] == [0, 1, 1] and counts == [5 * 32, 5 * 16, 4 * 2]
    assert modes(ViewOptions(cameras=False)) == [0, 1]
    assert modes(ViewOptions(cameras=False, trajectory=False)) == [0]
    highlighted = read_glb_json(write_view(result_dir, result_dir / "v.glb",
                                           ViewOptions(False, False, highlight=3)))
    prims = highlighted["meshes"][0]["primitives"]
    assert [p["mode"] for p in prims] == [0, 0, 1]
    assert highlighted["accessors"][prims[1]["attributes"]["POSITION"]]["count"] == 32  # frame 3's confident points
    data = (result_dir / "v.glb").read_bytes()
    view = highlighted["bufferViews"][highlighted["accessors"][prims[1]["attributes"]["COLOR_0"]]["bufferView"]]
    start = 20 + int.from_bytes(data[12:16], "little") + 8 + view["byteOffset"]
    colours = np.frombuffer(data[start:start + view["byteLength"]], np.uint8).reshape(-1, 4)
    assert (colours[:, :3] == HIGHLIGHT_RGB).all()
    assert modes(ViewOptions(False, False, highlight=99)) == [0]  # no such frame: nothing highlighted


def with_unregistered_frame(out: Path) -> Path:
    """A 4-frame 8x8 result in ``out`` whose frame 1 was not registered (no pose, no focal, no confident point)."""
    writer = ReconWriter(out, "toy", conf_thres_l2w=2.0, num_points_save=10**6)
    for f in range(4):
        registered = f != 1
        pose = np.eye(4) if registered else np.full((4, 4), np.nan)
        pose[0, 3] = f if registered else np.nan
        pts = np.random.default_rng(f).normal(size=(8, 8, 3)).astype(np.float32) * registered
        conf = np.full((8, 8), 5.0 if registered else 1.0, np.float32)
        writer.add(FrameResult(f, None, np.full((8, 8, 3), 100, np.uint8), pts, conf, pts, conf, pose,
                               8.0 if registered else float("nan"), registered=registered))
    writer.close(RunSummary(engine=EngineSummary(init_winsize=2, kf_stride=1, init_ref_id=0),
                            config={"seed": 42, "conf_thres_l2w": 2.0, "num_points_save": 10**6}))
    return out


def test_unregistered_frames_have_no_camera_in_the_view(tmp_path: Path) -> None:
    root = with_unregistered_frame(tmp_path)
    doc = read_glb_json(write_view(root, root / "v.glb", ViewOptions()))
    prims = doc["meshes"][0]["primitives"]
    counts = [doc["accessors"][p["attributes"]["POSITION"]]["count"] for p in prims]
    assert [p["mode"] for p in prims] == [0, 1, 1] and counts == [3 * 64, 3 * 16, 2 * 2]
    assert all(np.isfinite(doc["accessors"][p["attributes"]["POSITION"]]["min"]).all() for p in prims)
    modes = [p["mode"] for p in read_glb_json(write_view(root, root / "v.glb", ViewOptions(False, False, 1)))[
        "meshes"][0]["primitives"]]
    assert modes == [0]  # nothing to highlight on a frame without a pose


def test_session_folders_are_separate_and_deleted_on_close(tmp_path: Path) -> None:
    uploads = tmp_path / "gradio"
    (uploads / "abc").mkdir(parents=True)
    upload = uploads / "abc" / "clip.mp4"
    upload.write_bytes(b"x")
    sessions = Sessions(tmp_path / "work", uploads)
    a, b = sessions.new_run_dir("session-A", "upload"), sessions.new_run_dir("session-B", "upload")
    assert a.parent != b.parent and a.parent.parent == b.parent.parent == sessions.root
    assert "session" not in a.parent.name and len(a.parent.name) >= 20  # not the browser's id, not guessable
    assert sessions.owns("session-A", a) and not sessions.owns("session-A", b)
    sessions.note_uploads("session-A", [str(upload), str(tmp_path / "elsewhere.mp4")])

    class Job:
        stopped = threading.Event()

        def stop(self) -> None:
            self.stopped.set()

        def join(self, timeout: float | None = None) -> bool:
            return self.stopped.wait(timeout)

    job = Job()
    sessions.set_running("session-A", job)
    sessions.close("session-A")
    assert job.stopped.is_set() and sessions.running("session-A") is None
    assert not a.parent.exists() and not upload.exists() and not (uploads / "abc").exists()
    assert b.exists()


def test_messages_carry_no_server_paths() -> None:
    assert public_message("cannot read /tmp/slam3r-app-x/sessions/abc/upload-1/frames/f.png: bad") == \
        "cannot read f.png: bad"
    assert public_message("stream rtsp://cam.local/live/1 ended") == "stream rtsp://cam.local/live/1 ended"
    assert public_message("amqp://127.0.0.1:5673/ refused") == "amqp://127.0.0.1:5673/ refused"
    assert public_message("summary in /srv/work/run/") == "summary in (folder)"
    assert json.loads(json.dumps(public_message("no path here"))) == "no path here"
