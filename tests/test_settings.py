"""The settings resolver (defaults < weights' recon.yaml < --config < env < flags), its record in summary.json,
the near-empty-export warning, the error boundary (exit 2, one ``error:`` line) and strict JSON outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from slam3r.cli import main
from slam3r.config import ConfigError, field_help
from slam3r.data import jsonio
from slam3r.data.synth import render_sequence
from slam3r.errors import Slam3rError
from slam3r.recon.config import ReconConfig
from slam3r.runtime import resolve_settings, weights_defaults, weights_settings_file

WEIGHTS_YAML = ("recon:\n  win_r: 2\n  conf_thres_l2w: 1.0\n  num_scene_frame: 4\n  buffer_size: 6\n"
                "eval:\n  conf_thresh: 1.25\n")


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_models) -> Path:
    """Tiny networks in a weights directory that carries its own recon.yaml."""
    root = tmp_path_factory.mktemp("weights")
    tiny_models[0].save_pretrained(root / "i2p")
    tiny_models[1].save_pretrained(root / "l2w")
    (root / "recon.yaml").write_text(WEIGHTS_YAML)
    return root


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    seq = render_sequence(seed=778, num_frames=10, width=80, height=64)
    d = tmp_path_factory.mktemp("frames")
    for i, im in enumerate(seq.rgb):
        cv2.imwrite(str(d / f"frame{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    return d


# ------------------------------------------------------------------------------------------------ item 1: resolver
def test_layers_apply_in_order_and_record_their_source(weights, tmp_path):
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text("recon:\n  num_scene_frame: 7\n  buffer_size: 8\nservice:\n  prefetch: 3\n")
    s = resolve_settings(ReconConfig, "recon", weights=str(weights), config=str(cfg_file),
                         env={"buffer_size": "9", "seed": "5"}, flags={"seed": 6, "win_r": None},
                         overrides=["max_num_register=4"], widgets={"update_buffer_intv": 2})
    v = s.value
    assert (v.win_r, v.conf_thres_l2w, v.num_scene_frame, v.buffer_size, v.seed, v.max_num_register,
            v.update_buffer_intv, v.init_conf_thres) == (2, 1.0, 7, 9, 6, 4, 2, 5.0)
    src = s.sources
    assert src["win_r"] == src["conf_thres_l2w"] == f"weights: {weights / 'recon.yaml'}"  # flag None: not given
    assert src["num_scene_frame"] == f"--config {cfg_file}"
    assert src["buffer_size"] == "environment"
    assert src["seed"] == "flag --seed"
    assert src["max_num_register"] == "--set"
    assert src["update_buffer_intv"] == "widget"
    assert src["init_conf_thres"] == "default"
    assert resolve_settings(ReconConfig, "recon", weights="released").value == ReconConfig()


def test_bundled_model_carries_its_settings_released_keeps_the_reference():
    bundled = weights_defaults("default")
    assert bundled["conf_thres_l2w"] == 1.0 and bundled["buffer_strategy"] == "fifo"
    assert weights_defaults("default", "eval") == {"conf_thresh": 1.0}
    assert weights_settings_file("released") is None and weights_settings_file("a,b") is None
    assert resolve_settings(ReconConfig, "recon", weights="default").value.conf_thres_l2w == 1.0
    assert resolve_settings(ReconConfig, "recon", weights="released").value.conf_thres_l2w == 12.0


def test_bad_layers_are_named(weights, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recon:\n  win_rr: 3\n")
    with pytest.raises(ConfigError, match=r"--config .*bad.yaml: unknown ReconConfig keys \['win_rr'\]"):
        resolve_settings(ReconConfig, "recon", weights=str(weights), config=str(bad))
    with pytest.raises(ConfigError, match="environment: .*expected a number"):
        resolve_settings(ReconConfig, "recon", env={"conf_thres_l2w": "high"})
    bad.write_text("recn:\n  win_r: 3\n")
    with pytest.raises(ConfigError, match="top-level sections"):
        resolve_settings(ReconConfig, "recon", config=str(bad))


def test_help_text_lives_with_the_config_fields(capsys):
    docs = field_help(ReconConfig)
    assert docs["low_conf_frame_thresh"].startswith("A frame whose mean L2W confidence is below this")
    with pytest.raises(SystemExit):
        main(["recon", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "A frame whose mean L2W confidence is below this" in text
    assert "(default: 12.0; with the bundled model: 1.0)" in text
    for flag in ("--weights", "--device", "--threads", "--precision", "--config", "--set"):
        assert flag in text


def test_service_recon_section_goes_through_the_resolver(weights, tmp_path):
    from slam3r.service.config import load_config

    # library use: no weights layer; the service resolves the stream pipeline's auto to off (test_recon_pipeline)
    assert load_config(None, env={}).recon == ReconConfig(stream_pipeline=False)
    cfg = load_config(None, env={"SLAM3R_CONF_THRES_L2W": "3"}, weights=str(weights), overrides=["seed=1"])
    assert (cfg.recon.win_r, cfg.recon.conf_thres_l2w, cfg.recon.seed) == (2, 3.0, 1)  # weights < env < --set


def test_eval_threshold_default_comes_from_the_recorded_weights(weights, tmp_path):
    import argparse

    from slam3r.eval.cli import add_arguments, eval_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    pred = tmp_path / "rec"
    pred.mkdir()
    (pred / "summary.json").write_text(json.dumps({"weights": str(weights)}))
    args = parser.parse_args(["--pred", str(pred), "--gt", "x"])
    s = eval_settings(args, pred)
    assert s.value.conf_thresh == 1.25 and s.sources["conf_thresh"].startswith("weights: ")
    args = parser.parse_args(["--pred", str(pred), "--gt", "x", "--conf-thresh", "2"])
    assert eval_settings(args, pred).value.conf_thresh == 2.0
    args = parser.parse_args(["--pred", str(pred), "--gt", "x", "--weights", "released"])
    assert eval_settings(args, pred).value.conf_thresh == 3.0  # the published protocol


# ----------------------------------------------------------------- items 1 + 2 + 6 end to end: one tiny recon
def test_recon_records_settings_warns_when_empty_and_writes_strict_json(weights, frames_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["recon", str(frames_dir), "--weights", str(weights), "--device", "cpu", "--out", str(out),
               "--quiet", "--conf-thres-l2w", "1000", "--set", "seed=3", "--low-conf-frame-thresh", "1000"])
    assert rc == 0
    captured = capsys.readouterr()
    summary = jsonio.loads((out / "summary.json").read_text())
    # item 1: resolved values and their sources
    assert summary["weights"] == str(weights)
    assert summary["config"]["win_r"] == 2 and summary["config_sources"]["win_r"].startswith("weights: ")
    assert summary["config"]["conf_thres_l2w"] == 1000.0
    assert summary["config_sources"]["conf_thres_l2w"] == "flag --conf-thres-l2w"
    assert summary["config_sources"]["seed"] == "--set" and summary["config"]["seed"] == 3
    # item 2: nothing passes the threshold -> a warning with percentiles and the flag that keeps points
    check = summary["export_check"]
    assert summary["points"] == 0 and check["pixels_above_threshold"] == 0
    assert check["registered_pixels"] == 10 * 64 * 64
    assert "warning" in check and check["suggested_flag"].startswith("--conf-thres-l2w ")
    assert "slam3r recon: warning: only 0 of 40960 registered pixels" in captured.err
    assert f"Pass {check['suggested_flag']}" in captured.err
    pct = check["conf_percentiles"]
    assert pct["p1"] <= pct["p50"] <= pct["p99"] <= check["conf_max"]
    assert summary["low_confidence_frames"] == list(range(10))  # the cutoff is a setting
    # item 6: every JSON file the run wrote is strict JSON
    files = sorted(out.rglob("*.json"))
    assert {p.name for p in files} >= {"summary.json", "cameras.json", "metadata.json"}
    for path in files:
        jsonio.loads(path.read_text())
    # the suggested flag keeps points
    value = check["suggested_flag"].split()[-1]
    rc = main(["recon", str(frames_dir), "--weights", str(weights), "--device", "cpu", "--out", str(out),
               "--quiet", "--conf-thres-l2w", value, "--no-preds"])
    again = json.loads((out / "summary.json").read_text())
    assert rc == 0 and again["points"] > 0.4 * 40960 and "warning" not in again["export_check"]


def test_export_check_thresholds_and_non_finite_values():
    from slam3r.recon.diagnostics import export_check

    confs = [np.full((8, 8), 1.5, np.float32), np.linspace(1.0, 2.0, 64, dtype=np.float32).reshape(8, 8)]
    ok = export_check(confs, 1.2)
    assert "warning" not in ok and ok["fraction_above_threshold"] > 0.5
    bad = export_check(confs, 12.0)
    assert bad["pixels_above_threshold"] == 0 and bad["suggested_flag"] == "--conf-thres-l2w 1.5"
    confs[0][0, 0] = np.nan
    assert "p50" in export_check(confs, 12.0)["conf_percentiles"]
    assert export_check([], 12.0) == {"conf_thres_l2w": 12.0, "registered_pixels": 0}


def test_writer_never_writes_nan_or_infinity(tmp_path):
    from slam3r.recon.output import ReconWriter
    from slam3r.recon.summary import EngineSummary, RunSummary
    from slam3r.recon.types import FrameResult

    w = ReconWriter(tmp_path / "w", "s", conf_thres_l2w=1.0)
    for i in range(2):
        conf = np.full((4, 4), np.nan if i else np.inf, np.float32)
        w.add(FrameResult(i, None, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32),
                          np.ones((4, 4), np.float32), np.zeros((4, 4, 3), np.float32), conf, np.eye(4),
                          float("nan")))
    w.close(RunSummary(engine=EngineSummary(kf_stride=1), fps=float("inf")))
    for path in (tmp_path / "w").rglob("*.json"):
        jsonio.loads(path.read_text())
    assert json.loads((tmp_path / "w" / "cameras.json").read_text())[1]["focal"] is None
    with pytest.raises(ValueError, match="not strict JSON"):
        jsonio.loads('{"a": NaN}')


# ------------------------------------------------------------------------------ item 6: the error boundary
BAD_RECON = [
    (["--max-frames", "-1"], "--max-frames"),
    (["--max-frames", "0"], "--max-frames"),
    (["--threads", "0"], "--threads"),
    (["--threads", "-2"], "--threads"),
    (["--intrinsics", "nan,500,320,240"], "intrinsics"),
    (["--intrinsics", "500,inf,320,240"], "intrinsics"),
    (["--intrinsics", "0,500,320,240"], "intrinsics"),
    (["--intrinsics", "-5,500,320,240"], "intrinsics"),
    (["--intrinsics", "1,2,3"], "four numbers"),
    (["--conf-thres-l2w", "nan"], "confidence thresholds"),
    (["--conf-thres-i2p", "inf"], "finite"),
    (["--set", "conf_thres_l2w=.inf"], "finite"),
    (["--set", "no_such_field=1"], "unknown ReconConfig keys"),
    (["--scene", "a/b"], "--scene"),
    (["--scene", ".."], "--scene"),
    (["--config", "/nonexistent/x.yaml"], "config file not found"),
    (["--device", "cuda:99"], "--device"),
    (["--device", "gpu"], "--device"),
]


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"slam3r {command}: error: "), err
    assert "Traceback" not in err
    return errors[0]


def _rc(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refusals
        return int(exc.code)


@pytest.mark.parametrize("extra, message", BAD_RECON)
def test_bad_recon_arguments_exit_2_with_one_error_line(weights, frames_dir, tmp_path, capsys, extra, message):
    rc = _rc(["recon", str(frames_dir), "--weights", str(weights), "--out", str(tmp_path / "o"), "--quiet",
              *extra])
    line = _one_error_line(capsys.readouterr().err, "recon")
    assert rc == 2 and message in line
    assert not (tmp_path / "o").exists()


def test_bad_paths_exit_2(weights, frames_dir, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    base = ["recon", "--weights", str(weights), "--quiet"]
    cases = [([str(frames_dir), "--out", str(a_file)], "is a file"),
             ([str(frames_dir), "--out", str(a_file / "sub" / "out")], "is under the file"),
             ([str(tmp_path / "missing")], "input not found"),
             ([str(frames_dir), "--weights", str(tmp_path / "no_weights")], "not understood")]
    for extra, message in cases:
        assert _rc([*base, *extra]) == 2
        assert message in _one_error_line(capsys.readouterr().err, "recon")
    # unwritable --out and an unreadable input folder (simulated: the tests may run as root)
    import os

    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert _rc([*base, str(frames_dir), "--out", str(locked / "out")]) == 2
    assert "is not writable" in _one_error_line(capsys.readouterr().err, "recon")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    assert _rc([*base, str(frames_dir), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err, "recon")
    assert "cannot list image folder" in line and "permission denied" in line.lower()


def test_other_commands_share_the_boundary(tmp_path, capsys):
    npz = tmp_path / "pred.npz"
    np.savez(npz, pts3d=np.zeros((1, 4, 4, 3)), conf=np.ones((1, 4, 4)))
    cases = [(["eval", "--pred", str(npz), "--gt", str(tmp_path), "--conf-thresh", "nan"], "eval",
              "conf_thresh must be a finite number"),
             (["eval", "--pred", str(npz), "--gt", str(tmp_path), "--set", "conf_thresh=.inf"], "eval", "finite"),
             (["eval", "--pred", str(tmp_path / "nope.npz"), "--gt", str(tmp_path)], "eval", "not found"),
             (["eval", "--pred", str(npz), "--gt", str(tmp_path / "nogt")], "eval", None),
             (["demo", "--seed", "5", "--out", str(tmp_path / "d")], "demo", "training range"),
             (["demo", "--frames", "0"], "demo", "--frames"),
             (["serve", "--threads", "0"], "serve", "--threads"),
             (["serve", "--set", "win_r=0"], "serve", "win_r must be >= 1")]
    for argv, command, message in cases:
        assert _rc(argv) == 2, argv
        line = _one_error_line(capsys.readouterr().err, command)
        assert message is None or message in line


def test_real_bugs_keep_their_traceback_and_debug_shows_all(monkeypatch, frames_dir, capsys):
    import slam3r.recon.cli as recon_cli

    def bug(args):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(recon_cli, "run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["recon", str(frames_dir)])
    monkeypatch.undo()
    with pytest.raises(Slam3rError, match="--scene"):
        main(["recon", str(frames_dir), "--scene", "a/b", "--debug"])
