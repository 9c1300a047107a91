"""`slam3r recon` end to end with tiny random networks: reference output layout, streaming, and bad inputs."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from slam3r.cli import main
from slam3r.data.ply import read_ply
from slam3r.data.synth import render_sequence

N = 60


@pytest.fixture(scope="module")
def weights(tiny_weights_dir) -> Path:
    return tiny_weights_dir


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    seq = render_sequence(seed=777, num_frames=N, width=96, height=72)
    d = tmp_path_factory.mktemp("frames")
    for i, im in enumerate(seq.rgb):
        cv2.imwrite(str(d / f"frame{i}.jpg"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    (d / "depth5.png").write_bytes(b"a Replica-layout depth map (depthN beside frameN): not a frame")
    return d


def run(*args: str) -> int:
    return main(["recon", *args, "--quiet"])


def test_offline_reference_layout(weights, frames_dir, tmp_path):
    out = tmp_path / "out"
    rc = run(str(frames_dir), "--weights", str(weights), "--device", "cpu", "--out", str(out), "--scene", "s",
             "--win-r", "5", "--num-scene-frame", "10", "--conf-thres-l2w", "1.0", "--num-points-save", "5000")
    assert rc == 0
    preds = out / "preds"
    shapes = {name: np.load(preds / f"{name}.npy", mmap_mode="r").shape for name in
              ("local_pcds", "registered_pcds", "local_confs", "registered_confs", "input_imgs")}
    assert shapes == {"local_pcds": (N, 64, 64, 3), "registered_pcds": (N, 64, 64, 3), "local_confs": (N, 64, 64),
                      "registered_confs": (N, 64, 64), "input_imgs": (N, 64, 64, 3)}
    assert np.load(preds / "input_imgs.npy").dtype == np.uint8
    meta = json.loads((preds / "metadata.json").read_text())
    assert meta["scene_id"] == "s" and set(meta) == {"scene_id", "init_winsize", "kf_stride", "init_ref_id"}
    assert 2 <= meta["init_winsize"] <= 5 and meta["kf_stride"] >= 1
    cloud = read_ply(out / "s_recon.ply")
    assert len(cloud) == 5000 and cloud.rgb is not None
    # the cloud is a subset of the registered points
    reg = np.load(preds / "registered_pcds.npy").reshape(-1, 3)
    hits = {tuple(p) for p in reg.round(5)}
    assert all(tuple(p) in hits for p in cloud.xyz[:200].round(5))
    glb = (out / "s_recon.glb").read_bytes()
    magic, version, length = struct.unpack("<4sII", glb[:12])
    assert magic == b"glTF" and version == 2 and length == len(glb)
    traj = [l for l in (out / "trajectory.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(traj) == N and all(len(l.split()) == 8 for l in traj)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == N and summary["points"] == 5000 and summary["config"]["win_r"] == 5


def test_streaming_60_frames(weights, frames_dir, tmp_path):
    out = tmp_path / "online"
    rc = run(str(frames_dir), "--weights", str(weights), "--device", "cpu", "--out", str(out), "--online",
             "--no-preds", "--conf-thres-l2w", "1.0")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "online" and summary["frames"] == N
    assert not (out / "preds" / "registered_pcds.npy").exists()


def test_video_input_and_corrupt_frame(weights, frames_dir, tmp_path, capsys):
    # a folder with a corrupt image in the middle: skipped with a warning, counted, never a crash
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(12):
        (bad / f"frame{i}.jpg").write_bytes((frames_dir / f"frame{i}.jpg").read_bytes())
    (bad / "frame6.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = run(str(bad), "--weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "o1"))
    assert rc == 0
    assert any("frame6.jpg" in str(w.message) for w in caught)
    assert "skipped (unreadable) frames: 1" in capsys.readouterr().out
    assert json.loads((tmp_path / "o1" / "summary.json").read_text())["frames"] == 11
    # a 2-frame video is the smallest input that can be reconstructed
    video = tmp_path / "two.mp4"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 72))
    for i in range(2):
        vw.write(cv2.imread(str(frames_dir / f"frame{i}.jpg")))
    vw.release()
    rc = run(str(video), "--weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "o2"))
    assert rc == 0
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["frames"] == 2


def test_bad_inputs(weights, frames_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(str(empty), "--weights", str(weights), "--out", str(tmp_path / "e")) == 2
    assert "no image" in capsys.readouterr().err.lower()
    assert run(str(tmp_path / "missing.mp4"), "--weights", str(weights)) == 2
    assert "input not found" in capsys.readouterr().err
    one = tmp_path / "one"
    one.mkdir()
    (one / "frame0.jpg").write_bytes((frames_dir / "frame0.jpg").read_bytes())
    assert run(str(one), "--weights", str(weights), "--out", str(tmp_path / "x")) == 2
    assert "at least 2 frames" in capsys.readouterr().err
    junk = tmp_path / "junk"
    for net in ("i2p", "l2w"):
        (junk / net).mkdir(parents=True)
        (junk / net / "config.json").write_text("{}")
        (junk / net / "model.safetensors").write_bytes(b"garbage")
    assert run(str(frames_dir), "--weights", str(junk)) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err
    assert run(str(frames_dir), "--weights", str(weights), "--win-r", "0") == 2
    assert "win_r must be >= 1" in capsys.readouterr().err
    assert run(str(frames_dir), "--weights", str(weights), "--intrinsics", "1,2,3") == 2
    assert "four numbers" in capsys.readouterr().err


def test_known_intrinsics(weights, frames_dir, tmp_path):
    rc = run(str(frames_dir), "--weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "k"),
             "--intrinsics", "60,60,47.5,35.5", "--keyframe-stride", "2", "--no-preds")
    assert rc == 0
    cams = json.loads((tmp_path / "k" / "cameras.json").read_text())
    # 96x72 is resized to 85x64 (long side round(64 * 96/72)) before the centre crop: fx scales by 85/96
    assert cams[0]["focal"] == pytest.approx(60 * 85 / 96, rel=1e-6)


def test_eval_scores_a_recon_directory(weights, tmp_path):
    """`slam3r synth` -> `slam3r recon` -> `slam3r eval --pred OUT_DIR`: the published metrics and ATE come back."""
    assert main(["synth", "--seed", "1000011", "--frames", "14", "--width", "96", "--height", "72",
                 "--out", str(tmp_path / "scene"), "--no-video"]) == 0
    assert run(str(tmp_path / "scene" / "results"), "--weights", str(weights), "--device", "cpu",
               "--out", str(tmp_path / "rec")) == 0
    assert main(["eval", "--pred", str(tmp_path / "rec"), "--gt", str(tmp_path / "scene"), "--conf-thresh", "1",
                 "--num-samples", "5000", "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gt_frames"] == 14 and report["trajectory"]["num_poses"] == 14  # trajectory.txt found by itself
    assert report["trajectory"]["ate_rmse_m"] >= 0 and report["reconstruction"]["num_pairs"] == 5000
    assert set(report["reconstruction"]["metrics"]) >= {"accuracy_cm", "completion_cm"}
    assert main(["eval", "--pred", str(tmp_path), "--gt", str(tmp_path / "scene")]) == 2
