"""Procedural indoor scenes: a closed box room with furniture-like primitives, materials and lights.

World frame: z up, floor at z = 0, the room spans ``[lo, hi]`` with its centre above the origin; metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from slam3r.data.synth.textures import Material, NoiseField, random_material

PRIMITIVE_KINDS = ("box", "cylinder", "sphere")


def rot_z(angle: float) -> np.ndarray:
    """Rotation (3, 3) by ``angle`` radians about the world z axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_xyz(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation (3, 3) ``Rz(az) @ Ry(ay) @ Rx(ax)`` (radians)."""
    cx, sx, cy, sy = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return rot_z(az) @ ry @ rx


@dataclass(frozen=True)
class Primitive:
    """A solid in its local frame, placed by ``x_world = rot @ x_local + center``.

    kind: "box" (local half extents ``size``), "cylinder" (axis = local z, ``size = (radius, radius, half
    height)``) or "sphere" (``size = (r, r, r)``); material: index into ``Scene.materials``.
    """

    kind: str
    center: np.ndarray
    rot: np.ndarray
    size: np.ndarray
    material: int

    def to_local(self, p: np.ndarray) -> np.ndarray:
        """World points (M, 3) -> local frame (M, 3)."""
        return (p - self.center) @ self.rot

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (M,) in metres from world points (M, 3); negative inside."""
        q = self.to_local(p)
        if self.kind == "sphere":
            return np.linalg.norm(q, axis=1) - self.size[0]
        if self.kind == "cylinder":
            q = np.stack([np.hypot(q[:, 0], q[:, 1]), q[:, 2]], axis=1)
            q = np.abs(q) - self.size[[0, 2]]
        else:
            q = np.abs(q) - self.size
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


@dataclass(frozen=True)
class Lighting:
    """Ambient term, one directional light (``sun_dir`` points towards the light) and point lights."""

    ambient: float
    sun_dir: np.ndarray
    sun_intensity: float
    point_pos: np.ndarray  # (L, 3) metres
    point_intensity: np.ndarray  # (L,)
    falloff: float  # metres; intensity / (1 + (d / falloff)^2)


@dataclass(frozen=True)
class Scene:
    """A room ``[lo, hi]`` (3,) with per-face materials (order -x, +x, -y, +y, floor, ceiling), primitives,
    materials, lighting and the noise lattice the textures sample."""

    seed: int
    lo: np.ndarray
    hi: np.ndarray
    face_materials: tuple[int, ...]
    primitives: list[Primitive]
    materials: list[Material]
    lighting: Lighting
    noise: NoiseField = field(repr=False)

    def clearance(self, p: np.ndarray) -> np.ndarray:
        """Free distance (M,) in metres from points (M, 3) to the nearest wall, floor, ceiling or primitive."""
        d = np.minimum(p - self.lo, self.hi - p).min(axis=1)
        for prim in self.primitives:
            d = np.minimum(d, prim.sdf(p))
        return d


class _Floor:
    """Axis-aligned 2D footprints already used on the floor, for rejection sampling of new furniture."""

    def __init__(self) -> None:
        self.rects: list[tuple[float, float, float, float]] = []

    def try_add(self, center: np.ndarray, half_xy: np.ndarray, yaw: float, gap: float = 0.05) -> bool:
        c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
        ex = c * half_xy[0] + s * half_xy[1] + gap
        ey = s * half_xy[0] + c * half_xy[1] + gap
        r = (center[0] - ex, center[1] - ey, center[0] + ex, center[1] + ey)
        for o in self.rects:
            if r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3]:
                return False
        self.rects.append(r)
        return True


class _Builder:
    """Collects primitives and materials while furniture is generated."""

    def __init__(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray):
        self.rng = rng
        self.lo, self.hi = lo, hi
        self.prims: list[Primitive] = []
        self.materials: list[Material] = []
        self.floor = _Floor()

    def material(self, **kw) -> int:
        self.materials.append(random_material(self.rng, **kw))
        return len(self.materials) - 1

    def add(self, kind: str, center, rot, size, material: int) -> None:
        self.prims.append(Primitive(kind, np.asarray(center, float), np.asarray(rot, float),
                                    np.asarray(size, float), material))

    def box_in(self, frame_c: np.ndarray, frame_r: np.ndarray, local_c, half, material: int) -> None:
        """Add a box given in a furniture-local frame (centre ``frame_c``, rotation ``frame_r``)."""
        self.add("box", frame_c + frame_r @ np.asarray(local_c, float), frame_r, half, material)

    # -- placement helpers ---------------------------------------------------------------------------------------
    def wall_frame(self, width: float, depth: float) -> tuple[np.ndarray, float] | None:
        """A floor position against a random wall for a (width x depth) footprint; local +y points into the room."""
        rng = self.rng
        for _ in range(20):
            wall = int(rng.integers(4))
            axis, side = wall // 2, wall % 2
            normal = np.zeros(3)
            normal[axis] = 1.0 if side == 0 else -1.0
            yaw = math.atan2(-normal[0], normal[1])
            along = 1 - axis
            length = self.hi[along] - self.lo[along]
            if width + 0.1 > length:
                continue
            pos = np.zeros(3)
            pos[along] = rng.uniform(self.lo[along] + width / 2 + 0.05, self.hi[along] - width / 2 - 0.05)
            wall_coord = self.lo[axis] if side == 0 else self.hi[axis]
            pos[axis] = wall_coord + normal[axis] * (depth / 2 + rng.uniform(0.01, 0.05))
            if self.floor.try_add(pos, np.array([width / 2, depth / 2]), yaw):
                return pos, yaw
        return None

    def free_frame(self, half_xy: np.ndarray, margin: float = 0.4, near_wall: bool = False
                   ) -> tuple[np.ndarray, float] | None:
        """A random floor position and yaw for a footprint of half extents ``half_xy``: anywhere in the room, or
        (``near_wall``, used for tall items so that the middle of the room stays walkable) within 0.4 m of a wall."""
        rng = self.rng
        r = float(np.linalg.norm(half_xy))
        lo, hi = self.lo[:2] + r + margin, self.hi[:2] - r - margin
        if np.any(lo >= hi):
            return None
        for _ in range(20):
            yaw = float(rng.uniform(-math.pi, math.pi))
            pos = np.array([rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]), 0.0])
            if near_wall:
                axis, side = int(rng.integers(2)), int(rng.integers(2))
                gap = r + rng.uniform(0.05, 0.4)
                pos[axis] = self.lo[axis] + gap if side == 0 else self.hi[axis] - gap
            if self.floor.try_add(pos, half_xy, yaw):
                return pos, yaw
        return None

    # -- furniture -----------------------------------------------------------------------------------------------
    def cabinet(self) -> None:
        rng = self.rng
        w, d, h = rng.uniform(0.5, 1.6), rng.uniform(0.35, 0.6), rng.uniform(0.6, 2.0)
        placed = self.wall_frame(w, d)
        if placed is None:
            return
        pos, yaw = placed
        R = rot_z(yaw)
        mat = self.material()
        self.box_in(pos, R, (0, 0, h / 2), (w / 2, d / 2, h / 2), mat)
        # doors / drawer fronts: thin slabs on the front face
        n_doors = int(rng.integers(1, 4))
        door_mat = self.material(patterns=("noise", "wood", "stripes"))
        dw = w / n_doors
        for k in range(n_doors):
            x = -w / 2 + dw * (k + 0.5)
            self.box_in(pos, R, (x, d / 2 + 0.01, h / 2), (dw / 2 - 0.02, 0.01, h / 2 - 0.04), door_mat)
        if h < 1.2 and rng.random() < 0.7:
            self.small_object(pos + np.array([0.0, 0.0, h]), R, (w / 2, d / 2))

    def shelf(self) -> None:
        rng = self.rng
        w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.3, 0.4), rng.uniform(1.2, 2.0)
        placed = self.wall_frame(w, d)
        if placed is None:
            return
        pos, yaw = placed
        R = rot_z(yaw)
        mat = self.material(patterns=("wood", "noise"))
        t = 0.02
        for sx in (-1, 1):
            self.box_in(pos, R, (sx * (w / 2 - t), 0, h / 2), (t, d / 2, h / 2), mat)
        self.box_in(pos, R, (0, -d / 2 + t / 2, h / 2), (w / 2 - 2 * t, t / 2, h / 2), mat)
        n = int(rng.integers(3, 6))
        for k in range(n):
            z = (h - t) * k / (n - 1) + t / 2
            self.box_in(pos, R, (0, 0, z), (w / 2 - 2 * t, d / 2, t / 2), mat)
            if k < n - 1 and rng.random() < 0.8:
                self.small_object(pos + R @ np.array([0.0, 0.0, z + t / 2]), R, (w / 2 - 0.1, d / 2 - 0.05),
                                  max_h=(h - t) / (n - 1) - 0.05)

    def sofa(self) -> None:
        rng = self.rng
        w, d = rng.uniform(1.4, 2.2), rng.uniform(0.8, 1.0)
        placed = self.wall_frame(w, d)
        if placed is None:
            return
        pos, yaw = placed
        R = rot_z(yaw)
        mat = self.material(patterns=("noise", "checker", "stripes"), scale=(0.1, 0.3))
        hs = rng.uniform(0.35, 0.5)
        self.box_in(pos, R, (0, 0, hs / 2), (w / 2, d / 2, hs / 2), mat)
        hb = rng.uniform(0.75, 0.95)
        self.box_in(pos, R, (0, -d / 2 + 0.1, hb / 2), (w / 2, 0.1, hb / 2), mat)
        if rng.random() < 0.7:
            for sx in (-1, 1):
                self.box_in(pos, R, (sx * (w / 2 - 0.1), 0, (hs + 0.2) / 2), (0.1, d / 2, (hs + 0.2) / 2), mat)

    def table(self) -> None:
        rng = self.rng
        w, d, h = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.78)
        placed = self.free_frame(np.array([w / 2, d / 2]))
        if placed is None:
            return
        pos, yaw = placed
        R = rot_z(yaw)
        mat = self.material(patterns=("wood", "marble", "noise"))
        self.box_in(pos, R, (0, 0, h - 0.02), (w / 2, d / 2, 0.02), mat)
        leg_mat = self.material(patterns=("noise", "wood"))
        round_legs = rng.random() < 0.5
        for sx in (-1, 1):
            for sy in (-1, 1):
                c = pos + R @ np.array([sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), (h - 0.04) / 2])
                if round_legs:
                    self.add("cylinder", c, R, (0.025, 0.025, (h - 0.04) / 2), leg_mat)
                else:
                    self.add("box", c, R, (0.025, 0.025, (h - 0.04) / 2), leg_mat)
        for _ in range(int(rng.integers(0, 3))):
            self.small_object(pos + np.array([0.0, 0.0, h]), R, (w / 2 - 0.1, d / 2 - 0.1), max_h=0.25)

    def column(self) -> None:
        """A low pedestal, a pillar up to the ceiling or a pot with a plant-like ball (the tall ones near walls)."""
        rng = self.rng
        r = rng.uniform(0.1, 0.3)
        style = int(rng.integers(3))
        h = rng.uniform(0.4, 0.8) if style == 0 else self.hi[2] if style == 1 else rng.uniform(0.3, 0.8)
        placed = self.free_frame(np.array([r, r]), near_wall=style > 0)
        if placed is None:
            return
        pos, _ = placed
        self.add("cylinder", pos + np.array([0.0, 0.0, h / 2]), np.eye(3), (r, r, h / 2),
                 self.material(patterns=("marble", "stripes", "noise", "checker")))
        if style == 2:
            rs = rng.uniform(0.8, 1.5) * r
            self.add("sphere", pos + np.array([0.0, 0.0, h + rs * 0.8]), np.eye(3), (rs, rs, rs),
                     self.material(patterns=("noise", "marble")))

    def floor_lamp(self) -> None:
        rng = self.rng
        h = rng.uniform(1.3, 1.8)
        placed = self.free_frame(np.array([0.2, 0.2]), near_wall=True)
        if placed is None:
            return
        pos, _ = placed
        mat = self.material(patterns=("noise", "stripes"))
        self.add("cylinder", pos + np.array([0.0, 0.0, 0.015]), np.eye(3), (0.2, 0.2, 0.015), mat)
        self.add("cylinder", pos + np.array([0.0, 0.0, h / 2]), np.eye(3), (0.02, 0.02, h / 2), mat)
        rs = rng.uniform(0.15, 0.25)
        self.add("sphere", pos + np.array([0.0, 0.0, h + rs * 0.7]), np.eye(3), (rs, rs, rs),
                 self.material(patterns=("noise", "marble")))

    def crates(self) -> None:
        rng = self.rng
        a = rng.uniform(0.25, 0.5)
        placed = self.free_frame(np.array([a / 2, a / 2]) * 1.2)
        if placed is None:
            return
        pos, yaw = placed
        size = np.array([a, a * rng.uniform(0.7, 1.0), a * rng.uniform(0.6, 1.0)]) / 2
        self.add("box", pos + np.array([0.0, 0.0, size[2]]), rot_z(yaw), size,
                 self.material(patterns=("wood", "checker", "stripes", "tiles")))
        if rng.random() < 0.6:  # a tilted box resting on top
            s2 = size * rng.uniform(0.4, 0.7)
            R2 = rot_xyz(rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(-math.pi, math.pi))
            self.add("box", pos + np.array([0.0, 0.0, 2 * size[2] + s2.max()]), R2, s2,
                     self.material(patterns=("checker", "noise", "stripes")))

    def ball(self) -> None:
        rng = self.rng
        r = rng.uniform(0.1, 0.35)
        placed = self.free_frame(np.array([r, r]))
        if placed is None:
            return
        pos, yaw = placed
        self.add("sphere", pos + np.array([0.0, 0.0, r]), rot_xyz(*rng.uniform(-math.pi, math.pi, 3)), (r, r, r),
                 self.material(patterns=("checker", "stripes", "marble"), scale=(0.08, 0.25)))

    def wall_art(self) -> None:
        """A thin picture / poster / door-like slab on a wall (no floor footprint)."""
        rng = self.rng
        wall = int(rng.integers(4))
        axis, side = wall // 2, wall % 2
        along = 1 - axis
        w, h = rng.uniform(0.4, 1.2), rng.uniform(0.3, 0.9)
        length = self.hi[along] - self.lo[along]
        if w + 0.2 > length:
            return
        pos = np.zeros(3)
        pos[along] = rng.uniform(self.lo[along] + w / 2 + 0.1, self.hi[along] - w / 2 - 0.1)
        pos[axis] = (self.lo[axis] + 0.015) if side == 0 else (self.hi[axis] - 0.015)
        pos[2] = rng.uniform(max(1.0, h / 2 + 0.5), min(2.0, self.hi[2] - h / 2 - 0.1))
        half = np.zeros(3)
        half[along], half[axis], half[2] = w / 2, 0.015, h / 2
        self.add("box", pos, np.eye(3), half, self.material(scale=(0.05, 0.3)))

    def rug(self) -> None:
        rng = self.rng
        w, d = rng.uniform(1.0, 2.5), rng.uniform(0.8, 2.0)
        c = (self.lo + self.hi) / 2
        pos = np.array([c[0] + rng.uniform(-0.5, 0.5), c[1] + rng.uniform(-0.5, 0.5), 0.005])
        self.add("box", pos, rot_z(rng.uniform(-math.pi, math.pi)), (w / 2, d / 2, 0.005),
                 self.material(patterns=("checker", "stripes", "noise", "tiles"), scale=(0.1, 0.4)))

    def small_object(self, base: np.ndarray, R: np.ndarray, half_xy: tuple[float, float],
                     max_h: float = 0.35) -> None:
        """A small box / cylinder / sphere standing on a surface at ``base`` inside the local footprint."""
        rng = self.rng
        if max_h < 0.06 or min(half_xy) < 0.06:
            return
        h = rng.uniform(0.05, max_h)
        r = min(rng.uniform(0.04, 0.15), min(half_xy), h)
        off = R @ np.array([rng.uniform(-half_xy[0] + r, half_xy[0] - r),
                            rng.uniform(-half_xy[1] + r, half_xy[1] - r), 0.0])
        kind = PRIMITIVE_KINDS[int(rng.integers(3))]
        mat = self.material(scale=(0.03, 0.15))
        if kind == "sphere":
            r = min(r, h / 2)
            self.add("sphere", base + off + np.array([0.0, 0.0, r]), np.eye(3), (r, r, r), mat)
        elif kind == "cylinder":
            self.add("cylinder", base + off + np.array([0.0, 0.0, h / 2]), np.eye(3), (r, r, h / 2), mat)
        else:
            self.add("box", base + off + np.array([0.0, 0.0, h / 2]), R @ rot_z(rng.uniform(-1, 1)),
                     (r, r * rng.uniform(0.5, 1.0), h / 2), mat)


def make_scene(
    seed: int,
    room_size: tuple[float, float, float] | None = None,
    num_wall_items: int | None = None,
    num_free_items: int | None = None,
) -> Scene:
    """A deterministic random room for ``seed``.

    Args:
        seed: integer seed (see ``slam3r.data.synth`` for the reserved ranges).
        room_size: (x, y, z) extent in metres; default random in [4.5, 8] x [4, 7] x [2.5, 3.2].
        num_wall_items: cabinets / shelves / sofas against walls; default 4..8.
        num_free_items: tables, columns, lamps, crates and balls in the room; default 2..6.
    """
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    if room_size is None:
        room_size = (rng.uniform(4.5, 8.0), rng.uniform(4.0, 7.0), rng.uniform(2.5, 3.2))
    size = np.asarray(room_size, dtype=float)
    lo = np.array([-size[0] / 2, -size[1] / 2, 0.0])
    hi = np.array([size[0] / 2, size[1] / 2, size[2]])
    b = _Builder(rng, lo, hi)

    wall_mat = b.material(patterns=("noise", "stripes", "marble", "tiles"), scale=(0.2, 0.8))
    faces = [wall_mat if rng.random() < 0.5 else b.material(scale=(0.2, 0.8)) for _ in range(4)]
    floor_mat = b.material(patterns=("wood", "tiles", "checker", "noise"), scale=(0.25, 0.6))
    b.materials[floor_mat] = replace(b.materials[floor_mat], axis=np.array([0.0, 0.0, 1.0], np.float32))
    ceil_mat = b.material(patterns=("noise", "tiles"), scale=(0.3, 0.8))
    face_materials = (*faces, floor_mat, ceil_mat)

    n_wall = int(rng.integers(4, 9)) if num_wall_items is None else num_wall_items
    n_free = int(rng.integers(2, 7)) if num_free_items is None else num_free_items
    wall_makers = (b.cabinet, b.shelf, b.sofa)
    free_makers = (b.table, b.column, b.floor_lamp, b.crates, b.ball)
    for _ in range(n_wall):
        wall_makers[int(rng.integers(len(wall_makers)))]()
    for _ in range(n_free):
        free_makers[int(rng.integers(len(free_makers)))]()
    for _ in range(int(rng.integers(2, 8))):
        b.wall_art()
    if rng.random() < 0.5:
        b.rug()

    n_lights = int(rng.integers(1, 4))
    light_xy = rng.uniform(lo[:2] * 0.7, hi[:2] * 0.7, size=(n_lights, 2))
    sun = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.4, 1.0)])
    lighting = Lighting(
        ambient=float(rng.uniform(0.25, 0.4)),
        sun_dir=sun / np.linalg.norm(sun),
        sun_intensity=float(rng.uniform(0.2, 0.45)),
        point_pos=np.column_stack([light_xy, np.full(n_lights, hi[2] - 0.2)]),
        point_intensity=rng.uniform(0.6, 1.0, n_lights) / math.sqrt(n_lights),
        falloff=float(rng.uniform(2.0, 3.5)),
    )
    return Scene(int(seed), lo, hi, face_materials, b.prims, b.materials, lighting, NoiseField(rng))


__all__ = ["Lighting", "Primitive", "Scene", "make_scene", "rot_xyz", "rot_z"]
