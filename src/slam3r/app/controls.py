"""The page's pipeline-parameter widgets (the reference app's set, plus the L2W threshold, a confidence percentile
and the point count), its view options, and the mapping to a :class:`~slam3r.recon.config.ReconConfig`.

Number boxes carry no ``minimum``: Gradio would refuse a value below it with bare "Error" badges before the app
could say what is wrong; the handlers validate instead."""

from __future__ import annotations

from typing import Any

import gradio as gr

from slam3r.config import from_dict, to_dict
from slam3r.recon.config import ReconConfig

STRIDES = ["auto"] + [str(s) for s in range(1, 11)]
BUFFER_STRATEGIES = ["reservoir", "fifo", "unbounded"]
Widgets = dict[str, gr.components.Component]


def pipeline_controls(d: ReconConfig) -> Widgets:
    """Create the pipeline widgets (inside a Blocks context) with ``d``'s values; keyed by config field name."""
    return {
        "keyframe_stride": gr.Dropdown(STRIDES, value="auto" if d.keyframe_stride == -1 else str(d.keyframe_stride),
                                       label="Keyframe stride", elem_id="stride",
                                       info="auto: chosen from I2P confidence (uploads); live streams use 3"),
        "win_r": gr.Slider(1, 10, value=d.win_r, step=1, label="I2P window radius (win_r)", elem_id="win-r"),
        "initial_winsize": gr.Slider(2, 10, value=d.initial_winsize, step=1, label="Initial window (frames)",
                                     elem_id="initial-winsize"),
        "conf_thres_i2p": gr.Slider(1.0, 10.0, value=d.conf_thres_i2p, step=0.1, label="I2P confidence threshold",
                                    elem_id="conf-thres-i2p"),
        "num_scene_frame": gr.Slider(1, 20, value=d.num_scene_frame, step=1, label="Scene frames for L2W",
                                     elem_id="num-scene-frame"),
        "buffer_strategy": gr.Radio(BUFFER_STRATEGIES, value=d.buffer_strategy if d.buffer_size != -1
                                    else "unbounded", label="Buffer strategy", elem_id="buffer-strategy"),
        "buffer_size": gr.Number(value=max(d.buffer_size, d.initial_winsize), precision=0, label="Buffer size",
                                 elem_id="buffer-size"),
        "update_buffer_intv": gr.Slider(1, 10, value=d.update_buffer_intv, step=1, label="Buffer update interval",
                                        elem_id="update-buffer-intv"),
    }


def export_controls(d: ReconConfig) -> Widgets:
    """Create the widgets re-applied to a finished result without inference (inside a Blocks context): the L2W
    threshold, the confidence percentile (not a pipeline field) and the point count."""
    return {
        "conf_thres_l2w": gr.Slider(1.0, 30.0, value=d.conf_thres_l2w, step=0.1, label="L2W confidence threshold",
                                    info="re-applied to the last result without re-running inference",
                                    elem_id="conf-thres-l2w"),
        "conf_percentile": gr.Slider(0, 99, value=0, step=1, label="Drop the least confident points (%)",
                                     info="a confidence percentile, used with the threshold above (0 = off)",
                                     elem_id="conf-pct"),
        "num_points_save": gr.Number(value=d.num_points_save, precision=0, label="Points to keep",
                                     info="applied on Enter or when the box loses focus", elem_id="num-points"),
    }


def view_controls() -> tuple[gr.Checkbox, gr.Checkbox, gr.Checkbox]:
    """Check boxes of the 3D view: camera frusta, trajectory, the gallery's selected frame highlighted."""
    return (gr.Checkbox(True, label="Show cameras", elem_id="show-cameras", min_width=120),
            gr.Checkbox(True, label="Show trajectory", elem_id="show-trajectory", min_width=120),
            gr.Checkbox(True, label="Highlight selected frame", elem_id="highlight", min_width=120))


def make_config(base: ReconConfig, values: dict[str, Any]) -> ReconConfig:
    """Widget values keyed by field name -> validated config (``base`` supplies the fields the page lacks).
    Stride ``"auto"`` is -1; buffer strategy ``"unbounded"`` is a reservoir of size -1."""
    v = dict(values)
    if "keyframe_stride" in v:
        v["keyframe_stride"] = -1 if v["keyframe_stride"] == "auto" else v["keyframe_stride"]
    if v.get("buffer_strategy") == "unbounded":
        v["buffer_strategy"], v["buffer_size"] = "reservoir", -1
    return from_dict(ReconConfig, {**to_dict(base), **v})
