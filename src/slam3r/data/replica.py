"""The NICE-SLAM Replica layout, read and written.

::

    <root>/results/frame000000.jpg     colour (any of .jpg / .png on reading)
    <root>/results/depth000000.png     uint16 depth, metres * scale (scale 6553.5)
    <root>/traj.txt                    one camera-to-world 4x4 per line, 16 numbers row-major, OpenCV axes
    <root>/cam_params.json             {"camera": {"w", "h", "fx", "fy", "cx", "cy", "scale"}}

The published Replica download keeps ``cam_params.json`` one level up (shared by all scenes); the reader looks in
``<root>`` first, then in its parent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slam3r.data.rgbd import RGBDSequence, write_depth_png, write_rgb

REPLICA_DEPTH_SCALE = 6553.5


def _numbered(folder: Path, prefix: str, exts: tuple[str, ...]) -> dict[int, Path]:
    """{frame number: path} of files ``<prefix><digits><ext>`` in ``folder``."""
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        rest = p.stem[len(prefix):]
        if p.name.startswith(prefix) and p.suffix.lower() in exts and rest.isdigit():
            out[int(rest)] = p
    return out


def read_cam_params(root: str | Path) -> dict[str, float]:
    """The "camera" dict of ``cam_params.json`` in ``root`` or its parent."""
    root = Path(root)
    for cand in (root / "cam_params.json", root.parent / "cam_params.json"):
        if cand.is_file():
            cam = json.loads(cand.read_text())["camera"]
            missing = {"w", "h", "fx", "fy", "cx", "cy", "scale"} - set(cam)
            if missing:
                raise ValueError(f"{cand}: camera entry lacks {sorted(missing)}")
            return {k: float(v) for k, v in cam.items()}
    raise FileNotFoundError(f"cam_params.json not found in {root} or {root.parent}")


def read_traj(path: str | Path) -> np.ndarray:
    """``traj.txt`` -> camera-to-world poses (N, 4, 4) float64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.size == 0:
        return np.zeros((0, 4, 4))
    if rows.shape[1] != 16:
        raise ValueError(f"{path}: expected 16 numbers per line (a flattened 4x4), got {rows.shape[1]}")
    return rows.reshape(-1, 4, 4)


def read_replica(root: str | Path) -> RGBDSequence:
    """Read a Replica-layout sequence (see module doc). Raises FileNotFoundError / ValueError naming the problem."""
    root = Path(root)
    results = root / "results"
    if not results.is_dir():
        raise FileNotFoundError(f"Replica layout: folder {results} not found")
    colors = _numbered(results, "frame", (".jpg", ".jpeg", ".png"))
    depths = _numbered(results, "depth", (".png",))
    if not colors:
        raise ValueError(f"Replica layout: no frame*.jpg / frame*.png images in {results}")
    if sorted(colors) != sorted(depths):
        only_c = sorted(set(colors) - set(depths))[:5]
        only_d = sorted(set(depths) - set(colors))[:5]
        raise ValueError(f"Replica layout: mismatched frame counts in {results}: {len(colors)} colour vs "
                         f"{len(depths)} depth images (colour-only ids {only_c}, depth-only ids {only_d})")
    poses = read_traj(root / "traj.txt")
    ids = sorted(colors)
    if len(poses) != len(ids):
        raise ValueError(f"Replica layout: mismatched frame counts: {len(ids)} frames in {results} but "
                         f"{len(poses)} poses in {root / 'traj.txt'}")
    cam = read_cam_params(root)
    K = np.array([[cam["fx"], 0.0, cam["cx"]], [0.0, cam["fy"], cam["cy"]], [0.0, 0.0, 1.0]])
    return RGBDSequence([colors[i] for i in ids], [depths[i] for i in ids], poses, K, cam["scale"],
                        name=str(root))


class ReplicaWriter:
    """Write frames one at a time in the Replica layout (``traj.txt`` grows with every frame).

    Args:
        root: output folder (created). K: intrinsics (3, 3) for (width x height) images.
        image_ext: ".jpg" (the published layout; lossy) or ".png" (lossless).
    """

    def __init__(self, root: str | Path, K: np.ndarray, width: int, height: int,
                 depth_scale: float = REPLICA_DEPTH_SCALE, image_ext: str = ".jpg", jpeg_quality: int = 95):
        if image_ext not in (".jpg", ".png"):
            raise ValueError(f"image_ext must be '.jpg' or '.png', got {image_ext!r}")
        self.root = Path(root)
        self.results = self.root / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.size = (int(width), int(height))
        self.depth_scale = float(depth_scale)
        self.image_ext = image_ext
        self.jpeg_quality = jpeg_quality
        self.count = 0
        cam = {"w": int(width), "h": int(height), "fx": float(K[0, 0]), "fy": float(K[1, 1]),
               "cx": float(K[0, 2]), "cy": float(K[1, 2]), "scale": self.depth_scale}
        (self.root / "cam_params.json").write_text(json.dumps({"camera": cam}, indent=2) + "\n")
        self._traj = open(self.root / "traj.txt", "w")

    def add(self, rgb: np.ndarray, depth: np.ndarray, c2w: np.ndarray) -> int:
        """Append one frame: rgb (H, W, 3) uint8, depth (H, W) metres, c2w (4, 4). Returns its index."""
        h, w = rgb.shape[:2]
        if (w, h) != self.size or depth.shape != (h, w):
            raise ValueError(f"frame {self.count}: rgb {rgb.shape} / depth {depth.shape} do not match the "
                             f"declared size {self.size[0]}x{self.size[1]}")
        i = self.count
        write_rgb(self.results / f"frame{i:06d}{self.image_ext}", rgb, self.jpeg_quality)
        write_depth_png(self.results / f"depth{i:06d}.png", depth, self.depth_scale)
        self._traj.write(" ".join(f"{v:.17g}" for v in np.asarray(c2w, dtype=np.float64).reshape(16)) + "\n")
        self._traj.flush()
        self.count += 1
        return i

    def close(self) -> None:
        if not self._traj.closed:
            self._traj.close()

    def __enter__(self) -> ReplicaWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_replica(root: str | Path, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                  image_ext: str = ".jpg", jpeg_quality: int = 95) -> Path:
    """Write a whole sequence (rgb (N, H, W, 3) uint8, depth (N, H, W) metres, K (3, 3), c2w (N, 4, 4))."""
    n, h, w = rgb.shape[:3]
    if depth.shape[0] != n or c2w.shape[0] != n:
        raise ValueError(f"mismatched frame counts: {n} rgb, {depth.shape[0]} depth, {c2w.shape[0]} poses")
    with ReplicaWriter(root, K, w, h, image_ext=image_ext, jpeg_quality=jpeg_quality) as writer:
        for i in range(n):
            writer.add(rgb[i], depth[i], c2w[i])
    return Path(root)
