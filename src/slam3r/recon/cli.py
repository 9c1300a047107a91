"""``slam3r recon``: reconstruct a video, an image folder or a live stream into a world-frame point cloud."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from slam3r.recon.config import ReconConfig

if typing.TYPE_CHECKING:
    from slam3r.recon.summary import RunSummary

SHARED = ("precision", "intrinsics")
"""Fields with their own option (``--precision`` is a runtime option, ``--intrinsics`` takes FX,FY,CX,CY)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`ReconConfig` field, help from the field's docstring. Defaults are ``None``: a value
    given here overrides every other settings layer (see :mod:`slam3r.runtime`)."""
    from slam3r.config import field_help
    from slam3r.runtime import field_default_text

    group = parser.add_argument_group("pipeline parameters (reference names; defaults: the reference's, unless the "
                                      "weights' recon.yaml, --config or --set say otherwise)")
    hints = typing.get_type_hints(ReconConfig)
    docs = field_help(ReconConfig)
    for f in dataclasses.fields(ReconConfig):
        if f.name in SHARED:
            continue
        tp = hints[f.name]
        text = f"{docs.get(f.name, f.name.replace('_', ' '))} {field_default_text(ReconConfig, 'recon', f.name)}"
        text = text.replace("%", "%%")
        if tp is bool or set(typing.get_args(tp)) == {bool, type(None)}:  # an unset flag is None either way
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(tp) is typing.Literal:
            group.add_argument(_flag(f.name), choices=typing.get_args(tp), default=None, help=text)
        else:
            group.add_argument(_flag(f.name), type=tp, default=None, metavar=f.name.upper(), help=text)
    group.add_argument("--intrinsics", metavar="FX,FY,CX,CY", default=None,
                       help="known camera intrinsics in pixels of the input frames (default: estimated)")


def config_flags(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The pipeline parameters given on the command line (``None`` = not given)."""
    from slam3r.config import ConfigError

    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(ReconConfig) if f.name not in SHARED}
    if args.intrinsics:
        try:
            values["intrinsics"] = tuple(float(x) for x in args.intrinsics.split(","))
        except ValueError:
            raise ConfigError(f"--intrinsics must be four numbers FX,FY,CX,CY, got {args.intrinsics!r}") from None
        if len(values["intrinsics"]) != 4:
            raise ConfigError(f"--intrinsics must be four numbers FX,FY,CX,CY, got {args.intrinsics!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slam3r.runtime import add_runtime_arguments, positive_int

    parser.add_argument("input", help="video file, image folder, camera index (0) or stream URL (rtsp://, http://)")
    parser.add_argument("--out", default=None, help="output directory (default: outputs/<input name>)")
    parser.add_argument("--online", action="store_true",
                        help="causal streaming reconstruction (frames registered as they arrive)")
    parser.add_argument("--fps", type=float, default=None, help="subsample video input to this frame rate")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many frames")
    parser.add_argument("--scene", default=None,
                        help="scene name used in output file names (no path separators; default: the input's name)")
    parser.add_argument("--no-preds", action="store_true", help="do not keep per-frame predictions (preds/*.npy)")
    parser.add_argument("--frame-plys", action="store_true", help="also write one PLY per frame")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(parser)
    add_config_arguments(parser)


def scene_name(scene: str | None, source: str) -> str:
    """``--scene`` (refused if it holds a path separator or is empty) or the input's name."""
    from slam3r.errors import InputError

    if scene is not None:
        if not scene.strip() or "/" in scene or "\\" in scene or scene in (".", ".."):
            raise InputError(f"--scene {scene!r} must be a plain name (it names output files), without '/' or '\\'")
        return scene
    return Path(str(source).rstrip("/")).stem or "scene"


def print_summary(summary: RunSummary, out: Path, name: str) -> None:
    """The closing lines of a run, and a warning on stderr when (almost) nothing passed the export threshold."""
    import sys

    print(f"frames: {summary.frames}  stride: {summary.engine.kf_stride}  fps: {summary.fps}  "
          f"points: {summary.points}  low-confidence frames: {len(summary.low_confidence_frames)}  "
          f"unregistered frames: {len(summary.unregistered_frames)}  "
          f"skipped (unreadable) frames: {summary.input.get('skipped', 0)}")
    warning = (summary.export_check or {}).get("warning")
    if warning:
        print(f"slam3r recon: warning: {warning}", file=sys.stderr)
    if summary.interrupted:
        print(f"stopped early ({summary.stop_reason}): outputs hold the {summary.frames} frames registered")
    from slam3r.recon.output import PREDS, RunOutput

    result = RunOutput(out, name)
    kept = [p.name for p in result.files()] + [f"{PREDS}/"] * result.has_preds()
    print(f"written to {out}/ ({', '.join(kept)})")


def run(args: argparse.Namespace) -> int:
    import itertools
    import sys

    import torch

    from slam3r.data.sources import open_source
    from slam3r.errors import InputError
    from slam3r.recon.output import check_out_dir
    from slam3r.recon.run import reconstruct, stop_on_signals
    from slam3r.runtime import recon_settings, runtime_from_args, weights_record

    settings = recon_settings(args, config_flags(args))
    name = scene_name(args.scene, args.input)
    out = Path(args.out or Path("outputs") / name)
    check_out_dir(out)
    try:
        source = open_source(args.input, fps=args.fps)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    rt = runtime_from_args(args)
    frames = itertools.islice(source, args.max_frames) if args.max_frames else source
    record = {"weights": weights_record(args.weights), "config_sources": settings.sources}
    with torch.no_grad(), stop_on_signals() as stop:  # Ctrl-C / SIGTERM: keep what was registered, 130 / 143
        try:
            summary = reconstruct(frames, rt.i2p, rt.l2w, settings.value, out, online=args.online,
                                  device=rt.device, scene=name, keep_preds=not args.no_preds,
                                  frame_plys=args.frame_plys, progress=not args.quiet, stop=stop, source=source,
                                  settings=record)
        except ValueError as exc:
            if isinstance(exc, InputError) and not stop.requested:
                raise
            if not stop.requested:
                raise InputError(str(exc)) from exc
            print(f"slam3r recon: error: {exc}", file=sys.stderr)
            return stop.exit_code
        except KeyboardInterrupt:
            print("slam3r recon: aborted, nothing written", file=sys.stderr)
            return 130
    print_summary(summary, out, name)
    return stop.exit_code
