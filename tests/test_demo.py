"""``slam3r demo`` end to end on a tiny held-out scene with the bundled model, and the plane baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from slam3r.cli import main
from slam3r.demo import plane_baseline, render_heldout
from slam3r.models.loading import bundled_dir


def test_plane_baseline_is_a_fronto_parallel_plane_at_median_depth() -> None:
    depth = np.array([[[1.0, 2.0], [3.0, 0.0]]], np.float32)  # median of the valid depths: 2
    K = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])
    c2w = np.eye(4)[None].copy()
    c2w[0, :3, 3] = [0.0, 0.0, 5.0]
    pts = plane_baseline(depth, K, c2w)
    assert np.allclose(pts[..., 2], 7.0)
    assert np.allclose(pts[0, 0, 0, :2], [-1.0, -1.0])  # pixel (0, 0): ((0 - 0.5) / 1) * 2


def test_heldout_scenes_only() -> None:
    with pytest.raises(ValueError, match="training range"):
        render_heldout(5, 4, 32)


@pytest.mark.skipif(not (bundled_dir() / "i2p" / "model.safetensors").is_file(), reason="no bundled model")
def test_tiny_demo_writes_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--frames", "12", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    for who in ("model", "baseline"):
        for key in ("accuracy_cm", "completion_cm", "ate_cm"):
            assert math.isfinite(report[who][key]), (who, key)
    assert report["model"]["fps"] > 0
    for name in ("synth_1000000_recon.ply", "synth_1000000_recon.glb", "trajectory.txt", "trajectory_gt.txt"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "bundled model" in printed and "plane baseline" in printed


@pytest.mark.skipif(not (bundled_dir() / "i2p" / "model.safetensors").is_file(), reason="no bundled model")
def test_bundled_model_loads_by_name() -> None:
    from slam3r.models.config import preset
    from slam3r.models.loading import load_models

    i2p, l2w = load_models("default")
    assert i2p.cfg == preset("default") and l2w.cfg == preset("default", l2w=True)
    size = sum(p.stat().st_size for p in bundled_dir().rglob("*") if p.is_file())
    assert size < 30e6


def test_report_hints_at_flow_only_when_l2w_loses_on_completion() -> None:
    from slam3r.demo import FLOW_HINT, format_report

    def report(registration: str, completion: float) -> dict:
        row = {"accuracy_cm": 20.0, "completion_cm": completion, "ate_cm": 5.0, "fps": 10.0, "stride": 2}
        return {"seed": 1_000_000, "frames": 12, "image_size": 112, "eval_conf_thresh": 1.0,
                "recon_config": {"registration": registration}, "model": row,
                "baseline": {"accuracy_cm": 25.0, "completion_cm": 20.0}}

    assert FLOW_HINT in format_report(report("l2w", 100.0))
    assert FLOW_HINT not in format_report(report("l2w", 15.0))      # l2w winning: nothing to suggest
    assert FLOW_HINT not in format_report(report("flow", 100.0))    # already the flow backend
