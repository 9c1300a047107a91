"""Dataset I/O: Replica layout round trip, TUM / 7-Scenes readers, TUM trajectories, PLY, frame sources."""

from __future__ import annotations

import json
import shutil
import warnings

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slam3r.data.datasets import detect_layout, read_rgbd
from slam3r.data.ply import read_ply, write_ply
from slam3r.data.replica import REPLICA_DEPTH_SCALE, read_replica, write_replica
from slam3r.data.sevenscenes import read_7scenes
from slam3r.data.sources import ImageFolderSource, VideoSource, open_source, sort_image_names
from slam3r.data.synth import render_sequence
from slam3r.data.trajectory_io import associate, read_tum_trajectory, write_tum_trajectory
from slam3r.data.tum import read_tum_rgbd


@pytest.fixture(scope="module")
def small_seq():
    return render_sequence(1_000_004, 4, 64, 48)


def test_replica_roundtrip_png_is_lossless_within_depth_quantisation(tmp_path, small_seq):
    write_replica(tmp_path, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w, image_ext=".png")
    assert (tmp_path / "results" / "frame000003.png").is_file()
    assert (tmp_path / "results" / "depth000003.png").is_file()
    cam = json.loads((tmp_path / "cam_params.json").read_text())["camera"]
    assert cam["scale"] == REPLICA_DEPTH_SCALE and (cam["w"], cam["h"]) == (64, 48)
    seq = read_replica(tmp_path)
    assert len(seq) == 4
    np.testing.assert_array_equal(seq.K, small_seq.K)
    np.testing.assert_array_equal(seq.poses, small_seq.c2w)
    for i in range(4):
        f = seq[i]
        np.testing.assert_array_equal(f.rgb, small_seq.rgb[i])
        assert np.abs(f.depth - small_seq.depth[i]).max() <= 0.5 / REPLICA_DEPTH_SCALE + 1e-6
    raw = cv2.imread(str(tmp_path / "results" / "depth000000.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    assert np.array_equal(raw, np.round(small_seq.depth[0] * 6553.5).astype(np.uint16))


def test_replica_jpeg_is_close(tmp_path, small_seq):
    write_replica(tmp_path, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w)
    seq = read_replica(tmp_path)
    assert seq.rgb_paths[0].suffix == ".jpg"
    assert np.abs(seq.load_rgb(1).astype(int) - small_seq.rgb[1]).mean() < 4


def test_replica_traj_format(tmp_path, small_seq):
    write_replica(tmp_path, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w, image_ext=".png")
    rows = np.loadtxt(tmp_path / "traj.txt")
    assert rows.shape == (4, 16)
    np.testing.assert_array_equal(rows[2].reshape(4, 4), small_seq.c2w[2])


def test_replica_missing_traj(tmp_path, small_seq):
    write_replica(tmp_path, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w, image_ext=".png")
    (tmp_path / "traj.txt").unlink()
    with pytest.raises(FileNotFoundError, match="traj.txt"):
        read_replica(tmp_path)


def test_replica_mismatched_counts(tmp_path, small_seq):
    write_replica(tmp_path, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w, image_ext=".png")
    (tmp_path / "results" / "depth000002.png").unlink()
    with pytest.raises(ValueError, match="mismatched frame counts.*4 colour vs 3 depth"):
        read_replica(tmp_path)
    write_replica(tmp_path, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w, image_ext=".png")
    with open(tmp_path / "traj.txt", "a") as f:
        f.write(" ".join(["0"] * 16) + "\n")
    with pytest.raises(ValueError, match="4 frames .* but 5 poses"):
        read_replica(tmp_path)


def test_replica_cam_params_in_parent_and_missing(tmp_path, small_seq):
    scene = tmp_path / "office0"
    write_replica(scene, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w, image_ext=".png")
    shutil.move(scene / "cam_params.json", tmp_path / "cam_params.json")
    assert len(read_replica(scene)) == 4  # the published download keeps it one level up
    (tmp_path / "cam_params.json").unlink()
    with pytest.raises(FileNotFoundError, match="cam_params.json"):
        read_replica(scene)


def test_replica_corrupt_image_names_the_file(tmp_path, small_seq):
    write_replica(tmp_path, small_seq.rgb, small_seq.depth, small_seq.K, small_seq.c2w, image_ext=".png")
    bad = tmp_path / "results" / "frame000001.png"
    bad.write_bytes(b"not a png")
    seq = read_replica(tmp_path)
    with pytest.raises(ValueError, match="frame000001.png"):
        seq[1]
    (tmp_path / "results" / "depth000002.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="depth000002.png"):
        seq.load_depth(2)


def test_replica_writer_rejects_wrong_size(tmp_path, small_seq):
    from slam3r.data.replica import ReplicaWriter

    with ReplicaWriter(tmp_path, small_seq.K, 64, 48) as w:
        with pytest.raises(ValueError, match="do not match"):
            w.add(small_seq.rgb[0][:, :32], small_seq.depth[0][:, :32], small_seq.c2w[0])


def test_tum_trajectory_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4), (6, 1, 1))
    c2w[:, :3, :3] = Rotation.random(6, random_state=1).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(6, 3))
    t = 1305031102.175304 + np.arange(6) / 30
    write_tum_trajectory(tmp_path / "t.txt", t, c2w)
    t2, c2w2 = read_tum_trajectory(tmp_path / "t.txt")
    np.testing.assert_allclose(t2, t, atol=1e-6)
    np.testing.assert_allclose(c2w2, c2w, atol=1e-8)
    (tmp_path / "bad.txt").write_text("1.0 2 3\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 8 values"):
        read_tum_trajectory(tmp_path / "bad.txt")


def test_associate_one_to_one_closest_first():
    ia, ib = associate(np.array([0.0, 0.1, 0.2, 0.5]), np.array([0.105, 0.09, 0.21, 0.9]), max_diff=0.02)
    assert list(zip(ia, ib)) == [(1, 0), (2, 2)]  # 0.105 is closer to 0.1 than 0.09 is


def _write_tum(root, small_seq, shift=0.004):
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    t = 100.0 + np.arange(len(small_seq)) / 30
    rgb_lines, depth_lines = ["# color images"], ["# depth maps"]
    for i, ti in enumerate(t):
        cv2.imwrite(str(root / f"rgb/{ti:.6f}.png"), small_seq.rgb[i][..., ::-1])
        cv2.imwrite(str(root / f"depth/{ti + shift:.6f}.png"), np.round(small_seq.depth[i] * 5000).astype(np.uint16))
        rgb_lines.append(f"{ti:.6f} rgb/{ti:.6f}.png")
        depth_lines.append(f"{ti + shift:.6f} depth/{ti + shift:.6f}.png")
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    # ground truth at other times; only frames 1..3 have a pose within 20 ms
    write_tum_trajectory(root / "groundtruth.txt", t[1:] - 0.003, small_seq.c2w[1:])
    return t


def test_tum_rgbd_reader(tmp_path, small_seq):
    root = tmp_path / "rgbd_dataset_freiburg1_xyz"
    t = _write_tum(root, small_seq)
    seq = read_tum_rgbd(root)
    assert detect_layout(root) == "tum" and len(read_rgbd(root)) == 3
    assert len(seq) == 3
    np.testing.assert_allclose(seq.timestamps, t[1:])
    np.testing.assert_allclose(seq.poses, small_seq.c2w[1:], atol=1e-7)
    assert seq.K[0, 0] == 517.3  # freiburg1 calibration from the folder name
    f = seq[0]
    np.testing.assert_array_equal(f.rgb, small_seq.rgb[1])
    assert np.abs(f.depth - small_seq.depth[1]).max() <= 0.5 / 5000 + 1e-6


def test_tum_rgbd_missing_groundtruth(tmp_path, small_seq):
    root = tmp_path / "seq"
    _write_tum(root, small_seq)
    (root / "groundtruth.txt").unlink()
    with pytest.raises(FileNotFoundError, match="groundtruth.txt"):
        read_tum_rgbd(root)


def test_7scenes_reader(tmp_path, small_seq):
    seq_dir = tmp_path / "chess" / "seq-01"
    seq_dir.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(seq_dir / f"frame-{i:06d}.color.png"), small_seq.rgb[i][..., ::-1])
        raw = np.round(small_seq.depth[i] * 1000).astype(np.uint16)
        raw[0, :5] = 65535
        cv2.imwrite(str(seq_dir / f"frame-{i:06d}.depth.png"), raw)
        np.savetxt(seq_dir / f"frame-{i:06d}.pose.txt", small_seq.c2w[i])
    seq = read_7scenes(seq_dir)
    assert detect_layout(seq_dir) == "7scenes"
    assert len(seq) == 3 and seq.K[0, 0] == 585.0
    d = seq.load_depth(2)
    assert np.all(d[0, :5] == 0)
    assert np.abs(d[1:] - small_seq.depth[2][1:]).max() <= 0.0005 + 1e-6
    np.testing.assert_allclose(seq.poses, small_seq.c2w[:3], atol=1e-12)
    (seq_dir / "frame-000001.pose.txt").unlink()
    with pytest.raises(FileNotFoundError, match="frame-000001.pose.txt"):
        read_7scenes(seq_dir)


def test_detect_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect_layout(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a Replica"):
        detect_layout(tmp_path)


def test_ply_roundtrip_and_foreign_files(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    conf = rng.random(50).astype(np.float32)
    write_ply(tmp_path / "a.ply", xyz, rgb, conf)
    assert (tmp_path / "a.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    pc = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(pc.xyz, xyz)
    np.testing.assert_array_equal(pc.rgb, rgb)
    np.testing.assert_array_equal(pc.conf, conf)
    assert read_ply(write_ply(tmp_path / "b.ply", xyz)).rgb is None
    (tmp_path / "c.ply").write_text(
        "ply\nformat ascii 1.0\ncomment hand written\nelement vertex 2\nproperty double x\nproperty double y\n"
        "property double z\nproperty float red\nproperty float green\nproperty float blue\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "1 2 3 1.0 0.5 0.0\n4 5 6 0 0 1\n3 0 1 1\n")
    pc = read_ply(tmp_path / "c.ply")
    np.testing.assert_array_equal(pc.xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(pc.rgb, [[255, 128, 0], [0, 0, 255]])
    data = (tmp_path / "a.ply").read_bytes()
    (tmp_path / "d.ply").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_ply(tmp_path / "d.ply")
    with pytest.raises(ValueError, match="rgb has 3 entries for 50 points"):
        write_ply(tmp_path / "e.ply", xyz, rgb[:3])


def test_reference_frame_order():
    # a Replica results/ folder: depthN.png are depth maps; a name merely containing "depth" is an image
    names = ["frame10.jpg", "frame2.jpg", "depth1.png", "frame1.jpg", "frame_depth_3.png"]
    assert sort_image_names(names) == ["frame1.jpg", "frame2.jpg", "frame_depth_3.png", "frame10.jpg"]
    assert sort_image_names(["depth_of_field2.jpg", "depth_of_field1.jpg"]) == ["depth_of_field1.jpg",
                                                                                "depth_of_field2.jpg"]
    seven = ["frame-000001.color.png", "frame-000000.depth.png", "frame-000000.color.png", "frame-000001.depth.png"]
    assert sort_image_names(seven) == ["frame-000000.color.png", "frame-000001.color.png"]
    assert sort_image_names(["b.png", "a10.png", "a2.png"]) == ["a2.png", "a10.png", "b.png"]  # natural fallback
    assert sort_image_names(["x_9.png", "y_10.png", "z_1.png"]) == ["z_1.png", "x_9.png", "y_10.png"]


def _write_frames(folder, n=5, size=(32, 24)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size[1], size[0], 3), dtype=np.uint8)
    for i, img in enumerate(imgs):
        cv2.imwrite(str(folder / f"img_{i * 5}.png"), img[..., ::-1])
    return imgs


def test_image_folder_source_order_and_corrupt_frames(tmp_path):
    imgs = _write_frames(tmp_path / "f")
    (tmp_path / "f" / "img_10.png").write_bytes(b"garbage")
    src = open_source(tmp_path / "f")
    assert isinstance(src, ImageFolderSource)
    with pytest.warns(RuntimeWarning, match="img_10.png"):
        frames = list(src)
    assert [f[0] for f in frames] == [0, 1, 3, 4]  # index = position in the sorted folder; the gap is the bad one
    assert src.skipped == 1
    np.testing.assert_array_equal(frames[2][1], imgs[3])
    assert frames[0][2] is None and frames[0][1].dtype == np.uint8 and frames[0][1].shape == (24, 32, 3)


def test_sources_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* found in folder .*empty"):
        open_source(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match="bad.mp4"):
        list(open_source(tmp_path / "bad.mp4"))
    (tmp_path / "allbad").mkdir()
    (tmp_path / "allbad" / "a1.jpg").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable images"):
            list(open_source(tmp_path / "allbad"))


def test_image_list_and_single_image(tmp_path):
    imgs = _write_frames(tmp_path / "f", n=3)
    src = open_source([tmp_path / "f" / "img_10.png", tmp_path / "f" / "img_0.png"])
    frames = list(src)
    assert [f[0] for f in frames] == [0, 1]
    np.testing.assert_array_equal(frames[0][1], imgs[2])
    assert len(list(open_source(str(tmp_path / "f" / "img_5.png")))) == 1


def _write_video(path, n=30, fps=30.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, : 2 * i + 1] = 200  # a bar growing by 2 px per frame identifies the frame
        writer.write(img)
    writer.release()


def test_video_source_all_frames_and_fps_subsampling(tmp_path):
    path = tmp_path / "v.mp4"
    _write_video(path)
    frames = list(open_source(path))
    assert [f[0] for f in frames] == list(range(30))
    assert frames[3][2] == 100_000_000  # 3 / 30 s in ns
    bar = [int((f[1][24, :, 0] > 100).sum()) for f in frames]
    assert all(abs(b - (2 * i + 1)) <= 2 for i, b in enumerate(bar))
    src = VideoSource(path, fps=5)
    sub = list(src)
    assert [f[0] for f in sub] == [0, 6, 12, 18, 24]
    assert src.expected_frames == 5 and src.skipped == 0
    with pytest.raises(ValueError, match="fps must be > 0"):
        VideoSource(path, fps=0)


def test_video_corrupt_frame_is_skipped_and_counted(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for i in range(10):
        writer.write(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG frame starts
    assert len(starts) == 10
    data[starts[5]:starts[5] + 600] = bytes(600)  # wipe frame 5's JPEG header and first scan bytes
    path.write_bytes(bytes(data))
    src = VideoSource(path)
    with pytest.warns(RuntimeWarning, match="frame 5 of"):
        frames = list(src)
    assert [f[0] for f in frames] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert src.skipped == 1


def test_stream_sources_dispatch_read_and_fail_clearly(tmp_path):
    from slam3r.data.sources import StreamSource

    url = open_source("rtsp://127.0.0.1:1/none")
    assert isinstance(url, StreamSource) and url.name == "rtsp://127.0.0.1:1/none"
    cam = open_source("3")
    assert isinstance(cam, StreamSource) and cam.spec == 3
    with pytest.raises(ValueError, match="cannot open rtsp://127.0.0.1:1/none"):
        list(url)
    # any OpenCV-readable location works as a stream; it ends after a run of failed reads
    _write_video(tmp_path / "v.mp4", n=6)
    frames = list(StreamSource(str(tmp_path / "v.mp4"), max_failures=3))
    assert [f[0] for f in frames] == list(range(6))
    assert all(isinstance(f[2], int) for f in frames) and frames[0][1].shape == (48, 64, 3)
