"""Background Poisson meshing: correctness, coalescing, segment files, and mesh messages from the service."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open3d")

from service_helpers import FakeEngine, Harness, needs_broker, run_in_thread, textured_frames  # noqa: E402
from slam3r.service.mesher import MeshParams, Mesher  # noqa: E402
from slam3r.service.publish import FramePublisher  # noqa: E402
from slam3r.service.worker import Service  # noqa: E402


def sphere(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = np.random.default_rng(seed).normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d.astype(np.float32), np.where(d[:, :1] > 0, [255, 0, 0], [0, 0, 255]).astype(np.uint8)


def test_poisson_in_a_process_coalesces_live_jobs_and_saves(tmp_path):
    import open3d as o3d

    xyz, rgb = sphere(8000)
    mesher = Mesher(MeshParams(depth=6, normal_radius=0.15), max_points=5000)
    mesher.start()
    try:
        cams = np.zeros((1, 3))
        assert mesher.submit(mesher.snapshot("s", xyz, rgb, cams, keyframe_id=1))
        assert mesher.busy
        assert mesher.submit(mesher.snapshot("s", xyz, rgb, cams, keyframe_id=2))        # waits
        assert not mesher.submit(mesher.snapshot("s", xyz, rgb, cams, keyframe_id=3))    # replaces 2
        path = tmp_path / "mesh.ply"
        assert mesher.submit(mesher.snapshot("s", xyz, rgb, cams, keyframe_id=4, save_path=str(path)))
        results = []
        deadline = time.monotonic() + 120
        while len(results) < 3 and time.monotonic() < deadline:
            results += mesher.poll(timeout=0.5)
        assert [r.keyframe_id for r in results] == [1, 4, 3]           # saves go first, 2 was coalesced away
        assert mesher.coalesced == 1 and mesher.pending() == 0
        for r in results:
            assert r.error is None and len(r.faces) >= 500
            radius = np.linalg.norm(r.vertices, axis=1)
            assert np.abs(radius - 1).max() < 0.1                       # on the sphere
            left = r.vertices[:, 0] < -0.2                              # colour from the nearest input point
            assert (r.colors[left] == [0, 0, 255]).all() and (r.colors[r.vertices[:, 0] > 0.2] == [255, 0, 0]).all()
        mesh = o3d.io.read_triangle_mesh(str(path))
        assert len(mesh.triangles) == len(results[1].faces) and mesh.has_vertex_colors()
    finally:
        mesher.close(timeout=10)


@needs_broker
def test_service_publishes_meshes_without_blocking_frames(tmp_path):
    h = Harness()
    try:
        cfg = dataclasses.replace(h.cfg, enable_mesh=True, mesh_update_frequency=5, mesh_min_new_voxels=1,
                                  mesh_depth=6, save_segments=True, segment_output_dir=str(tmp_path))
        svc = Service(cfg, FakeEngine, net_size=64, conf_thres_l2w=12.0)
        thread, code = run_in_thread(svc)
        assert svc.link.connected.wait(10)
        with FramePublisher(cfg.rabbitmq_url, cfg.name(cfg.frames_exchange)) as pub:
            for i, rgb in enumerate(textured_frames(30)):
                pub.frame(rgb, 100 + i, "m")
        h.wait_for(lambda: len(h.received["pose"]) >= 25, 30, "poses")
        h.wait_for(lambda: any(m["type"] == "mesh" for m in h.received["vis"]), 90, "a mesh message")
        mesh = next(m for m in h.received["vis"] if m["type"] == "mesh")
        assert len(mesh["faces"]) > 0 and np.asarray(mesh["vertices"]).shape[1] == 3
        assert len(mesh["vertex_colors"]) == len(mesh["vertices"]) and mesh["keyframe_id"] >= 0
        svc.stop()
        thread.join(120)
        assert code == [0]
        h.collect()
        end = next(m for m in h.received["vis"] if m.get("event") == "end")     # shutdown finished the segment
        assert end["frames"] == 30
        assert Path(end["files"]["mesh"]).stat().st_size > 0            # written by the mesher before exit
    finally:
        h.close()
