"""Vectorised numpy ray caster for ``Scene``: RGB (Lambert shading of procedural textures) and z-depth.

One primary ray per pixel through the pixel centre; the ray direction is ``R @ K^-1 [u, v, 1]`` (unnormalised, so
the ray parameter at a hit *is* the z-depth). Each primitive is only tested against the pixels inside the screen
box of its bounding sphere. No shadows, no anti-aliasing: depth is exact for the analytic surfaces.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from slam3r.data.synth.scene import Primitive, Scene

_EPS = 1e-4


def camera_rays(K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> np.ndarray:
    """World-frame ray directions (3, H, W) float32 (component-major) whose camera-frame z component is 1."""
    u = (np.arange(width, dtype=np.float32) - np.float32(K[0, 2])) / np.float32(K[0, 0])
    v = (np.arange(height, dtype=np.float32) - np.float32(K[1, 2])) / np.float32(K[1, 1])
    R = c2w[:3, :3].astype(np.float32)
    return R[:, 0, None, None] * u[None, None, :] + R[:, 1, None, None] * v[None, :, None] + R[:, 2, None, None]


def intersect_room(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance (M,) of rays (origin o (3,) inside the box, directions d (3, M)) from the box [lo, hi], and
    the face hit (M,) int8 as 2 * axis + (1 if the ray leaves through the ``hi`` side)."""
    t_best = np.full(d.shape[1], np.inf, dtype=np.float32)
    face = np.zeros(d.shape[1], dtype=np.int8)
    for k in range(3):
        pos = d[k] > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(pos, np.float32(hi[k] - o[k]), np.float32(lo[k] - o[k])) / d[k]
        better = (t < t_best) & (t >= 0)
        t_best = np.where(better, t, t_best)
        face = np.where(better, 2 * k + pos, face).astype(np.int8)
    return t_best, face


def intersect_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Entry distance (M,) of rays (local origin o (3,) outside, directions d (3, M)) into the box |x| <= half;
    inf for misses."""
    tn = np.full(d.shape[1], -np.inf, dtype=np.float32)
    tf = np.full(d.shape[1], np.inf, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / d[k]
            t1 = np.float32(-half[k] - o[k]) * inv
            t2 = np.float32(half[k] - o[k]) * inv
            np.maximum(tn, np.minimum(t1, t2), out=tn)
            np.minimum(tf, np.maximum(t1, t2), out=tf)
    return np.where((tn <= tf) & (tn > _EPS), tn, np.float32(np.inf))


def intersect_cylinder(o: np.ndarray, d: np.ndarray, radius: float, half_h: float) -> np.ndarray:
    """Entry distance (M,) into the capped cylinder x^2 + y^2 <= r^2, |z| <= half_h (local frame, directions
    d (3, M)); inf for misses."""
    o = o.astype(np.float32)
    a = d[0] * d[0] + d[1] * d[1]
    b = o[0] * d[0] + o[1] * d[1]
    c = o[0] ** 2 + o[1] ** 2 - np.float32(radius) ** 2
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        z = o[2] + t_side * d[2]
        t_side = np.where((disc >= 0) & (a > 0) & (np.abs(z) <= half_h) & (t_side > _EPS), t_side, np.inf)
        cap = np.float32(half_h if o[2] > 0 else -half_h)
        t_cap = (cap - o[2]) / d[2]
        x = o[0] + t_cap * d[0]
        y = o[1] + t_cap * d[1]
    t_cap = np.where((x * x + y * y <= np.float32(radius) ** 2) & (t_cap > _EPS), t_cap, np.inf)
    return np.minimum(t_side, t_cap).astype(np.float32)


def intersect_sphere(o: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    """Entry distance (M,) into the sphere |x| <= r centred at the local origin (directions d (3, M)); inf for
    misses."""
    o = o.astype(np.float32)
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
    c = float(o @ o) - radius**2
    disc = b * b - a * np.float32(c)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))


def intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray distances (M,) to ``prim`` for world rays with origin o (3,) and directions d (3, M); inf = miss."""
    o_l = (o - prim.center) @ prim.rot
    d_l = prim.rot.T.astype(np.float32) @ d
    if prim.kind == "box":
        return intersect_box(o_l, d_l, prim.size)
    if prim.kind == "cylinder":
        return intersect_cylinder(o_l, d_l, prim.size[0], prim.size[2])
    return intersect_sphere(o_l, d_l, prim.size[0])


def local_normals(prim: Primitive, p_l: np.ndarray) -> np.ndarray:
    """Outward unit normals (M, 3) in the local frame at local surface points p_l (M, 3)."""
    if prim.kind == "sphere":
        return p_l / np.linalg.norm(p_l, axis=1, keepdims=True)
    if prim.kind == "box":
        rel = np.abs(p_l) / prim.size
        axis = np.argmax(rel, axis=1)
        n = np.zeros_like(p_l)
        n[np.arange(len(p_l)), axis] = np.sign(p_l[np.arange(len(p_l)), axis])
        return n
    r, hh = prim.size[0], prim.size[2]
    radial = np.hypot(p_l[:, 0], p_l[:, 1])
    on_cap = np.abs(p_l[:, 2]) / hh > radial / r
    n = np.zeros_like(p_l)
    n[:, 0] = np.where(on_cap, 0.0, p_l[:, 0] / np.maximum(radial, 1e-9))
    n[:, 1] = np.where(on_cap, 0.0, p_l[:, 1] / np.maximum(radial, 1e-9))
    n[:, 2] = np.where(on_cap, np.sign(p_l[:, 2]), 0.0)
    return n


_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)


def screen_box(prim: Primitive, c2w: np.ndarray, K: np.ndarray, width: int, height: int
               ) -> tuple[int, int, int, int] | None:
    """Pixel window (v0, v1, u0, u1) containing the projection of ``prim``'s local bounding box, or None when it is
    entirely behind the camera or off-screen. (Projection of a box in front of the camera lies in the hull of its
    projected corners.)"""
    half = prim.size if prim.kind == "box" else prim.size[[0, 0, 2]] if prim.kind == "cylinder" else prim.size
    corners = ((prim.center + (_CORNERS * half) @ prim.rot.T) - c2w[:3, 3]) @ c2w[:3, :3]
    z = corners[:, 2]
    if z.max() <= 0:
        return None
    if z.min() <= 1e-3:
        return 0, height, 0, width
    u = K[0, 0] * corners[:, 0] / z + K[0, 2]
    v = K[1, 1] * corners[:, 1] / z + K[1, 2]
    u0, u1 = max(0, int(np.floor(u.min()))), min(width, int(np.ceil(u.max())) + 1)
    v0, v1 = max(0, int(np.floor(v.min()))), min(height, int(np.ceil(v.max())) + 1)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def shade(scene: Scene, p: np.ndarray, n: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Linear radiance (M, 3): albedo * (ambient + Lambert directional + Lambert point lights with falloff)."""
    L = scene.lighting
    light = L.ambient + L.sun_intensity * np.maximum(n @ L.sun_dir.astype(np.float32), 0.0)
    for pos, inten in zip(L.point_pos, L.point_intensity):
        v = pos.astype(np.float32) - p
        dist = np.linalg.norm(v, axis=1)
        ndl = np.maximum(np.einsum("ij,ij->i", n, v) / np.maximum(dist, 1e-6), 0.0)
        light = light + inten * ndl / (1.0 + (dist / L.falloff) ** 2)
    return albedo * light[:, None]


def render(scene: Scene, c2w: np.ndarray, K: np.ndarray, width: int, height: int, threads: int = 1
           ) -> tuple[np.ndarray, np.ndarray]:
    """Render one view of ``scene``.

    Args:
        c2w: camera-to-world pose (4, 4), OpenCV axes (x right, y down, z forward); the camera must be inside the
            room.
        K: intrinsics (3, 3) in pixels for a (width x height) image.
        threads: render this many horizontal bands concurrently (numpy releases the GIL in its kernels).
    Returns:
        rgb (H, W, 3) uint8 (sRGB) and z-depth (H, W) float32 in metres (0 where nothing is hit).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    threads = max(1, min(int(threads), height))
    if threads == 1:
        return _render_band(scene, c2w, K, width, height)
    # A band of rows [r0, r1) is an image of height r1 - r0 whose principal point is shifted up by r0.
    edges = np.linspace(0, height, threads + 1).astype(int)
    bands = []
    for r0, r1 in zip(edges[:-1], edges[1:]):
        Kb = K.copy()
        Kb[1, 2] -= r0
        bands.append((Kb, int(r1 - r0)))
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda b: _render_band(scene, c2w, b[0], width, b[1]), bands))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _render_band(scene: Scene, c2w: np.ndarray, K: np.ndarray, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``render`` on one thread."""
    o = c2w[:3, 3]
    rays = camera_rays(K, c2w, width, height)
    flat = rays.reshape(3, -1)
    t_room, face = intersect_room(o, flat, scene.lo, scene.hi)
    t_best = t_room.reshape(height, width)
    ids = face.astype(np.int32).reshape(height, width)
    for i, prim in enumerate(scene.primitives):
        box = screen_box(prim, c2w, K, width, height)
        if box is None:
            continue
        v0, v1, u0, u1 = box
        t = intersect(prim, o, rays[:, v0:v1, u0:u1].reshape(3, -1)).reshape(v1 - v0, u1 - u0)
        tb, ib = t_best[v0:v1, u0:u1], ids[v0:v1, u0:u1]
        closer = t < tb
        tb[closer] = t[closer]
        ib[closer] = 6 + i

    t_flat = t_best.reshape(-1)
    id_flat = ids.reshape(-1)
    hit = np.isfinite(t_flat)
    radiance = np.zeros((t_flat.size, 3), dtype=np.float32)
    order = np.argsort(id_flat, kind="stable")
    bounds = np.searchsorted(id_flat[order], np.arange(6 + len(scene.primitives) + 1))
    for k in range(6 + len(scene.primitives)):
        sel = order[bounds[k]:bounds[k + 1]]
        sel = sel[hit[sel]]
        if sel.size == 0:
            continue
        p = (o + t_flat[sel, None] * flat[:, sel].T).astype(np.float32)
        if k < 6:
            n = np.zeros((sel.size, 3), dtype=np.float32)
            n[:, k // 2] = -1.0 if k % 2 else 1.0  # room normals point inwards
            mat, p_tex = scene.materials[scene.face_materials[k]], p
        else:
            prim = scene.primitives[k - 6]
            p_tex = prim.to_local(p).astype(np.float32)
            n = (local_normals(prim, p_tex) @ prim.rot.T).astype(np.float32)
            mat = scene.materials[prim.material]
        radiance[sel] = shade(scene, p, n, mat.albedo(p_tex, scene.noise))

    rgb = (np.clip(radiance, 0.0, 1.0) ** (1 / 2.2) * 255.0 + 0.5).astype(np.uint8).reshape(height, width, 3)
    depth = np.where(hit, t_flat, 0.0).astype(np.float32).reshape(height, width)
    return rgb, depth
