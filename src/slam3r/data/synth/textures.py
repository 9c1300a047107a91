"""Procedural solid textures: value noise, fractal noise and a handful of patterns evaluated at 3D points.

Textures are "solid": a colour is a function of the 3D hit point (in the object's local frame), so every surface
is textured without UV coordinates and the appearance of a point is identical from every view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATTERNS = ("checker", "stripes", "noise", "wood", "marble", "tiles")


class NoiseField:
    """Periodic 3D value noise from a random lattice of ``size**3`` values in [0, 1] (smoothstep interpolation)."""

    def __init__(self, rng: np.random.Generator, size: int = 32):
        if size & (size - 1):
            raise ValueError("noise lattice size must be a power of two")
        self.size = size
        self.table = rng.random(size**3, dtype=np.float32)

    def value(self, p: np.ndarray) -> np.ndarray:
        """Noise in [0, 1] at points (M, 3) (lattice spacing 1)."""
        m, s, tab = self.size - 1, self.size, self.table
        lo, hi, w = [], [], []
        for k, stride in enumerate((s * s, s, 1)):
            c = p[:, k]
            fl = np.floor(c)
            f = c - fl
            w.append(f * f * (3.0 - 2.0 * f))
            i = fl.astype(np.int32) & m
            lo.append(i * stride)
            hi.append(((i + 1) & m) * stride)

        def along_z(bx: np.ndarray, by: np.ndarray) -> np.ndarray:
            b = bx + by
            a = tab[b + lo[2]]
            return a + (tab[b + hi[2]] - a) * w[2]

        y0 = along_z(lo[0], lo[1])
        y0 += (along_z(lo[0], hi[1]) - y0) * w[1]
        y1 = along_z(hi[0], lo[1])
        y1 += (along_z(hi[0], hi[1]) - y1) * w[1]
        return y0 + (y1 - y0) * w[0]

    def fbm(self, p: np.ndarray, octaves: int = 3) -> np.ndarray:
        """Fractal sum of ``octaves`` noise layers (frequency x2.03, amplitude x0.5), normalised to [0, 1]."""
        total = np.zeros(p.shape[0], dtype=np.float32)
        amp, norm, q = 1.0, 0.0, p
        for _ in range(octaves):
            total += amp * self.value(q)
            norm += amp
            amp *= 0.5
            q = q * 2.03 + 17.1
        return total / norm


@dataclass(frozen=True)
class Material:
    """A procedural surface appearance.

    pattern: one of ``PATTERNS``; color_a / color_b: linear RGB in [0, 1] (3,); scale: pattern period in metres;
    axis: unit vector (3,) orienting stripes / wood rings / marble veins; detail: amplitude of the fine multiplicative
    noise that gives every surface trackable texture; offset: (3,) shift of the noise domain.
    """

    pattern: str
    color_a: np.ndarray
    color_b: np.ndarray
    scale: float
    axis: np.ndarray
    detail: float
    offset: np.ndarray

    def albedo(self, p: np.ndarray, noise: NoiseField) -> np.ndarray:
        """Linear RGB albedo (M, 3) float32 at local points p (M, 3) metres."""
        q = (p / self.scale + self.offset).astype(np.float32)
        along = q @ self.axis.astype(np.float32)
        if self.pattern == "checker":
            m = (np.floor(q).astype(np.int64).sum(axis=1) & 1).astype(np.float32)
        elif self.pattern == "stripes":
            m = 0.5 + 0.5 * np.tanh(4.0 * np.sin(2 * np.pi * along))
        elif self.pattern == "noise":
            m = np.clip((noise.fbm(q * 2.0, 3) - 0.5) * 2.5 + 0.5, 0.0, 1.0)
        elif self.pattern == "wood":
            radial = np.sqrt(np.maximum(np.sum(q * q, axis=1) - along * along, 0.0))
            rings = radial * 3.0 + 1.5 * noise.fbm(q * np.float32(1.5), 2)
            m = (rings - np.floor(rings)) ** 2
        elif self.pattern == "marble":
            m = 0.5 + 0.5 * np.sin(2 * np.pi * along + 6.0 * noise.fbm(q, 3))
        elif self.pattern == "tiles":
            # Square tiles in the plane orthogonal to ``axis``; grout lines are colour b.
            e1 = np.cross(self.axis, [1.0, 0.0, 0.0] if abs(self.axis[0]) < 0.9 else [0.0, 1.0, 0.0])
            e1 = (e1 / np.linalg.norm(e1)).astype(np.float32)
            e2 = np.cross(self.axis, e1).astype(np.float32)
            uv = np.stack([q @ e1, q @ e2], axis=1)
            fr = uv - np.floor(uv)
            m = (np.minimum(fr, 1.0 - fr).min(axis=1) < 0.04).astype(np.float32)
        else:
            raise ValueError(f"unknown pattern {self.pattern!r}")
        m = m.astype(np.float32)[:, None]
        col = self.color_a * (1.0 - m) + self.color_b * m
        fine = noise.fbm(q * np.float32(16.0 * self.scale) + 3.3, 2)
        return (col * (1.0 + self.detail * (fine[:, None] - 0.5) * 2.0)).astype(np.float32)


def random_color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    """Random linear-RGB colour (3,) from a uniform hue and the given saturation / value ranges."""
    h = rng.random()
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    rgb = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (rgb**2.2).astype(np.float32)


def random_material(rng: np.random.Generator, patterns: tuple[str, ...] = PATTERNS,
                    scale: tuple[float, float] = (0.15, 0.6)) -> Material:
    """A random material with one of ``patterns`` and a contrasting second colour."""
    pattern = str(rng.choice(patterns))
    a = random_color(rng, (0.1, 0.7), (0.35, 0.95))
    b = a * rng.uniform(0.35, 0.75) if rng.random() < 0.6 else random_color(rng, (0.1, 0.8), (0.2, 0.9))
    axis = rng.normal(size=3)
    if rng.random() < 0.6:  # most stripes / grains follow a principal axis
        axis = np.eye(3)[rng.integers(3)] + 0.05 * axis
    axis = axis / np.linalg.norm(axis)
    return Material(
        pattern=pattern,
        color_a=a,
        color_b=b.astype(np.float32),
        scale=float(rng.uniform(*scale)),
        axis=axis.astype(np.float32),
        detail=float(rng.uniform(0.25, 0.5)),
        offset=rng.uniform(0, 32, size=3).astype(np.float32),
    )
