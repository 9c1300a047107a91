"""Several streams' network calls batched into one forward (``recon.batching``) give the results of the streams run
one by one, with fewer network calls; a failing stream does not take the others down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slam3r.recon.batching import NetCall, drive_many, execute
from slam3r.recon.config import ReconConfig
from slam3r.recon.streaming import StreamingReconstructor

CFG = ReconConfig(keyframe_stride=2, win_r=2, initial_winsize=3, num_scene_frame=3, buffer_size=6,
                  max_num_register=2)


def _stream(seed: int, n: int) -> list[np.ndarray]:
    """A camera panning over a random texture (64 x 80 frames)."""
    texture = np.random.default_rng(seed).integers(0, 255, (64, 80 + 3 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(texture[:, 3 * i: 3 * i + 80]) for i in range(n)]


def _count_calls(monkeypatch, net, name: str) -> list[int]:
    """Record the batch size of every call of ``net.name`` (views first: batch = dim 1 of the first tensor)."""
    sizes: list[int] = []
    original = getattr(net, name)

    def counted(*args, **kwargs):
        first = args[0] if isinstance(args[0], torch.Tensor) else args[0].attended
        sizes.append(first.shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(net, name, counted)
    return sizes


def test_batched_streams_equal_one_by_one(tiny_models, monkeypatch):
    i2p, l2w = tiny_models
    streams = [_stream(seed, 12) for seed in (1, 2, 3)]
    ticks = [(0, 3), (3, 7), (7, 8), (8, 12)]        # frames pushed per batch of the service
    calls = {net: _count_calls(monkeypatch, net, name) for net, name in ((i2p, "forward_features"),
                                                                          (l2w, "register"))}
    alone = [StreamingReconstructor(i2p, l2w, CFG) for _ in streams]
    expected = [[r for a, b in ticks for r in rec.push_many(s[a:b])] + rec.flush() for rec, s in zip(alone, streams)]
    calls_alone = {net: list(sizes) for net, sizes in calls.items()}
    for sizes in calls.values():
        sizes.clear()
    together = [StreamingReconstructor(i2p, l2w, CFG) for _ in streams]
    got: list[list] = [[] for _ in streams]
    for a, b in ticks:
        for out, (results, error) in zip(got, drive_many([rec.push_steps(s[a:b]) for rec, s in
                                                          zip(together, streams)])):
            assert error is None
            out += results
    for out, rec in zip(got, together):
        out += rec.flush()
    for exp, res in zip(expected, got):
        assert [r.frame_id for r in res] == [r.frame_id for r in exp] and len(res) >= 8
        for r, e in zip(res, exp):
            np.testing.assert_allclose(r.pts3d_world, e.pts3d_world, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(r.conf, e.conf, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(r.pose_c2w, e.pose_c2w, rtol=1e-5, atol=1e-5)
    for net, sizes in calls.items():  # the same windows in fewer, larger forwards (the streams are in lockstep)
        assert sum(sizes) == sum(calls_alone[net]) and len(sizes) < len(calls_alone[net]) and max(sizes) >= 3


def test_a_failing_stream_leaves_the_others(tiny_models):
    i2p, l2w = tiny_models
    good = StreamingReconstructor(i2p, l2w, CFG)
    bad = StreamingReconstructor(i2p, l2w, CFG)
    frames = _stream(4, 8)
    (res_good, err_good), (res_bad, err_bad) = drive_many([good.push_steps(frames),
                                                           bad.push_steps([frames[0][:, :, :2]])])
    assert err_good is None and len(res_good) >= 4
    assert res_bad is None and isinstance(err_bad, ValueError)


def test_batched_call_failing_reaches_only_its_caller():
    def fn(x):
        if (x < 0).any():
            raise ValueError("negative input")
        return x * 2

    calls = [NetCall(fn, (torch.full((1, 2), v),), {}, torch.device("cpu"), "fp32", dim=0) for v in (1.0, -1.0)]

    def step(call):
        return (yield call)

    (ok, none), (missing, err) = drive_many([step(c) for c in calls])
    torch.testing.assert_close(ok, torch.full((1, 2), 2.0))
    assert none is None and missing is None and isinstance(err, ValueError)
    with pytest.raises(ValueError):
        execute(calls)


def test_service_batched_streams_publish_the_same_poses(tiny_models):
    """The worker with ``batch_streams`` on and off: the same poses for two interleaved streams (no broker)."""
    import dataclasses

    from slam3r.service.config import ServiceConfig
    from slam3r.service.publish import encode_jpeg
    from slam3r.service.testing import NullLink
    from slam3r.service.worker import Service

    i2p, l2w = tiny_models
    bodies = {k: [encode_jpeg(f) for f in _stream(seed, 8)] for k, seed in (("a", 5), ("b", 6))}
    poses = {}
    for batched in (True, False):
        cfg = dataclasses.replace(ServiceConfig(encoding="json", decode_min_side=0), batch_streams=batched)
        link = NullLink()
        svc = Service(cfg, lambda: StreamingReconstructor(i2p, l2w, dataclasses.replace(CFG, stream_pipeline=False)),
                      net_size=64, conf_thres_l2w=1.0, link=link)  # as the service's settings resolve it
        order = [(k, i) for i in range(8) for k in bodies]
        deliveries = [link.delivery(bodies[k][i], {"timestamp_ns": 100 + i, "stream_id": k}) for k, i in order]
        for i in range(0, len(deliveries), cfg.batch_size):
            svc.handle(deliveries[i:i + cfg.batch_size])
        poses[batched] = link.messages(cfg.name(cfg.pose_exchange))
    assert len(poses[True]) == len(poses[False]) >= 8
    for got, exp in zip(poses[True], poses[False]):
        assert (got["stream_id"], got["timestamp_ns"]) == (exp["stream_id"], exp["timestamp_ns"])
        np.testing.assert_allclose(np.asarray(got["raw_pose_matrix"], float),
                                   np.asarray(exp["raw_pose_matrix"], float), atol=1e-5)
