"""``stream_pipeline``: registration on a background thread while the caller runs the next frames' networks. It
changes where and when the work runs, never the reconstruction."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from slam3r.recon import streaming
from slam3r.config import ConfigError
from slam3r.recon.config import ReconConfig
from slam3r.recon.streaming import StreamingReconstructor, pipeline_enabled
from tests.test_recon_oracle import OracleI2P, OracleL2W, check, scene  # noqa: F401 - fixture
from tests.test_recon_registration import CountingL2W, slow_scene  # noqa: F401 - fixture

BASE = dict(keyframe_stride=2, win_r=2, num_scene_frame=3, buffer_size=6)


def stream(i2p, l2w, frames, cfg: ReconConfig) -> tuple[list, list[list[int]], set[str]]:
    """Results, the frame ids each push / flush returned, and the threads that registered batches."""
    rec = StreamingReconstructor(i2p, l2w, cfg)
    engine = rec._engine(frames[0].shape)
    threads: set[str] = set()
    register = engine.register_steps

    def spy(batches):
        threads.add(threading.current_thread().name)
        return (yield from register(batches))

    engine.register_steps = spy
    results, returned = [], []
    with torch.no_grad():
        for im in frames:
            results += rec.push(im)
            returned.append([r.frame_id for r in results[sum(map(len, returned)):]])
        results += rec.flush()
        returned.append([r.frame_id for r in results[sum(map(len, returned)):]])
    assert [r.frame_id for r in results] == list(range(len(frames)))
    return results, returned, threads


@pytest.mark.parametrize("registration", ["l2w", "flow", "geometric"])
def test_pipelined_streaming_gives_the_same_reconstruction_one_push_later(slow_scene, registration):  # noqa: F811
    scene = slow_scene
    runs = {}
    for pipelined in (False, True):
        cfg = ReconConfig(**BASE, registration=registration, stream_pipeline=pipelined)
        runs[pipelined] = stream(OracleI2P(scene), OracleL2W(scene), list(scene.rgb), cfg)
    (seq, seq_returned, seq_threads), (pip, pip_returned, pip_threads) = runs[False], runs[True]
    assert seq_threads == {threading.main_thread().name}
    assert any(name.startswith("slam3r-register") for name in pip_threads)
    for a, b in zip(seq, pip, strict=True):
        assert a.frame_id == b.frame_id and a.is_keyframe == b.is_keyframe
        np.testing.assert_array_equal(a.pts3d_world, b.pts3d_world)
        np.testing.assert_array_equal(a.pose_c2w, b.pose_c2w)
        np.testing.assert_array_equal(a.conf, b.conf)
    # after initialisation a pipelined push returns what the previous push's registration finished
    first = next(i for i, ids in enumerate(seq_returned) if ids)
    assert pip_returned[:first + 1] == seq_returned[:first + 1]
    later = seq_returned[first + 1:-1]
    assert pip_returned[first + 1] == [] and pip_returned[first + 2:-1] == later[:-1]
    assert pip_returned[-1] == later[-1] + seq_returned[-1]


def test_pipelined_oracle_reconstruction_is_exact(scene):  # noqa: F811
    results, _, threads = stream(OracleI2P(scene), OracleL2W(scene), list(scene.rgb),
                                 ReconConfig(keyframe_stride=2, win_r=3, num_scene_frame=4, buffer_size=6,
                                             stream_pipeline=True))
    check(results, scene)
    assert any(name.startswith("slam3r-register") for name in threads)


def test_registration_thread_errors_reach_the_caller(slow_scene):  # noqa: F811
    """An exception in the registration thread is raised by the next push, not lost."""
    scene = slow_scene
    l2w = CountingL2W(scene)
    rec = StreamingReconstructor(OracleI2P(scene), l2w, ReconConfig(**BASE, stream_pipeline=True))
    with torch.no_grad():
        for im in scene.rgb[:20]:
            rec.push(im)
        assert rec.engine.registering
        rec.engine._retrieve = lambda ids: (_ for _ in ()).throw(RuntimeError("retrieval broke"))
        with pytest.raises(RuntimeError, match="retrieval broke"):
            for im in scene.rgb[20:]:
                rec.push(im)
            rec.flush()


def test_pipeline_is_on_where_a_core_is_free(monkeypatch):
    monkeypatch.setattr(streaming, "usable_cores", lambda: 2)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(streaming.torch, "get_num_threads", lambda: 1)
    assert pipeline_enabled(ReconConfig(), cpu) and not pipeline_enabled(ReconConfig(stream_pipeline=False), cpu)
    monkeypatch.setattr(streaming.torch, "get_num_threads", lambda: 2)
    assert not pipeline_enabled(ReconConfig(), cpu) and pipeline_enabled(ReconConfig(stream_pipeline=True), cpu)
    assert pipeline_enabled(ReconConfig(), cuda) and not pipeline_enabled(ReconConfig(loop_closure=True), cuda)
    with pytest.raises(ConfigError, match="stream_pipeline cannot be combined with loop_closure"):
        ReconConfig(stream_pipeline=True, loop_closure=True).validate()


def test_the_service_publishes_without_pipelining_unless_asked(tmp_path):
    """The service hands every frame on as soon as it is registered, so its settings turn the pipeline's auto
    off; a config file may still ask for it."""
    from slam3r.service.config import load_config

    assert load_config(None, env={}).recon.stream_pipeline is False
    path = tmp_path / "serve.yaml"
    path.write_text("recon:\n  stream_pipeline: true\n")
    assert load_config(path, env={}).recon.stream_pipeline is True


def test_cores_are_those_the_process_may_run_on(monkeypatch, tmp_path):
    """A container pinned to 2 of a host's 64 cores runs the networks on 2 threads, not 64, and the streaming
    pipeline counts those 2."""
    import os

    from slam3r import system
    from slam3r.models.loading import configure_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 7}, raising=False)
    monkeypatch.setattr(system, "CGROUP", tmp_path / "none")  # no quota, whatever the machine running the test has
    assert system.usable_cores() == 2
    before = torch.get_num_threads()
    try:
        assert configure_threads(torch.device("cpu")) == 2
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(streaming.torch, "get_num_threads", lambda: 2)
    assert not pipeline_enabled(ReconConfig(), torch.device("cpu"))
