"""``slam3r synth``: render a procedural scene sequence to the Replica layout (+ an mp4 of the colour frames)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, required=True,
                        help="scene seed: 0..99999 are training scenes, >= 1000000 held-out demo/eval scenes")
    parser.add_argument("--frames", type=int, default=100, help="number of frames (default 100)")
    parser.add_argument("--out", required=True, help="output folder (Replica layout)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--kind", choices=("handheld", "drone"), default="handheld", help="trajectory kind")
    parser.add_argument("--hfov", type=float, default=None, help="horizontal field of view in degrees "
                        "(default: per-seed, 55-85)")
    parser.add_argument("--loops", type=float, default=1.25, help="times the closed path is traversed")
    parser.add_argument("--png", action="store_true", help="lossless PNG colour frames instead of JPEG")
    parser.add_argument("--video-fps", type=float, default=30.0, help="frame rate of video.mp4 (default 30)")
    parser.add_argument("--no-video", action="store_true", help="do not write video.mp4")


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    import cv2

    from slam3r.data.replica import ReplicaWriter
    from slam3r.data.synth import iter_frames, make_scene, make_trajectory, sequence_camera

    if args.frames < 1 or args.width < 8 or args.height < 8:
        print("slam3r synth: --frames must be >= 1 and the image at least 8x8", file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.perf_counter()
    scene = make_scene(args.seed)
    c2w = make_trajectory(scene, args.frames, args.seed, kind=args.kind, loops=args.loops)
    K = sequence_camera(args.seed, args.width, args.height, args.hfov)
    video = None
    if not args.no_video:
        out.mkdir(parents=True, exist_ok=True)
        video = cv2.VideoWriter(str(out / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), args.video_fps,
                                (args.width, args.height))
        if not video.isOpened():
            print(f"slam3r synth: cannot write {out / 'video.mp4'} (no mp4 encoder?)", file=sys.stderr)
            return 1
    try:
        with ReplicaWriter(out, K, args.width, args.height, image_ext=".png" if args.png else ".jpg") as writer:
            for rgb, depth in iter_frames(scene, c2w, K, args.width, args.height):
                writer.add(rgb, depth, c2w[writer.count])
                if video is not None:
                    video.write(rgb[..., ::-1].copy())
    finally:
        if video is not None:
            video.release()
    dt = time.perf_counter() - t0
    print(f"wrote {args.frames} frames of seed {args.seed} ({args.kind}, {args.width}x{args.height}) to {out} "
          f"in {dt:.1f} s ({dt / args.frames * 1000:.0f} ms/frame)" + ("" if args.no_video else "; video.mp4"))
    return 0
