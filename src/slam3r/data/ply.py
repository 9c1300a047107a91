"""PLY point-cloud I/O: write binary little-endian ``x y z`` (float32) + ``red green blue`` (uchar) + optional
``conf`` (float32); read the vertex element of any ascii / binary PLY (other elements such as faces are ignored)
as a :class:`~slam3r.data.cloud.PointCloud`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from slam3r.data.cloud import PointCloud

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
_CONF_NAMES = ("conf", "confidence", "scalar_conf", "scalar_confidence", "quality")


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None,
              conf: np.ndarray | None = None) -> Path:
    """Write points xyz (N, 3), optional colours rgb (N, 3) uint8 and confidences conf (N,) as binary PLY."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
        rgb = rgb.reshape(-1, 3)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if conf is not None:
        conf = np.asarray(conf, dtype=np.float32).reshape(-1)
        fields += [("conf", "<f4")]
    for name, arr in (("rgb", rgb), ("conf", conf)):
        if arr is not None and arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries for {n} points")
    data = np.empty(n, dtype=fields)
    data["x"], data["y"], data["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is not None:
        data["red"], data["green"], data["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if conf is not None:
        data["conf"] = conf
    type_names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {type_names[t]} {name}" for name, t in fields]
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # complete or absent: written aside, then renamed
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    os.replace(tmp, path)
    return path


def write_ply_cloud(path: str | Path, cloud: PointCloud) -> Path:
    """Write ``cloud`` (its colours and confidences where it has them) as binary PLY."""
    return write_ply(path, cloud.xyz, cloud.rgb, cloud.conf)


def read_ply(path: str | Path) -> PointCloud:
    """Read the vertex element of a PLY file (ascii, binary little- or big-endian)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    with open(path, "rb") as f:
        fmt, n, props = _read_ply_header(f, path)
        data = _read_ply_vertices(f, path, fmt, n, props)
    for axis in "xyz":
        if axis not in data:
            raise ValueError(f"{path}: vertex element has no '{axis}' property")
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
    rgb = None
    for names in _COLOR_NAMES:
        if all(c in data for c in names):
            cols = np.stack([data[c] for c in names], axis=1)
            kinds = {t for name, t in props if name in names}
            if kinds & {"f4", "f8"}:
                cols = np.clip(cols * 255.0 + 0.5, 0, 255)
            rgb = cols.astype(np.uint8)
            break
    conf = next((np.asarray(data[c], dtype=np.float32) for c in _CONF_NAMES if c in data), None)
    return PointCloud(xyz, rgb, conf)


def _read_ply_header(f: BinaryIO, path: Path) -> tuple[str | None, int, list[tuple[str, str]]]:
    """Parse the PLY header at the start of ``f``: the format, the vertex count and the vertex properties
    ``(name, numpy type code)``; ``f`` is left at the start of the body."""
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic)")
    fmt = None
    elements: list[tuple[str, int, list[tuple[str, str]], bool]] = []
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: truncated PLY header (no end_header)")
        tok = line.decode("ascii", errors="replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), [], False))
        elif tok[0] == "property" and elements:
            name, count, props, has_list = elements[-1]
            if tok[1] == "list":
                elements[-1] = (name, count, props, True)
            else:
                if tok[1] not in _PLY_TYPES:
                    raise ValueError(f"{path}: unknown PLY property type {tok[1]!r}")
                props.append((tok[2], _PLY_TYPES[tok[1]]))
    vertex_at = next((i for i, e in enumerate(elements) if e[0] == "vertex"), None)
    if vertex_at is None:
        raise ValueError(f"{path}: PLY has no vertex element")
    if any(e[1] > 0 for e in elements[:vertex_at]):
        raise ValueError(f"{path}: elements before 'vertex' are not supported")
    _, n, props, has_list = elements[vertex_at]
    if has_list:
        raise ValueError(f"{path}: list properties in the vertex element are not supported")
    return fmt, n, props


def _read_ply_vertices(f: BinaryIO, path: Path, fmt: str | None, n: int,
                       props: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The ``n`` vertex rows of a PLY body in format ``fmt``: property name -> ``(n,)`` array."""
    if fmt == "ascii":
        rows = [f.readline() for _ in range(n)]
        table = np.loadtxt(rows, dtype=np.float64, ndmin=2) if n else np.zeros((0, len(props)))
        return {name: table[:, i] for i, (name, _) in enumerate(props)}
    if fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + t) for name, t in props])
        raw = f.read(dtype.itemsize * n)
        if len(raw) < dtype.itemsize * n:
            raise ValueError(f"{path}: truncated PLY body ({len(raw)} of {dtype.itemsize * n} bytes)")
        arr = np.frombuffer(raw, dtype=dtype, count=n)
        return {name: arr[name] for name, _ in props}
    raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
