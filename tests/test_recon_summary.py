"""Run settings resolved once (``resolve_geometry``) and the typed run summary (``RunSummary``): summary.json keys
in their order, a lossless JSON round trip, and the stride / intrinsics / batch size both drivers get."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slam3r.data.synth import render_sequence
from slam3r.geometry.camera import crop_resize_intrinsics
from slam3r.recon.config import ReconConfig, resolve_geometry
from slam3r.recon.run import reconstruct
from slam3r.recon.summary import EngineSummary, RunSummary

KEYS = ["mode", "interrupted", "stop_reason", "input", "seconds", "fps", "timings", "buffer_size", "keyframes",
        "device", "precision", "config", "weights", "config_sources", "frames", "points", "low_confidence_frames",
        "unregistered_frames", "metadata", "export_check"]
"""summary.json keys of a run given a settings record, in the file's order."""


def test_geometry_stride_intrinsics_and_batch():
    cfg = ReconConfig(keyframe_stride=-1, online_stride=4, max_num_register=10, initial_winsize=5)
    online = resolve_geometry(cfg, 224, causal=True)
    assert (online.stride, online.causal, online.num_register, online.init_frames) == (4, True, 2, 17)
    assert online.intrinsics_net is None  # none known
    calls = []
    offline = resolve_geometry(cfg, 224, causal=False, search=lambda: calls.append(1) or 9)
    assert (offline.stride, offline.num_register, calls) == (9, 5, [1])  # the automatic search, run once
    with pytest.raises(ValueError, match="stride search"):
        resolve_geometry(cfg, 224, causal=False)
    fixed = ReconConfig(keyframe_stride=3, max_num_register=1, intrinsics=(500.0, 500.0, 319.5, 239.5))
    geo = resolve_geometry(fixed, 224, causal=False, frame_shape=(480, 640, 3), search=lambda: 1 / 0)
    assert (geo.stride, geo.num_register) == (3, 1)  # a set stride: no search
    k = crop_resize_intrinsics(np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]]), 640, 480, 224)
    assert geo.intrinsics_net == (k[0, 0], k[1, 1], k[0, 2], k[1, 2])  # the network crop's (the preprocessing's)
    np.testing.assert_allclose(geo.intrinsics_net, (500 * 224 / 480,) * 2 + (111.5,) * 2, rtol=5e-3)
    assert resolve_geometry(fixed, 224, causal=True).intrinsics_net is None  # no frame shape yet


def test_summary_json_round_trip():
    s = RunSummary(mode="online", stop_reason="SIGINT", interrupted=True, input={"name": "x", "skipped": 1},
                   seconds=1.5, fps=2.0, device="cpu", config={"win_r": 3}, settings={"weights": "default"},
                   engine=EngineSummary(5, 2, 1, {"i2p": 0.1}, 7, [0, 2, 4], {"loop_edges": [[1, 9]]}),
                   frames=10, points=99, low_confidence_frames=[3], unregistered_frames=[0],
                   export_check={"conf_thres_l2w": 12.0}, export={"conf_thres_l2w": 2.0})
    data = json.loads(json.dumps(s.to_json()))
    assert list(data)[-2:] == ["loop_closure", "export"] and data["metadata"] == {
        "init_winsize": 5, "kf_stride": 2, "init_ref_id": 1}
    assert RunSummary.from_json(data) == s and RunSummary.from_json(data).to_json() == data
    assert "loop_closure" not in RunSummary().to_json() and "export" not in RunSummary().to_json()
    assert RunSummary.from_json({"frames": 3}).frames == 3  # an older / partial summary reads with defaults


def test_reconstruct_writes_the_summary_it_returns(tiny_models, tmp_path):
    i2p, l2w = tiny_models
    rgb = render_sequence(seed=21, num_frames=12, width=96, height=72).rgb
    cfg = ReconConfig(keyframe_stride=2, initial_winsize=3, win_r=2, num_scene_frame=3, conf_thres_l2w=1.0)
    with torch.no_grad():
        summary = reconstruct([(i, im, None) for i, im in enumerate(rgb)], i2p, l2w, cfg, tmp_path / "out",
                              progress=False, settings={"weights": "tiny", "config_sources": {}})
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(data) == KEYS and RunSummary.from_json(data) == summary
    assert summary.frames == 12 and summary.engine.kf_stride == 2 and summary.engine.init_winsize == 3
    meta = json.loads((tmp_path / "out" / "preds" / "metadata.json").read_text())
    assert meta == {"scene_id": "scene", **data["metadata"]}
