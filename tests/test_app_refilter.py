"""Re-filtering a finished reconstruction (threshold / point count) without inference gives exactly the expected
points, and at the run's own settings reproduces the pipeline's export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slam3r.app.refilter import highest_confidence, percentile_threshold, refilter
from slam3r.data.cloud import select_points
from slam3r.data.ply import read_ply
from slam3r.recon.output import ReconWriter, RunOutput
from slam3r.recon.summary import EngineSummary, RunSummary
from slam3r.recon.types import FrameResult

V, S = 3, 4


def hand_made_preds(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 3-frame 4x4 preds directory: point (v, i, j) = (v, i, j), colour (10v, i, j), conf 1 + v + 0.1*(4i+j)."""
    v, i, j = np.meshgrid(np.arange(V), np.arange(S), np.arange(S), indexing="ij")
    pts = np.stack([v, i, j], -1).astype(np.float32)
    imgs = np.stack([10 * v, i, j], -1).astype(np.uint8)
    confs = (1 + v + 0.1 * (S * i + j)).astype(np.float32)
    preds = root / "preds"
    preds.mkdir(parents=True)
    np.save(preds / "registered_pcds.npy", pts)
    np.save(preds / "registered_confs.npy", confs)
    np.save(preds / "input_imgs.npy", imgs)
    (preds / "metadata.json").write_text(json.dumps({"scene_id": "hand", "init_winsize": 2, "kf_stride": 1,
                                                     "init_ref_id": 0}))
    (root / "summary.json").write_text(json.dumps({"points": 0, "config": {"seed": 7}}))
    return pts, confs, imgs


def test_threshold_keeps_exactly_the_points_above_it(tmp_path: Path) -> None:
    pts, confs, imgs = hand_made_preds(tmp_path)
    cloud = RunOutput(tmp_path).select(conf_thres=2.45, num_points=10**6)
    # frame 0: conf 1.0 .. 2.5 -> only (i, j) = (3, 3) (2.5); frames 1 and 2: every pixel (>= 2.0, >= 3.0) but
    # frame 1's first five (2.0 .. 2.4)
    expected = [(0, 3, 3)] + [(1, k // S, k % S) for k in range(5, S * S)] + \
               [(2, k // S, k % S) for k in range(S * S)]
    assert len(cloud) == len(expected) == 1 + 11 + 16
    np.testing.assert_array_equal(cloud.xyz, np.array(expected, np.float32))
    np.testing.assert_array_equal(cloud.rgb, np.array([(10 * a, b, c) for a, b, c in expected], np.uint8))
    assert (cloud.conf > 2.45).all()


def test_point_count_is_a_seeded_subset(tmp_path: Path) -> None:
    hand_made_preds(tmp_path)
    full = RunOutput(tmp_path).select(conf_thres=1.05, num_points=10**6)
    assert len(full) == V * S * S - 1
    a = RunOutput(tmp_path).select(conf_thres=1.05, num_points=9, seed=3)
    b = RunOutput(tmp_path).select(conf_thres=1.05, num_points=9, seed=3)
    assert len(a) == 9
    np.testing.assert_array_equal(a.xyz, b.xyz)
    rows = {tuple(p) for p in full.xyz.tolist()}
    assert all(tuple(p) in rows for p in a.xyz.tolist())
    order = [tuple(p) for p in a.xyz.tolist()]
    assert order == sorted(order)  # frame order is kept
    assert len(RunOutput(tmp_path).select(conf_thres=100.0, num_points=5)) == 0
    assert len(RunOutput(tmp_path).select(conf_thres=1.05, num_points=0)) == 0


def test_refilter_rewrites_ply_glb_and_summary(tmp_path: Path) -> None:
    hand_made_preds(tmp_path)
    summary = refilter(tmp_path, conf_thres=2.45, num_points=20)
    ply = read_ply(tmp_path / "hand_recon.ply")
    assert len(ply) == summary["points"] == 20
    assert (ply.conf > 2.45).all()
    expected = RunOutput(tmp_path).select(2.45, 20, seed=7)  # the run's seed from summary.json
    np.testing.assert_array_equal(ply.xyz, expected.xyz)
    glb = (tmp_path / "hand_recon.glb").read_bytes()
    assert glb[:4] == b"glTF"
    doc = json.loads(glb[20:20 + int.from_bytes(glb[12:16], "little")])
    assert doc["accessors"][0]["count"] == 20
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["export"] == {"conf_thres_l2w": 2.45, "num_points_save": 20, "conf_percentile": 0.0,
                               "effective_conf_thres": 2.45} and saved["points"] == 20


def test_percentile_filter_drops_the_least_confident_share(tmp_path: Path) -> None:
    _, confs, _ = hand_made_preds(tmp_path)  # 48 distinct confidences 1.0 .. 4.5
    cut = percentile_threshold(confs, 25)
    assert cut == pytest.approx(np.percentile(confs, 25))
    summary = refilter(tmp_path, conf_thres=1.0, num_points=10**6, percentile=25)
    assert summary["points"] == int((confs > cut).sum()) == 36  # the lowest quarter (12 of 48) is dropped
    assert summary["export"]["effective_conf_thres"] == pytest.approx(cut)
    # the absolute threshold still applies when it is the stricter one
    assert refilter(tmp_path, conf_thres=3.05, num_points=10**6, percentile=25)["points"] == int((confs > 3.05).sum())
    assert percentile_threshold(confs, 0) == 1.0
    with pytest.raises(ValueError, match="percentile"):
        percentile_threshold(confs, 100)
    assert highest_confidence(tmp_path) == pytest.approx(confs.max())


def test_percentile_of_large_results_uses_a_pixel_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    import slam3r.app.refilter as rf

    confs = np.random.default_rng(0).exponential(3.0, (4, 64, 64)).astype(np.float32) + 1
    monkeypatch.setattr(rf, "PERCENTILE_SAMPLE", 4 * 16 * 16)  # every 4th pixel in each direction
    assert rf.percentile_threshold(confs, 60) == pytest.approx(np.percentile(confs[:, ::4, ::4], 60))
    assert abs(rf.percentile_threshold(confs, 60) - np.percentile(confs, 60)) < 0.2


def test_refilter_needs_predictions(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        refilter(tmp_path, 1.5, 10)


def test_same_selection_as_the_pipeline_export(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = ReconWriter(tmp_path, "pipe", conf_thres_l2w=2.0, num_points_save=50, seed=42)
    for f in range(4):
        pts = rng.normal(size=(8, 8, 3)).astype(np.float32)
        writer.add(FrameResult(f, None, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), pts,
                               np.ones((8, 8), np.float32), pts, (1 + rng.exponential(2, (8, 8))).astype(np.float32),
                               np.eye(4), 10.0))
    writer.close(RunSummary(engine=EngineSummary(init_winsize=2, kf_stride=1, init_ref_id=0), config={"seed": 42}))
    exported = read_ply(tmp_path / "pipe_recon.ply")
    again = RunOutput(tmp_path).select(2.0, 50, seed=42)
    np.testing.assert_array_equal(exported.xyz, again.xyz)
    np.testing.assert_array_equal(exported.rgb, again.rgb)


def test_select_points_on_plain_arrays() -> None:
    pts = np.zeros((2, 2, 2, 3), np.float32)
    confs = np.array([[[1, 3], [3, 1]], [[1, 1], [1, 5]]], np.float32)
    cloud = select_points(pts, confs, np.zeros((2, 2, 2, 3), np.uint8), conf_thres=2, num_points=10, seed=0)
    np.testing.assert_array_equal(cloud.conf, [3, 3, 5])


def test_cloud_formats_registry_drives_refilter_and_downloads(tmp_path: Path, monkeypatch) -> None:
    """A format added to ``CLOUD_FORMATS`` is written by refilter and offered among the result's files."""
    from slam3r.recon import output

    monkeypatch.setitem(output.CLOUD_FORMATS, "txt", lambda path, cloud: np.savetxt(path, cloud.xyz))
    hand_made_preds(tmp_path)
    refilter(tmp_path, conf_thres=2.45, num_points=20)
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "hand_recon.txt"), read_ply(tmp_path / "hand_recon.ply").xyz)
    assert [p.name for p in RunOutput(tmp_path).files()] == ["hand_recon.ply", "hand_recon.glb", "hand_recon.txt",
                                                            "summary.json"]
