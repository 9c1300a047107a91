"""Input robustness: unreadable images are skipped and named, depth maps are recognised by the dataset layout,
videos carry their container's presentation times (variable frame rate included), --fps on images."""

from __future__ import annotations

import fractions
import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from slam3r.cli import main
from slam3r.data.sources import ImageFolderSource, VideoSource, open_source
from slam3r.data.synth import render_sequence

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")  # `apt-get install opencv-doc`


def _images(folder: Path, n: int, prefix: str = "img_", ext: str = ".png") -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    imgs = list(render_sequence(seed=11, num_frames=n, width=96, height=72).rgb)
    for i, im in enumerate(imgs):
        cv2.imwrite(str(folder / f"{prefix}{i}{ext}"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    return imgs


def _read_all(src) -> tuple[list, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(src)
    return frames, [str(w.message) for w in caught]


def test_unreadable_images_are_skipped_named_and_counted(tmp_path, monkeypatch):
    imgs = _images(tmp_path / "f", 8)
    (tmp_path / "f" / "img_2.png").write_bytes(b"")  # 0 bytes
    (tmp_path / "f" / "img_4.png").unlink()
    (tmp_path / "f" / "img_4.png").mkdir()  # a directory named like an image: unreadable, even for root
    denied = tmp_path / "f" / "img_6.png"
    real_fromfile = np.fromfile

    def fromfile(path, *args, **kwargs):  # permission denied, the way open() reports it, root or not
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_fromfile(path, *args, **kwargs)

    monkeypatch.setattr(np, "fromfile", fromfile)
    src = open_source(tmp_path / "f")
    frames, messages = _read_all(src)
    assert [f[0] for f in frames] == [0, 1, 3, 5, 7]
    np.testing.assert_array_equal(frames[3][1], imgs[5])
    assert src.skipped == 3 and len(messages) == 3
    assert [m.split(": ", 1)[0].rsplit("/", 1)[1] for m in src.skipped_items] == ["img_2.png", "img_4.png",
                                                                                  "img_6.png"]
    reasons = " | ".join(src.skipped_items)
    assert "0 bytes" in reasons and "not a regular file" in reasons and "Permission denied" in reasons


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_chmod_000_image_is_skipped(tmp_path):
    _images(tmp_path / "f", 3)
    (tmp_path / "f" / "img_1.png").chmod(0)
    try:
        src = open_source(tmp_path / "f")
        frames, messages = _read_all(src)
    finally:
        (tmp_path / "f" / "img_1.png").chmod(0o644)
    assert [f[0] for f in frames] == [0, 2] and "Permission denied" in src.skipped_items[0]


def test_depth_maps_by_layout_not_by_name(tmp_path):
    # plain photos whose names contain "depth" are frames
    _images(tmp_path / "photos", 3, prefix="depth_of_field_")
    src = open_source(tmp_path / "photos")
    assert len(list(src)) == 3 and src.excluded == []
    # Replica results/: frameN.jpg + depthN.png
    rep = tmp_path / "replica" / "results"
    _images(rep, 3, prefix="frame", ext=".jpg")
    for i in range(3):
        cv2.imwrite(str(rep / f"depth{i}.png"), np.full((72, 96), 1000, np.uint16))
    src = open_source(rep)
    assert [p.name for p in src.paths] == ["frame0.jpg", "frame1.jpg", "frame2.jpg"]
    assert sorted(Path(p).name for p in src.excluded) == ["depth0.png", "depth1.png", "depth2.png"]
    # 7-Scenes seq-XX/: frame-N.color.png + frame-N.depth.png
    seq = tmp_path / "seq-01"
    seq.mkdir()
    for i, im in enumerate(render_sequence(seed=2, num_frames=2, width=96, height=72).rgb):
        cv2.imwrite(str(seq / f"frame-{i:06d}.color.png"), im)
        cv2.imwrite(str(seq / f"frame-{i:06d}.depth.png"), np.full((72, 96), 1000, np.uint16))
    assert [p.name for p in open_source(seq).paths] == ["frame-000000.color.png", "frame-000001.color.png"]


def test_tum_sequence_folder_gives_timestamps_and_takes_fps(tmp_path):
    root = tmp_path / "rgbd_dataset_freiburg1_xyz"
    _images(root / "rgb", 10, prefix="", ext=".png")
    (root / "depth").mkdir()
    (root / "depth.txt").write_text("# depth\n")
    stamps = [1305031102.175304 + 0.1 * i for i in range(10)]
    (root / "rgb.txt").write_text("# timestamp filename\n" + "".join(f"{t:.6f} rgb/{i}.png\n"
                                                                     for i, t in enumerate(stamps)))
    frames = list(open_source(root))
    assert np.abs(np.array([f[2] for f in frames]) - np.round(np.array(stamps) * 1e6) * 1000).max() <= 1000  # 1 us
    sub = list(open_source(root, fps=5))  # 10 Hz sequence -> every second frame
    assert [f[0] for f in sub] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="depth maps of a TUM RGB-D sequence"):
        open_source(root / "depth")


def test_fps_on_an_image_folder_is_refused(tmp_path, tiny_weights_dir, capsys):
    _images(tmp_path / "f", 3)
    with pytest.raises(ValueError, match="--fps needs the frames' capture times"):
        ImageFolderSource(tmp_path / "f", fps=5)
    weights = tiny_weights_dir
    assert main(["recon", str(tmp_path / "f"), "--fps", "5", "--weights", str(weights), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slam3r recon: error: --fps needs the frames' capture times")


def test_folder_with_empty_and_unreadable_images_reconstructs(tmp_path, tiny_weights_dir, monkeypatch, capsys):
    _images(tmp_path / "f", 12, prefix="frame")
    (tmp_path / "f" / "frame3.png").write_bytes(b"")
    (tmp_path / "f" / "frame7.png").unlink()
    (tmp_path / "f" / "frame7.png").mkdir()
    denied = tmp_path / "f" / "frame9.png"
    if os.geteuid() != 0:
        denied.chmod(0)
    else:
        real_fromfile = np.fromfile

        def fromfile(path, *args, **kwargs):
            if Path(path) == denied:
                raise PermissionError(13, "Permission denied", str(path))
            return real_fromfile(path, *args, **kwargs)

        monkeypatch.setattr(np, "fromfile", fromfile)
    weights = tiny_weights_dir
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["recon", str(tmp_path / "f"), "--weights", str(weights), "--device", "cpu", "--out", str(out),
                   "--quiet", "--conf-thres-l2w", "1.0"])
    if os.geteuid() != 0:
        denied.chmod(0o644)
    assert rc == 0
    assert "skipped (unreadable) frames: 3" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 9 and summary["points"] > 0
    assert summary["input"]["skipped"] == 3
    named = [item.split(":")[0] for item in summary["input"]["skipped_items"]]
    assert named == [str(tmp_path / "f" / f"frame{i}.png") for i in (3, 7, 9)]


# ------------------------------------------------------------------------------------------------ videos
def _vfr_video(path: Path, pts_ms: list[int]) -> None:
    """A variable-frame-rate video written with PyAV: frame k shown at pts_ms[k] milliseconds."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.time_base = s.codec_context.time_base = fractions.Fraction(1, 1000)
        for k, p in enumerate(pts_ms):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, : 4 * k + 2] = 200
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = p, fractions.Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def _pyav_times_ns(path: Path) -> list[int]:
    import av

    with av.open(str(path)) as c:
        return [int(round(float(f.time) * 1e9)) for f in c.decode(c.streams.video[0])]


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_vfr_video_timestamps_are_presentation_times(tmp_path, backend):
    pts_ms = [0, 33, 50, 150, 400, 410, 420, 1000, 1033, 1500]
    path = tmp_path / "vfr.mkv"
    _vfr_video(path, pts_ms)
    truth = _pyav_times_ns(path)
    assert truth == [p * 1_000_000 for p in pts_ms]
    src = VideoSource(path, backend=backend)
    frames, messages = _read_all(src)
    assert messages == [] and src.skipped == 0  # OpenCV announces 46 frames here: no bogus warnings
    assert len(frames) == len(truth)
    assert np.abs(np.array([f[2] for f in frames]) - truth).max() <= 1_000_000  # 1 ms
    bars = [int((f[1][24, :, 0] > 100).sum()) for f in frames]
    assert all(abs(b - (4 * k + 2)) <= 3 for k, b in enumerate(bars))  # frame k really is frame k
    # --fps keeps the first frame at or after each 1/fps step of video time, gaps included
    kept = [f[2] // 1_000_000 for f in VideoSource(path, fps=4, backend=backend)]
    assert kept == [0, 400, 1000, 1500]


@pytest.mark.skipif(not (OPENCV_DATA / "tree.avi").is_file(), reason="opencv-doc sample videos not installed")
@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_opencv_tree_avi(backend):
    pytest.importorskip("av")
    path = OPENCV_DATA / "tree.avi"  # announces 444 frames at 15 fps, holds 68 at irregular times
    src = VideoSource(path, backend=backend)
    frames, messages = _read_all(src)
    assert messages == [] and src.skipped == 0
    truth = _pyav_times_ns(path)
    assert len(frames) == len(truth) == 68
    assert np.abs(np.array([f[2] for f in frames]) - truth).max() <= 1_000_000
