"""Camera trajectories as text files in the TUM format: one pose per line, ``timestamp tx ty tz qx qy qz qw``
(camera-to-world, metres, seconds; lines starting with ``#`` are comments)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slam3r.geometry.transforms import quat_to_rotmat, rotmat_to_quat


def read_tum_trajectory(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """TUM trajectory file -> (timestamps (N,) float64 seconds, camera-to-world poses (N, 4, 4))."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        vals = line.replace(",", " ").split()
        if len(vals) != 8:
            raise ValueError(f"{path}:{lineno}: expected 8 values 'timestamp tx ty tz qx qy qz qw', got {len(vals)}")
        try:
            rows.append([float(v) for v in vals])
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    data = np.array(rows, dtype=np.float64).reshape(-1, 8)
    poses = np.tile(np.eye(4), (len(data), 1, 1))
    if len(data):
        poses[:, :3, :3] = quat_to_rotmat(data[:, 4:8])
        poses[:, :3, 3] = data[:, 1:4]
    return data[:, 0], poses


def write_tum_trajectory(path: str | Path, timestamps: np.ndarray, c2w: np.ndarray, notes: Sequence[str] = ()) -> Path:
    """Write timestamps (N,) seconds and camera-to-world poses (N, 4, 4) as a TUM trajectory file, with ``notes``
    as comment lines after the header (e.g. frames that have no pose). The file appears complete or not at all
    (written under a temporary name, then renamed).

    A pose whose 3x3 block carries a scale (a Sim(3) pose) is written with its rotation normalised.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if c2w.shape != (len(timestamps), 4, 4):
        raise ValueError(f"{len(timestamps)} timestamps but poses of shape {c2w.shape}")
    A = c2w[:, :3, :3]
    scale = np.cbrt(np.linalg.det(A))
    q = rotmat_to_quat(A / scale[:, None, None]) if len(A) else np.zeros((0, 4))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write("# timestamp tx ty tz qx qy qz qw\n")
        f.writelines(f"# {note}\n" for note in notes)
        for t, p, qq in zip(timestamps, c2w[:, :3, 3], q):
            f.write(f"{t:.9f} " + " ".join(f"{v:.9g}" for v in (*p, *qq)) + "\n")
    os.replace(tmp, path)
    return path


def associate(t_a: np.ndarray, t_b: np.ndarray, max_diff: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Match two timestamp lists (seconds) one-to-one, closest pairs first, keeping pairs within ``max_diff``.

    Returns index arrays (ia, ib) sorted by ``t_a``.
    """
    t_a = np.asarray(t_a, dtype=np.float64)
    t_b = np.asarray(t_b, dtype=np.float64)
    if len(t_a) == 0 or len(t_b) == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    order = np.argsort(t_b)
    tb = t_b[order]
    lo = np.searchsorted(tb, t_a - max_diff, side="left")
    hi = np.searchsorted(tb, t_a + max_diff, side="right")
    pairs = [(abs(tb[j] - t_a[a]), a, int(order[j])) for a in range(len(t_a)) for j in range(lo[a], hi[a])]
    pairs.sort()
    used_a, used_b, ia, ib = set(), set(), [], []
    for _, a, b in pairs:
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
            ia.append(a)
            ib.append(b)
    ia_arr, ib_arr = np.array(ia, dtype=int), np.array(ib, dtype=int)
    s = np.argsort(t_a[ia_arr], kind="stable")
    return ia_arr[s], ib_arr[s]
