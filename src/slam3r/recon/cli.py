"""``slam3r recon``: reconstruct a video, an image folder or a live stream into a world-frame point cloud."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from slam3r.recon.config import ReconConfig

HELP = {
    "keyframe_stride": "stride between window frames; -1 = automatic (offline) / online_stride (streaming)",
    "initial_winsize": "frames in the initialisation window",
    "win_r": "I2P window radius (window = keyframe -+ i*stride, i = 1..win_r)",
    "conf_thres_i2p": "I2P confidence threshold for the L2W inputs",
    "num_scene_frame": "scene frames retrieved from the buffer for each L2W registration",
    "max_num_register": "maximum frames registered per L2W call",
    "conf_thres_l2w": "final confidence threshold for exported points",
    "num_points_save": "exported cloud is random-subsampled to this many points",
    "update_buffer_intv": "update the buffering set every stride*intv frames",
    "buffer_size": "buffering-set size (-1 = unbounded)",
    "buffer_strategy": "buffer replacement policy",
    "norm_input": "normalise the L2W scene-frame inputs",
    "l2w_frame": "frame of the points L2W sees: world (reference) or anchor (the latest scene frame's camera "
                 "frame, as in L2W training; outputs mapped back)",
    "precision": "autocast precision (auto = bf16/fp16 on CUDA, fp32 on CPU)",
    "compile": "torch.compile the network blocks (minutes of compilation per input shape on a CPU, then ~5-10%% "
               "faster; eager where it cannot compile)",
    "online_stride": "stride of the streaming driver when keyframe_stride is -1",
    "registration": "how new frames are placed: l2w (the network) or geometric (robust similarity fit of the I2P "
                    "window's already-registered frames)",
    "loop_closure": "detect revisits, verify them and correct all frames with a Sim(3) pose graph (GTSAM)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`ReconConfig` field, defaults from the dataclass."""
    group = parser.add_argument_group("pipeline parameters (reference names and defaults)")
    hints = typing.get_type_hints(ReconConfig)
    for f in dataclasses.fields(ReconConfig):
        if f.name == "intrinsics":
            continue
        tp = hints[f.name]
        default = f.default
        text = f"{HELP.get(f.name, f.name.replace('_', ' '))} (default: {default})"
        if tp is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(tp) is typing.Literal:
            group.add_argument(_flag(f.name), choices=typing.get_args(tp), default=default, help=text)
        else:
            group.add_argument(_flag(f.name), type=tp, default=default, help=text)
    group.add_argument("--intrinsics", metavar="FX,FY,CX,CY", default=None,
                       help="known camera intrinsics in pixels of the input frames (default: estimated)")


def config_from_args(args: argparse.Namespace) -> ReconConfig:
    from slam3r.config import ConfigError, from_dict

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ReconConfig) if f.name != "intrinsics"}
    if args.intrinsics:
        try:
            values["intrinsics"] = tuple(float(x) for x in args.intrinsics.split(","))
        except ValueError:
            raise ConfigError(f"--intrinsics must be four numbers FX,FY,CX,CY, got {args.intrinsics!r}") from None
        if len(values["intrinsics"]) != 4:
            raise ConfigError(f"--intrinsics must be four numbers FX,FY,CX,CY, got {args.intrinsics!r}")
    return from_dict(ReconConfig, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slam3r.models.registry import WEIGHTS_HELP

    parser.add_argument("input", help="video file, image folder, camera index (0) or stream URL (rtsp://, http://)")
    parser.add_argument("--out", default=None, help="output directory (default: outputs/<input name>)")
    parser.add_argument("--weights", default="default", help=WEIGHTS_HELP)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--online", action="store_true",
                        help="causal streaming reconstruction (frames registered as they arrive)")
    parser.add_argument("--fps", type=float, default=None, help="subsample video input to this frame rate")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--scene", default=None, help="scene name used in output file names")
    parser.add_argument("--no-preds", action="store_true", help="do not keep per-frame predictions (preds/*.npy)")
    parser.add_argument("--frame-plys", action="store_true", help="also write one PLY per frame")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: 1 for small networks such as the bundled one, all cores otherwise)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import itertools
    import sys
    from pathlib import Path

    import torch

    from slam3r.config import ConfigError
    from slam3r.data.sources import open_source
    from slam3r.models import CheckpointError
    from slam3r.models.registry import configure_threads, load_models, resolve_device
    from slam3r.recon.run import reconstruct

    try:
        cfg = config_from_args(args)
        device = resolve_device(args.device)
        source = open_source(args.input, fps=args.fps)
        i2p, l2w = load_models(args.weights, device)
        configure_threads(i2p, device, args.threads)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"slam3r recon: error: {exc}", file=sys.stderr)
        return 2
    name = args.scene or Path(str(args.input).rstrip("/")).stem or "scene"
    out = Path(args.out or Path("outputs") / name)
    frames = itertools.islice(source, args.max_frames) if args.max_frames else source
    try:
        with torch.no_grad():
            summary = reconstruct(frames, i2p, l2w, cfg, out, online=args.online, device=device, scene=name,
                                  keep_preds=not args.no_preds, frame_plys=args.frame_plys,
                                  progress=not args.quiet)
    except ValueError as exc:
        print(f"slam3r recon: error: {exc}", file=sys.stderr)
        return 2
    skipped = getattr(source, "skipped", 0)
    print(f"frames: {summary['frames']}  stride: {summary['metadata']['kf_stride']}  fps: {summary['fps']}  "
          f"points: {summary['points']}  low-confidence frames: {len(summary['low_confidence_frames'])}  "
          f"skipped (unreadable) frames: {skipped}")
    print(f"written to {out}/ ({name}_recon.ply, {name}_recon.glb, trajectory.txt, summary.json, preds/)")
    return 0
