"""App input handling without a browser: uploads (types, limits, zips, image order), widget values -> config, and
a reconstruction job on bad input (reported, not raised)."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from slam3r.app.controls import make_config
from slam3r.app.inputs import UploadError, UploadLimits, open_upload
from slam3r.app.jobs import ReconJob
from slam3r.app.preview import PreviewCloud
from slam3r.config import ConfigError
from slam3r.recon.config import ReconConfig

LIMITS = UploadLimits(max_mb=1.0, max_frames=50)


def image(path: Path, value: int) -> Path:
    cv2.imwrite(str(path), np.full((40, 48, 3), value, np.uint8))
    return path


def video(path: Path, frames: int) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    w.release()
    return path


def test_unsupported_and_mixed_uploads_are_refused(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("not a video")
    with pytest.raises(UploadError, match=r"notes.txt: unsupported file type '.txt'.*video"):
        open_upload([txt], tmp_path, LIMITS)
    with pytest.raises(UploadError, match="nothing uploaded"):
        open_upload([], tmp_path, LIMITS)
    clip = video(tmp_path / "a.mp4", 3)
    with pytest.raises(UploadError, match="either one video, one zip, or images only"):
        open_upload([clip, image(tmp_path / "1.png", 9)], tmp_path, LIMITS)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(UploadError, match="limit is 1 MB"):
        open_upload([big], tmp_path, LIMITS)
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"this is no video")
    with pytest.raises(UploadError, match="fake.mp4"):
        list(open_upload([fake], tmp_path, LIMITS)[0])


def test_images_are_ordered_like_a_folder(tmp_path: Path) -> None:
    paths = [image(tmp_path / f"frame{i}.png", 10 * i) for i in (10, 2, 1)]
    source, scene = open_upload([str(p) for p in paths] + [str(image(tmp_path / "depth3.png", 0))], tmp_path,
                                LIMITS)
    assert scene == "images"
    assert [int(rgb[0, 0, 0]) for _, rgb, _ in source] == [10, 20, 100]


def test_folder_upload_skips_other_files(tmp_path: Path) -> None:
    paths = [image(tmp_path / f"{i}.png", 10 * i) for i in (2, 1, 3)]
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("a folder's other files")
    listing = [str(p) for p in paths] + [str(tmp_path / ".DS_Store"), str(tmp_path / "notes.txt")]
    with pytest.raises(UploadError, match="notes.txt|DS_Store"):  # as single files they are refused ...
        open_upload(listing, tmp_path, LIMITS)
    source, _ = open_upload(listing, tmp_path, LIMITS, skip_other_files=True)  # ... in a folder, skipped
    assert [int(rgb[0, 0, 0]) for _, rgb, _ in source] == [10, 20, 30]
    with pytest.raises(UploadError, match="the folder holds no images"):
        open_upload(listing[3:], tmp_path, LIMITS, skip_other_files=True)


def test_zip_of_a_folder(tmp_path: Path) -> None:
    archive = tmp_path / "room.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in (3, 1, 2):
            zf.write(image(tmp_path / f"{i}.jpg", 40 * i), f"room/images/{i}.jpg")
        zf.writestr("room/readme.txt", "ignored")
        zf.writestr("__MACOSX/room/images/._1.jpg", "resource fork")
    work = tmp_path / "work"
    source, scene = open_upload([archive], work, LIMITS)
    assert scene == "room"
    assert [abs(int(rgb[0, 0, 0]) - 40 * k) <= 2 for k, (_, rgb, _) in zip((1, 2, 3), source)] == [True] * 3
    assert sorted(p.name for p in (work / "frames").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("notes.txt", "x")
    with pytest.raises(UploadError, match="no images"):
        open_upload([empty], work, LIMITS)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really")
    with pytest.raises(UploadError, match="not a readable zip"):
        open_upload([broken], work, LIMITS)


def test_widget_values_to_config() -> None:
    base = ReconConfig()
    cfg = make_config(base, {"keyframe_stride": "auto", "buffer_strategy": "unbounded", "buffer_size": 7,
                             "win_r": 5.0, "conf_thres_l2w": 3.5, "num_points_save": 1000.0})
    assert (cfg.keyframe_stride, cfg.buffer_size, cfg.buffer_strategy, cfg.win_r) == (-1, -1, "reservoir", 5)
    assert (cfg.conf_thres_l2w, cfg.num_points_save) == (3.5, 1000)
    fifo = make_config(base, {"keyframe_stride": "4", "buffer_strategy": "fifo", "buffer_size": 20})
    assert (fifo.keyframe_stride, fifo.buffer_strategy, fifo.buffer_size) == (4, "fifo", 20)
    with pytest.raises(ConfigError, match="buffer_size"):
        make_config(base, {"buffer_strategy": "fifo", "buffer_size": 3})


def test_job_reports_a_one_frame_video(tmp_path: Path, tiny_models) -> None:
    source, _ = open_upload([video(tmp_path / "one.mp4", 1)], tmp_path, LIMITS)
    job = ReconJob(iter(source), *tiny_models, ReconConfig(), tmp_path / "out", scene="one", online=False,
                   device="cpu", preview=PreviewCloud(tmp_path / "preview", 1.0)).start()
    final = list(job.updates(0.05))[-1]
    assert final.done and final.summary is None
    assert "at least 2 frames" in final.error


def test_live_job_stops_and_exports_what_it_read(tmp_path: Path, tiny_models) -> None:
    from slam3r.data.synth import render_sequence

    rgb = render_sequence(seed=1_000_005, num_frames=12, width=80, height=64).rgb

    def endless():  # a live stream: never ends by itself
        i = 0
        while True:
            yield i, rgb[i % len(rgb)], i * 10**8
            i += 1
            time.sleep(0.01)

    job = ReconJob(endless(), *tiny_models, ReconConfig(conf_thres_l2w=1.0), tmp_path / "out", scene="live",
                   online=True, device="cpu", preview=PreviewCloud(tmp_path / "preview", 1.0), preview_every=4)
    job.start()
    for st in job.updates(0.05):
        if st.frames_registered >= 8:
            job.stop()
    assert st.done and st.error is None
    assert st.summary["frames"] == st.frames_read >= 8  # every frame read was registered and exported
    assert (tmp_path / "out" / "live_recon.ply").is_file()
    assert len(list((tmp_path / "preview").glob("preview_*.glb"))) == 2  # only the newest two are kept


def test_offline_job_stops_and_keeps_what_was_registered(tmp_path: Path, tiny_models) -> None:
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (48, 64 + 2 * 120, 3), dtype=np.uint8)
    frames = [(i, np.ascontiguousarray(tex[:, 2 * i:2 * i + 64]), None) for i in range(120)]
    slot = threading.Lock()
    slot.acquire()  # as the app does: the job releases the server's slot when its thread ends
    job = ReconJob(iter(frames), *tiny_models, ReconConfig(conf_thres_l2w=1.0, keyframe_stride=1), tmp_path / "out",
                   scene="up", online=False, device="cpu", preview=PreviewCloud(tmp_path / "preview", 1.0),
                   slot=slot).start()
    for st in job.updates(0.02):
        if st.frames_registered > 0 and not st.stopping:
            job.stop()
    assert st.done and st.error is None and st.stopping
    assert 0 < st.summary["frames"] == st.frames_registered < 120  # everything read, not everything registered
    assert st.summary["interrupted"] is True and st.summary["stop_reason"] == "Stop pressed in the page"
    assert len(np.load(tmp_path / "out" / "preds" / "registered_confs.npy")) == st.summary["frames"]
    assert slot.acquire(blocking=False)


def test_job_stopped_before_any_registration_keeps_nothing(tmp_path: Path, tiny_models) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    job = ReconJob(iter([(i, rgb, None) for i in range(10)]), *tiny_models, ReconConfig(keyframe_stride=1),
                   tmp_path / "out", scene="x", online=False, device="cpu",
                   preview=PreviewCloud(tmp_path / "preview", 1.0))
    job.stop()
    final = list(job.start().updates(0.02))[-1]
    assert final.summary is None and "before any frame was registered" in final.error


def test_app_command_reports_bad_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slam3r.cli import main

    assert main(["app", "--weights", str(tmp_path), "--device", "cpu"]) == 2
    assert "slam3r app: error:" in capsys.readouterr().err
