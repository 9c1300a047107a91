"""Fast JSON text of point rows ``[[x, y, z, r, g, b], ...]`` (or ``[[x, y, z], ...]`` without colours): x, y, z
with 4 decimals, r, g, b integers 0-255.

``json.dumps`` of 50,000 rows costs ~150 ms (one Python float repr per number). Here every number is assembled from
lookup tables of fixed-width text (integer part with its sign, 4-digit fraction, colour byte) in one structured
numpy array, padding spaces are removed, and the bytes are used as they are (~10x faster). Coordinates whose integer
part has more than 4 digits are not supported (the caller falls back to ``json.dumps``).
"""

from __future__ import annotations

import functools

import numpy as np

INT_LIMIT = 10_000
"""Exclusive bound on ``|x| * 1e4 // 1e4`` (the integer part) handled by the tables."""
_SPACE = 32


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signed integer parts: ``i`` at ``i``, ``-i`` at ``INT_LIMIT + i`` (``-0`` included), right-aligned in 5
    characters;
    4-digit fractions; colour values right-aligned in 3 characters)."""
    ints = np.array([f"{i:>5}" for i in range(INT_LIMIT)] + [f"{'-' + str(i):>5}" for i in range(INT_LIMIT)], "S5")
    fracs = np.array([f"{i:04d}" for i in range(10_000)], "S4")
    colours = np.array([f"{i:>3}" for i in range(256)], "S3")
    return ints, fracs, colours


def _row_dtype(colours: bool) -> np.dtype:
    fields = [("open", "S1")]
    for axis in "xyz":
        sep = [(f"{axis}sep", "S1")] if colours or axis != "z" else []
        fields += [(f"{axis}i", "S5"), (f"{axis}dot", "S1"), (f"{axis}f", "S4")] + sep
    if colours:
        fields += [("r", "S3"), ("rsep", "S1"), ("g", "S3"), ("gsep", "S1"), ("b", "S3")]
    return np.dtype(fields + [("close", "S2")])


def point_rows_json(xyz: np.ndarray, rgb: np.ndarray | None) -> bytes | None:
    """JSON array text of ``(N, 3)`` coordinates and ``(N, 3)`` uint8 colours (None: rows of x, y, z only), or None
    if a coordinate is out of the supported range (or not finite). Rounding: half to even on ``|x| * 1e4``, as
    ``np.rint``."""
    n = len(xyz)
    if n == 0:
        return b"[]"
    v = np.asarray(xyz, np.float64).reshape(n, 3)
    scaled = np.rint(np.abs(v) * 1e4)
    if not np.isfinite(scaled).all() or scaled.max() >= INT_LIMIT * 1e4:
        return None
    scaled = scaled.astype(np.int64)
    whole = scaled // 10_000
    frac = scaled - whole * 10_000
    signed = whole + INT_LIMIT * ((v < 0) & (scaled > 0))          # no "-0.0000"
    ints, fracs, colours = _tables()
    rows = np.empty(n, _row_dtype(rgb is not None))
    rows["open"] = b"["
    for k, axis in enumerate("xyz"):
        rows[f"{axis}i"] = ints.take(signed[:, k])
        rows[f"{axis}dot"] = b"."
        rows[f"{axis}f"] = fracs.take(frac[:, k])
        if rgb is not None or axis != "z":
            rows[f"{axis}sep"] = b","
    if rgb is not None:
        c = np.asarray(rgb, np.uint8).reshape(n, 3)
        rows["r"], rows["g"], rows["b"] = colours.take(c[:, 0]), colours.take(c[:, 1]), colours.take(c[:, 2])
        rows["rsep"] = rows["gsep"] = b","
    rows["close"] = b"],"
    text = rows.view(np.uint8)
    text = text[text != _SPACE]
    return b"[" + text[:-1].tobytes() + b"]"


def colour_rows_json(rgb: np.ndarray) -> bytes:
    """JSON array text ``[[r, g, b], ...]`` of ``(N, 3)`` uint8 colours (same tables as :func:`point_rows_json`)."""
    c = np.asarray(rgb, np.uint8).reshape(-1, 3)
    if len(c) == 0:
        return b"[]"
    colours = _tables()[2]
    rows = np.empty(len(c), np.dtype([("open", "S1"), ("r", "S3"), ("rsep", "S1"), ("g", "S3"), ("gsep", "S1"),
                                      ("b", "S3"), ("close", "S2")]))
    rows["open"], rows["rsep"], rows["gsep"], rows["close"] = b"[", b",", b",", b"],"
    rows["r"], rows["g"], rows["b"] = colours.take(c[:, 0]), colours.take(c[:, 1]), colours.take(c[:, 2])
    text = rows.view(np.uint8)
    text = text[text != _SPACE]
    return b"[" + text[:-1].tobytes() + b"]"
