"""The networks reproduce the reference implementation's outputs (tiny random weights, fixtures in shared/spec)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from slam3r.data.preprocess import resize_crop, to_tensor
from slam3r.models import Image2PointsModel, Local2WorldModel, TINY, preset
from slam3r.models.hub import load_weights
from slam3r.recon.engine import select_by_scores


@pytest.fixture(scope="module")
def nets(fixtures_dir):
    i2p = load_weights(Image2PointsModel(TINY), load_file(fixtures_dir / "tiny_i2p_weights.safetensors")).eval()
    l2w = load_weights(Local2WorldModel(preset("tiny", l2w=True)),
                       load_file(fixtures_dir / "tiny_l2w_weights.safetensors")).eval()
    return i2p, l2w


@pytest.fixture(scope="module")
def frames(fixtures_dir):
    return load_file(fixtures_dir / "tiny_frames_and_tokens.safetensors")


@pytest.fixture(params=[None, 1], ids=["chunks-default", "chunks-1-view"], autouse=True)
def chunking(request, monkeypatch):
    """Run every reference comparison twice: with the default work chunks, and one view / one memory per chunk
    (the split-and-max-combine path that large inputs take)."""
    from slam3r.models import blocks
    if request.param is not None:
        monkeypatch.setattr(blocks, "TOKENS_PER_CHUNK", request.param)


def close(a, b, tol):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@torch.no_grad()
def test_encoder_tokens(nets, frames):
    tokens = nets[0].encode(frames["img"][:, 0])
    close(tokens, frames["img_tokens_unnormed"][:, 0], 1e-5)


@torch.no_grad()
def test_i2p_window_token_and_image_paths(nets, frames, fixtures_dir):
    fx = load_file(fixtures_dir / "fixture_i2p_window.safetensors")
    ids = fx["window_frame_ids"]
    out = nets[0](frames["img_tokens_unnormed"][ids], ref_id=0)
    close(out.pts3d, fx["pts3d"], 1e-4)
    close(out.conf, fx["conf"], 1e-4)
    # image path: encode the raw window ourselves
    tokens = nets[0].encode(frames["img"][ids, 0])[:, None]
    out2 = nets[0](tokens, ref_id=0)
    close(out2.pts3d, fx["imgpath_pts3d"], 1e-4)
    close(out2.conf, fx["imgpath_conf"], 1e-4)
    ref = nets[0](frames["img_tokens_unnormed"][ids], ref_id=0, ref_only=True)
    close(ref.pts3d[0], fx["pts3d"][0], 1e-4)


@torch.no_grad()
def test_i2p_reference_at_any_position(nets, frames, fixtures_dir):
    fx = load_file(fixtures_dir / "fixture_i2p_window.safetensors")
    ids = fx["window_frame_ids"]
    for pos in (3, 10):
        order = list(range(1, 11))
        order.insert(pos, 0)  # the keyframe now sits at index `pos`
        out = nets[0](frames["img_tokens_unnormed"][ids[order]], ref_id=pos)
        close(out.pts3d, fx["pts3d"][order], 1e-4)
        close(out.conf, fx["conf"][order], 1e-4)
    with pytest.raises(ValueError, match="ref_id 11 outside"):
        nets[0](frames["img_tokens_unnormed"][ids], ref_id=11)


@torch.no_grad()
def test_retrieval_head(nets, frames, fixtures_dir):
    fx = load_file(fixtures_dir / "fixture_retrieval.safetensors")
    toks = frames["img_tokens_unnormed"][:, 0]
    scores = nets[0].corr_scores(toks[fx["src_frame_ids"]], toks[fx["cand_frame_ids"]])
    close(scores, fx["corr_scores"], 1e-5)
    sel = select_by_scores(scores, 5)
    assert sel == fx["sel_ids"].tolist()
    assert [int(fx["cand_frame_ids"][i]) for i in sel] == fx["sel_frame_ids"].tolist()


@torch.no_grad()
def test_pseudo_conf_logits(nets, frames, fixtures_dir):
    fx = load_file(fixtures_dir / "fixture_i2p_window.safetensors")
    toks = frames["img_tokens_unnormed"][fx["window_frame_ids"], 0]
    logits = nets[0].corr_logits(toks[:1], toks[1:])
    close(logits, fx["imgpath_pseudo_conf"], 1e-5)


@torch.no_grad()
def test_l2w_coregistration(nets, fixtures_dir):
    fx = load_file(fixtures_dir / "fixture_l2w.safetensors")
    num_ref = int(fx["num_ref"])
    out = nets[1](fx["in_img_tokens_unnormed"], fx["in_pts3d"], list(range(num_ref)))
    close(out.pts3d, fx["out_pts3d"], 1e-4)
    close(out.conf, fx["out_conf"], 1e-4)
    # references given in another position: same numbers for the same views
    perm = [5, 0, 6, 1, 2, 7, 3, 4]
    out2 = nets[1](fx["in_img_tokens_unnormed"][perm], fx["in_pts3d"][perm], [1, 3, 4, 6, 7])
    close(out2.pts3d, fx["out_pts3d"][perm], 1e-4)
    # the pipeline's fast path: only the keyframes, in input order
    src = nets[1](fx["in_img_tokens_unnormed"], fx["in_pts3d"], list(range(num_ref)), sources_only=True)
    close(src.pts3d, fx["out_pts3d"][num_ref:], 1e-4)
    close(src.conf, fx["out_conf"][num_ref:], 1e-4)


def test_preprocess_matches_reference(fixtures_dir):
    fx = load_file(fixtures_dir / "fixture_preprocess.safetensors")
    img = to_tensor(resize_crop(fx["src_rgb_uint8_HW3"].numpy(), 224))[None]
    close(img, fx["img"], 1e-6)
    assert tuple(fx["true_shape"][0].tolist()) == (224, 224)


def test_preprocess_enlarges_small_images():
    import numpy as np
    small = (np.arange(100 * 150 * 3) % 251).astype(np.uint8).reshape(100, 150, 3)
    out = resize_crop(small, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    x = to_tensor(out)
    assert x.shape == (3, 224, 224) and x.min() >= -1 and x.max() <= 1


@torch.no_grad()
def test_cross_attention_is_the_max_over_memories_of_plain_attention():
    """``CrossAttention.attend(x, *kv(y))`` against written-out softmax attention, one view / memory at a time."""
    from slam3r.models.blocks import CrossAttention
    from slam3r.models.rope import apply_rope, patch_positions, rope_tables

    torch.manual_seed(0)
    h, c = 4, 32
    ca = CrossAttention(c, h)
    rope = rope_tables(patch_positions(2, 3), c // h, 100.0)
    x, y = torch.randn(2, 3, 6, c), torch.randn(5, 3, 6, c)             # (V, B, N, C), (M, B, N, C)

    def heads(t):
        return t.view(*t.shape[:-1], h, c // h).transpose(-3, -2)          # (..., N, C) -> (..., h, N, d)

    expected = torch.empty_like(x)
    for i in range(2):
        q = apply_rope(heads(ca.projq(x[i])), *rope)
        outs = []
        for m in range(5):
            k, v = apply_rope(heads(ca.projk(y[m])), *rope), heads(ca.projv(y[m]))
            att = (q @ k.transpose(-2, -1) / (c // h) ** 0.5).softmax(-1) @ v
            outs.append(ca.proj(att.transpose(-3, -2).reshape(3, 6, c)))
        expected[i] = torch.stack(outs).amax(0)
    close(ca.attend(x, *ca.kv(y, rope), rope), expected, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_the_rotate_half_rotation_of_each_half(dtype):
    """``apply_rope`` (signed sine table, quarters swapped) against the textbook RoPE2D formula: per half,
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half([a, b]) = [-b, a]`` and the unsigned sine; also applied
    to queries and keys stacked in one tensor, as the self-attention does."""
    from slam3r.models.rope import apply_rope, patch_positions, rope_tables

    pos = patch_positions(3, 4)
    d, half = 16, 8
    x = torch.randn(2, 3, 5, len(pos), d).to(dtype)
    cos, sin_signed = rope_tables(pos, d, 100.0)
    inv = 1.0 / (100.0 ** (torch.arange(0, half, 2).float() / half))
    expected = []
    for axis, part in ((0, x[..., :half]), (1, x[..., half:])):
        ang = pos[:, axis, None].float() * inv
        c, s = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        a, b = part.float().chunk(2, dim=-1)
        expected.append(part.float() * c + torch.cat([-b, a], -1) * s)
    expected = torch.cat(expected, -1)
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(apply_rope(x, cos, sin_signed).float(), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(apply_rope(x[0], cos, sin_signed), apply_rope(x, cos, sin_signed)[0], atol=0, rtol=0)
