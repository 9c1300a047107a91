"""Per-frame feature caching: the cached paths compute the same numbers as the plain forwards, and the engine with
its caches reproduces the engine without them."""

from __future__ import annotations

import numpy as np
import torch

from slam3r.models.base import ViewFeatures
from slam3r.recon.config import ReconConfig
from slam3r.recon.offline import run_offline


def _tokens(i2p, n, seed=0):
    h, w = i2p.cfg.img_size
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return i2p.encode(torch.rand(n, 3, h, w, generator=g) * 2 - 1)


def test_i2p_window_from_per_frame_features(tiny_models):
    i2p, _ = tiny_models
    tok = _tokens(i2p, 6)
    win = tok[[2, 0, 1, 3, 4]][:, None]
    with torch.no_grad():
        ref = i2p(win, 0, ref_only=True)
        per_frame = {i: (i2p.view_features(tok[i][None, None], "ref"), i2p.view_features(tok[i][None, None], "src"))
                     for i in range(6)}
        out = i2p.forward_features(per_frame[2][0], ViewFeatures.stack([per_frame[i][1] for i in (0, 1, 3, 4)]),
                                   ref_only=True)
        full_ref, full_src = i2p.forward_features(per_frame[2][0],
                                                  ViewFeatures.stack([per_frame[i][1] for i in (0, 1, 3, 4)]))
        full = i2p(win, 0)
    torch.testing.assert_close(out.pts3d, ref.pts3d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.conf, ref.conf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_src[0], full.pts3d[1:], rtol=1e-5, atol=1e-5)


def test_retrieval_with_cached_candidates(tiny_models):
    i2p, _ = tiny_models
    tok = _tokens(i2p, 7, seed=1)
    query, cand = tok[:2], tok[2:]
    with torch.no_grad():
        ref = i2p.corr_logits(query, cand)
        per_cand = ViewFeatures.stack([i2p.view_features(c[None, None], "src") for c in cand])  # (M, 1)
        out = i2p.corr_logits_features(i2p.view_features(query[None], "ref"), per_cand)
        per_batch = i2p.corr_logits(query, cand[:, None].expand(-1, 2, -1, -1))
    assert out.shape == (5, 2, tok.shape[1])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_batch, ref, rtol=1e-5, atol=1e-5)


def test_l2w_with_cached_scene_frames(tiny_models):
    i2p, l2w = tiny_models
    h, w = l2w.cfg.img_size
    tok = _tokens(i2p, 5, seed=2)[:, None]
    pts = torch.randn(5, 1, h, w, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = l2w(tok, pts, [0, 1, 2], sources_only=True)
        scene = ViewFeatures.stack([l2w.view_features(tok[i:i + 1], pts[i:i + 1], "scene") for i in range(3)])
        out = l2w.register(scene, l2w.view_features(tok[3:], pts[3:], "src"))
    torch.testing.assert_close(out.pts3d, ref.pts3d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.conf, ref.conf, rtol=1e-5, atol=1e-5)


def test_engine_caches_reproduce_the_plain_engine(tiny_models, monkeypatch):
    """Same run with and without the engine's per-frame caches (and the stride search's tokens handed over)."""
    from slam3r.data.synth import render_sequence
    from slam3r.recon import engine as engine_mod

    i2p, l2w = tiny_models
    frames = list(render_sequence(seed=1_000_007, num_frames=22, width=64, height=64).rgb)
    cfg = ReconConfig(keyframe_stride=-1, keyframe_adapt_max=2, win_r=2, initial_winsize=3, num_scene_frame=2,
                      buffer_size=4, update_buffer_intv=1, conf_thres_i2p=1.0, precision="fp32")
    runs = {}
    for cache in (True, False):
        original = engine_mod.Engine.__init__

        def init(self, *args, _cache=cache, **kwargs):
            original(self, *args, **kwargs)
            self.cache = _cache

        monkeypatch.setattr(engine_mod.Engine, "__init__", init)
        engine, it = run_offline(i2p, l2w, frames, cfg)
        runs[cache] = (list(it), engine)
        monkeypatch.setattr(engine_mod.Engine, "__init__", original)
    (cached, eng), (plain, _) = runs[True], runs[False]
    assert eng.cache and eng.timings.get("encode", 0.0) == 0.0  # every frame's tokens came from the stride search
    assert eng.timings.get("retrieval", 0.0) > 0  # retrieval ran, on cached candidate features
    assert sum(eng.frames[v].l2w_scene is not None for v in eng.buffer) >= cfg.num_scene_frame
    assert [r.frame_id for r in cached] == [r.frame_id for r in plain] == list(range(22))
    assert [r.is_keyframe for r in cached] == [r.is_keyframe for r in plain]
    for a, b in zip(cached, plain):
        np.testing.assert_allclose(a.pts3d_world, b.pts3d_world, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.conf, b.conf, rtol=1e-4, atol=1e-5)
