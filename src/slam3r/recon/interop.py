"""Exports of a finished reconstruction directory for the 3D ecosystem: a COLMAP sparse text model
(``cameras.txt``, ``images.txt``, ``points3D.txt``) and a nerfstudio ``transforms.json``, both next to the network
input images they describe (``images/frame_XXXXXX.png``).

Inputs are the files ``slam3r recon`` writes, read with :class:`slam3r.recon.output.RunOutput`: ``cameras.json``
(per-frame focal and camera-to-world pose, OpenCV axes: x right, y down, z forward), ``preds/input_imgs.npy`` (the
S x S network crops) and ``preds/registered_pcds.npy`` + ``registered_confs.npy`` (world points, confidences). The
principal point is the image centre (the engine's model); with known intrinsics the run's ``summary.json`` config
says so.

Pixel conventions: the engine's pixel (u, v) has its centre at integer coordinates (OpenCV); COLMAP and nerfstudio
put the top-left pixel's centre at (0.5, 0.5), so their principal point is ``S / 2`` and a 2-D observation of pixel
(u, v) is written at ``(u + 0.5, v + 0.5)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slam3r.geometry.transforms import invert_pose, rotmat_to_quat

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Camera-axis change (right-multiplied on a camera-to-world pose): OpenCV (y down, z forward) -> OpenGL / nerfstudio
(y up, z back)."""


@dataclass
class ReconFrames:
    """What the exporters need from a recon directory: V frames at S x S network resolution.

    Attributes:
        frame_ids: ``(V,)`` int stream indices.
        c2w: ``(V, 4, 4)`` float64 camera-to-world poses (OpenCV axes, world units of the run).
        focal: ``(V,)`` float64 focal lengths in pixels.
        images: ``(V, S, S, 3)`` uint8 (memory-mapped).
        points: ``(V, S, S, 3)`` float32 world points or ``None`` when the run kept no predictions.
        confs: ``(V, S, S)`` float32 L2W confidences or ``None``.
        conf_thres: the run's ``conf_thres_l2w`` (points above it are the reconstruction).
    """

    frame_ids: np.ndarray
    c2w: np.ndarray
    focal: np.ndarray
    images: np.ndarray
    points: np.ndarray | None
    confs: np.ndarray | None
    conf_thres: float

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


def load_recon(out_dir: str | Path) -> ReconFrames:
    """Read a ``slam3r recon`` output directory (see module docstring); clear errors for missing files. Frames that
    were not registered (no pose) are left out."""
    from slam3r.recon.output import RunOutput

    out = RunOutput(out_dir)
    for p in (out.cameras_path, out.pred_path("input_imgs")):
        if not p.is_file():
            raise FileNotFoundError(f"{out.path} is not a finished reconstruction directory ({p.name} missing; "
                                    "exports need cameras.json and preds/, i.e. a run without --no-preds)")
    cams = out.camera_arrays()
    images = out.pred("input_imgs")
    if len(cams.frame_ids) != len(images):
        raise ValueError(f"{out.path}: cameras.json has {len(cams.frame_ids)} frames but input_imgs.npy has "
                         f"{len(images)}")
    points, confs = ((out.pred(name) if out.pred_path(name).is_file() else None)
                     for name in ("registered_pcds", "registered_confs"))
    conf_thres = float(out.summary().get("config", {}).get("conf_thres_l2w", 12.0))
    keep = cams.registered

    def rows(a: np.ndarray | None) -> np.ndarray | None:
        return a if a is None or keep.all() else a[keep]

    return ReconFrames(frame_ids=cams.frame_ids[keep], c2w=cams.c2w[keep], focal=cams.focal[keep],
                       images=rows(images), points=rows(points), confs=rows(confs), conf_thres=conf_thres)


def write_images(rec: ReconFrames, folder: Path) -> list[str]:
    """The network crops as ``folder/frame_XXXXXX.png``; returns the file names (one per frame, in order)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for fid, img in zip(rec.frame_ids, rec.images):
        name = f"frame_{int(fid):06d}.png"
        if not cv2.imwrite(str(folder / name), np.ascontiguousarray(np.asarray(img)[..., ::-1])):
            raise OSError(f"could not write {folder / name}")
        names.append(name)
    return names


def sample_observations(rec: ReconFrames, max_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray, np.ndarray]:
    """At most ``max_points`` confident world points, each with the frame and pixel it was predicted at.

    Returns frame index ``(M,)`` (position in ``rec``), pixel index ``(M,)`` (row-major in S x S), xyz ``(M, 3)``
    float64 and rgb ``(M, 3)`` uint8. Empty when the run kept no point predictions."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    if rec.points is None or rec.confs is None:
        return empty
    counts = np.array([int((np.asarray(c) > rec.conf_thres).sum()) for c in rec.confs])
    total = int(counts.sum())
    if total == 0:
        return empty
    chosen = np.sort(np.random.default_rng(seed).choice(total, min(max_points, total), replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for v in range(len(counts)):
        lo, hi = np.searchsorted(chosen, [bounds[v], bounds[v + 1]])
        if hi > lo:
            pix = np.flatnonzero(np.asarray(rec.confs[v]).reshape(-1) > rec.conf_thres)[chosen[lo:hi] - bounds[v]]
            parts.append((np.full(len(pix), v), pix))
    frame, pix = (np.concatenate(p) for p in zip(*parts))
    xyz = np.stack([np.asarray(rec.points[v]).reshape(-1, 3)[p] for v, p in zip(frame, pix)]).astype(np.float64)
    rgb = np.stack([np.asarray(rec.images[v]).reshape(-1, 3)[p] for v, p in zip(frame, pix)]).astype(np.uint8)
    return frame.astype(np.int64), pix.astype(np.int64), xyz, rgb


def write_colmap(rec: ReconFrames, out: str | Path, image_names: list[str], max_points: int = 100_000,
                 seed: int = 0) -> Path:
    """COLMAP sparse text model in ``out`` (``cameras.txt``, ``images.txt``, ``points3D.txt``).

    One PINHOLE camera per frame (focal may change between frames), image id = camera id = frame position + 1,
    poses world-to-camera as COLMAP wants. Each 3-D point (at most ``max_points`` confident predicted points) has a
    one-observation track: the pixel it was predicted at, listed among its image's 2-D points."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = rec.size
    with open(out / "cameras.txt", "w") as fh:
        fh.write("# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[fx fy cx cy]\n")
        fh.write(f"# Number of cameras: {len(rec.frame_ids)}\n")
        for i, f in enumerate(rec.focal):
            fh.write(f"{i + 1} PINHOLE {s} {s} {f:.17g} {f:.17g} {s / 2:.17g} {s / 2:.17g}\n")
    frame, pix, xyz, rgb = sample_observations(rec, max_points, seed)
    order = np.argsort(frame, kind="stable")
    per_frame = np.split(order, np.searchsorted(frame[order], np.arange(1, len(rec.frame_ids))))
    w2c = invert_pose(rec.c2w)
    q = rotmat_to_quat(w2c[:, :3, :3])  # (x, y, z, w)
    with open(out / "images.txt", "w") as fh:
        fh.write("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n")
        fh.write(f"# Number of images: {len(rec.frame_ids)}\n")
        for i, (qq, t, name, obs) in enumerate(zip(q, w2c[:, :3, 3], image_names, per_frame)):
            vals = [qq[3], qq[0], qq[1], qq[2], *t]
            fh.write(f"{i + 1} " + " ".join(f"{v:.17g}" for v in vals) + f" {i + 1} {name}\n")
            fh.write(" ".join(f"{pix[k] % s + 0.5:g} {pix[k] // s + 0.5:g} {k + 1}" for k in obs) + "\n")
    point2d_idx = np.empty(len(frame), np.int64)
    for obs in per_frame:
        point2d_idx[obs] = np.arange(len(obs))
    with open(out / "points3D.txt", "w") as fh:
        fh.write("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        fh.write(f"# Number of points: {len(frame)}\n")
        for k in range(len(frame)):
            x, y, z = xyz[k]
            r, g, b = rgb[k]
            fh.write(f"{k + 1} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} 0 {frame[k] + 1} {point2d_idx[k]}\n")
    return out


def write_nerfstudio(rec: ReconFrames, out: str | Path, image_paths: list[str], ply_name: str | None = None) -> Path:
    """nerfstudio ``transforms.json`` in ``out``: per-frame ``fl_x, fl_y, cx, cy, w, h``, ``file_path`` (relative
    to ``out``) and ``transform_matrix`` (camera-to-world in nerfstudio's OpenGL camera axes); optional
    ``ply_file_path`` of initial points in the same world frame (for splatting)."""
    out = Path(out)
    s = rec.size
    frames = []
    for path, f, c2w in zip(image_paths, rec.focal, rec.c2w):
        frames.append({"file_path": path, "fl_x": float(f), "fl_y": float(f), "cx": s / 2, "cy": s / 2,
                       "w": s, "h": s, "transform_matrix": (c2w @ OPENCV_TO_OPENGL).tolist()})
    doc: dict = {"camera_model": "OPENCV", "frames": frames}
    if ply_name is not None:
        doc["ply_file_path"] = ply_name
    path = out / "transforms.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def export_recon(out_dir: str | Path, formats: list[str], dest: str | Path | None = None,
                 max_points: int = 100_000) -> dict[str, Path]:
    """Write the requested ``formats`` (``colmap``, ``nerfstudio``) for the reconstruction in ``out_dir`` into
    ``dest`` (default ``out_dir/export``): ``images/`` shared by both, ``sparse/0/`` (COLMAP) and
    ``transforms.json`` (nerfstudio, with ``sparse_pc.ply``). Returns what was written, by format."""
    from slam3r.data.ply import write_ply

    unknown = sorted(set(formats) - {"colmap", "nerfstudio"})
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown or formats}; choose from colmap, nerfstudio")
    rec = load_recon(out_dir)
    dest = Path(dest) if dest is not None else Path(out_dir) / "export"
    names = write_images(rec, dest / "images")
    written: dict[str, Path] = {}
    if "colmap" in formats:
        written["colmap"] = write_colmap(rec, dest / "sparse" / "0", names, max_points)
    if "nerfstudio" in formats:
        _, _, xyz, rgb = sample_observations(rec, max_points)
        write_ply(dest / "sparse_pc.ply", xyz.astype(np.float32), rgb)
        written["nerfstudio"] = write_nerfstudio(rec, dest, [f"images/{n}" for n in names], "sparse_pc.ply")
    return written


# ---------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("recon_dir", help="a finished `slam3r recon` output directory (with preds/)")
    parser.add_argument("--export", default="colmap,nerfstudio",
                        help="comma-separated formats: colmap (sparse/0/{cameras,images,points3D}.txt) and/or "
                             "nerfstudio (transforms.json + sparse_pc.ply); both share images/ (default: both)")
    parser.add_argument("--out", default=None, help="destination folder (default: RECON_DIR/export)")
    parser.add_argument("--max-points", type=int, default=100_000,
                        help="confident predicted points written as the sparse cloud (default 100000)")


def run(args) -> int:
    import sys

    try:
        if args.max_points < 0:
            raise ValueError("--max-points must be >= 0")
        written = export_recon(args.recon_dir, [f.strip() for f in args.export.split(",") if f.strip()], args.out,
                               args.max_points)
    except (FileNotFoundError, ValueError) as exc:
        print(f"slam3r export: {exc}", file=sys.stderr)
        return 2
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
    return 0
