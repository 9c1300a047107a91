"""Optional torch.compile of the network blocks: same numbers as the reference, eager fallback without a toolchain."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from slam3r.models import Image2PointsModel, Local2WorldModel, TINY, preset
from slam3r.models.hub import load_weights
from slam3r.models.loading import compile_blocks


def _tiny(fixtures_dir):
    i2p = load_weights(Image2PointsModel(TINY), load_file(fixtures_dir / "tiny_i2p_weights.safetensors")).eval()
    l2w = load_weights(Local2WorldModel(preset("tiny", l2w=True)),
                       load_file(fixtures_dir / "tiny_l2w_weights.safetensors")).eval()
    return i2p, l2w


@pytest.mark.skipif(not shutil.which("g++"), reason="inductor needs a C++ compiler on CPU")
@torch.no_grad()
def test_compiled_blocks_reproduce_reference(fixtures_dir):
    i2p, l2w = _tiny(fixtures_dir)
    assert compile_blocks(i2p) and compile_blocks(l2w)
    assert i2p.enc_blocks[0]._compiled_call_impl is not None and l2w.mv_dec_blocks2[-1]._compiled_call_impl is not None
    wrapper = i2p.enc_blocks[0]._compiled_call_impl
    assert compile_blocks(i2p) and i2p.enc_blocks[0]._compiled_call_impl is wrapper  # a second engine: no re-wrap
    frames = load_file(fixtures_dir / "tiny_frames_and_tokens.safetensors")
    fx = load_file(fixtures_dir / "fixture_i2p_window.safetensors")
    tokens = i2p.encode(frames["img"][fx["window_frame_ids"], 0])[:, None]
    out = i2p(tokens, ref_id=0)
    torch.testing.assert_close(out.pts3d, fx["imgpath_pts3d"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.conf, fx["imgpath_conf"], atol=1e-4, rtol=1e-4)
    fl = load_file(fixtures_dir / "fixture_l2w.safetensors")
    reg = l2w(fl["in_img_tokens_unnormed"], fl["in_pts3d"], list(range(int(fl["num_ref"]))))
    torch.testing.assert_close(reg.pts3d, fl["out_pts3d"], atol=1e-4, rtol=1e-4)


def test_compile_without_toolchain_stays_eager(fixtures_dir, monkeypatch):
    i2p, _ = _tiny(fixtures_dir)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="needs a C\\+\\+ compiler"):
        assert not compile_blocks(i2p)
    assert i2p.enc_blocks[0]._compiled_call_impl is None
