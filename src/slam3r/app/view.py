"""``slam3r view RESULT_DIR``: an interactive 3D viewer (viser) of a finished reconstruction with its camera frusta
and trajectory, the L2W threshold and point count adjustable live (no inference); ``--render out.mp4`` instead
renders the reconstruction growing frame by frame to a video, offscreen."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slam3r.config import to_dict
from slam3r.recon.config import ReconConfig
from slam3r.recon.output import RunOutput
from slam3r.runtime import resolve_settings


@dataclass
class SavedReconstruction:
    """What ``slam3r recon`` / the app wrote: memory-mapped ``preds/`` arrays, cameras and settings."""

    scene: str
    pts: np.ndarray
    confs: np.ndarray
    imgs: np.ndarray
    poses_c2w: np.ndarray
    focals: np.ndarray
    keyframes: np.ndarray
    conf_thres: float
    num_points: int
    seed: int

    @property
    def size(self) -> int:
        return int(self.confs.shape[-1])


def load_reconstruction(result_dir: str | Path) -> SavedReconstruction:
    """Read a reconstruction directory (needs ``preds/``, i.e. not written with ``--no-preds``)."""
    out = RunOutput(result_dir)
    out.require_preds("the viewer")
    cams = out.camera_arrays()  # NaN pose and focal: frame not registered
    summary = out.summary()
    config = {**to_dict(resolve_settings(ReconConfig, "recon", weights=summary.get("weights")).value),
              **summary.get("config", {})}  # the values the run recorded; the resolver's for older results
    export = summary.get("export", {})
    pts, confs, imgs = out.world_points()
    return SavedReconstruction(
        scene=out.scene, pts=pts, confs=confs, imgs=imgs, poses_c2w=cams.c2w, focals=cams.focal,
        keyframes=cams.keyframe,
        conf_thres=float(export.get("conf_thres_l2w", config["conf_thres_l2w"])),
        num_points=int(export.get("num_points_save", config["num_points_save"])),
        seed=int(config["seed"]),
    )


def start_viewer(rec: SavedReconstruction, host: str, port: int, max_points: int, max_frusta: int = 200) -> Any:
    """Serve ``rec`` with viser: the cloud, camera frusta (with their images) and the trajectory, and GUI controls
    re-filtering the cloud. Returns the running ``viser.ViserServer`` (call ``.stop()`` to end it)."""
    import viser
    import viser.transforms as vtf

    from slam3r.data.cloud import select_points

    server = viser.ViserServer(host=host, port=port, verbose=False)
    server.scene.set_up_direction("-y")  # world = the first keyframe's OpenCV camera: y points down
    registered = np.isfinite(rec.poses_c2w).all(axis=(1, 2))
    centres = rec.poses_c2w[registered, :3, 3]
    span = float(np.ptp(centres, axis=0).max()) if len(centres) > 1 else 1.0
    scale = max(span, 1e-3) * 0.04

    def cloud(conf_thres: float, num_points: int) -> tuple[np.ndarray, np.ndarray]:
        c = select_points(rec.pts, rec.confs, rec.imgs, conf_thres, min(num_points, max_points), rec.seed)
        return c.xyz, c.rgb

    xyz, rgb = cloud(rec.conf_thres, rec.num_points)
    points = server.scene.add_point_cloud("/points", xyz, rgb, point_size=scale * 0.1)
    step = max(1, -(-len(rec.poses_c2w) // max_frusta))
    for i in range(0, len(rec.poses_c2w), step):
        pose = rec.poses_c2w[i]
        if not registered[i]:
            continue
        server.scene.add_camera_frustum(
            f"/cameras/{i:05d}", fov=float(2 * np.arctan(rec.size / 2 / rec.focals[i])), aspect=1.0, scale=scale,
            image=np.asarray(rec.imgs[i][::4, ::4]), wxyz=vtf.SO3.from_matrix(pose[:3, :3]).wxyz,
            position=pose[:3, 3], color=(255, 60, 60) if rec.keyframes[i] else (200, 200, 200))
    if len(centres) > 1:
        server.scene.add_line_segments("/trajectory", np.stack([centres[:-1], centres[1:]], axis=1),
                                       (255, 60, 60), thickness=scale * 0.1)
    server.gui.add_markdown(f"**{rec.scene}**: {len(rec.confs)} frames; red frusta are keyframes")
    thres = server.gui.add_slider("L2W confidence threshold", 1.0, 30.0, 0.1, rec.conf_thres)
    count = server.gui.add_number("Points (max)", min(rec.num_points, max_points), min=1, max=max_points, step=1)

    def refresh(_: Any) -> None:
        points.points, points.colors = cloud(float(thres.value), int(count.value))

    thres.on_update(refresh)
    count.on_update(refresh)
    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("result_dir", help="output directory of slam3r recon / the app (with preds/)")
    parser.add_argument("--host", default="127.0.0.1", help="viewer address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="viewer port (default: 8080)")
    parser.add_argument("--max-points", type=int, default=1_000_000,
                        help="most points sent to the browser (default: 1000000)")
    parser.add_argument("--conf-thres", type=float, default=None,
                        help="L2W confidence threshold (default: the one the result was exported with)")
    parser.add_argument("--render", metavar="OUT.mp4", default=None,
                        help="render the reconstruction growing frame by frame to this video and exit (offscreen)")
    parser.add_argument("--camera", choices=("follow", "orbit"), default="follow",
                        help="render viewpoint: behind the moving camera, or orbiting the scene (default: follow)")
    parser.add_argument("--size", default="640x480", help="render size WIDTHxHEIGHT (default: 640x480)")
    parser.add_argument("--fps", type=float, default=10.0, help="render frame rate (default: 10)")
    parser.add_argument("--points-per-frame", type=int, default=5000,
                        help="points of each frame drawn in the render (default: 5000)")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    try:
        rec = load_reconstruction(args.result_dir)
        width, height = (int(v) for v in args.size.lower().split("x"))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"slam3r view: error: {exc}", file=sys.stderr)
        return 2
    if args.conf_thres is not None:
        rec.conf_thres = args.conf_thres
    if args.render:
        from slam3r.app.splat import render_video

        frames = render_video(args.render, rec.pts, rec.confs, rec.imgs, rec.poses_c2w, conf_thres=rec.conf_thres,
                              points_per_frame=args.points_per_frame, width=width, height=height, fps=args.fps,
                              mode=args.camera, seed=rec.seed)
        print(f"wrote {args.render} ({frames} frames, {width}x{height}, {args.fps:g} fps)")
        return 0
    try:
        server = start_viewer(rec, args.host, args.port, args.max_points)
    except ModuleNotFoundError as exc:
        print(f"slam3r view: missing dependency {exc.name!r}; install it with `pip install {exc.name}` (or use "
              "--render)", file=sys.stderr)
        return 1
    print(f"viewing {args.result_dir} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
