"""Precision selection (``--precision auto``) and the networks' behaviour under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from slam3r.models import precision
from slam3r.models.precision import autocast, autocast_dtype, cpu_has_fast_bf16

FAST = {"avx512_bf16": True, "amx_bf16": False}
AMX = {"avx512_bf16": False, "amx_bf16": True}
PLAIN = {"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}


def test_cpu_flags_decide_auto(monkeypatch):
    monkeypatch.setattr(precision, "CPU_AUTO_BF16", True)
    assert cpu_has_fast_bf16(FAST) and cpu_has_fast_bf16(AMX) and not cpu_has_fast_bf16(PLAIN)
    assert autocast_dtype("cpu", "auto", capabilities=FAST) is torch.bfloat16
    assert autocast_dtype("cpu", "auto", capabilities=AMX) is torch.bfloat16
    assert autocast_dtype("cpu", "auto", capabilities=PLAIN) is None
    for caps in (FAST, PLAIN):
        assert autocast_dtype("cpu", "fp32", capabilities=caps) is None
        assert autocast_dtype("cpu", "bf16", capabilities=caps) is torch.bfloat16
        assert autocast_dtype("cpu", "fp16", capabilities=caps) is torch.float16


def test_auto_off_switch_and_bad_names(monkeypatch):
    monkeypatch.setattr(precision, "CPU_AUTO_BF16", False)
    assert autocast_dtype("cpu", "auto", capabilities=FAST) is None
    with pytest.raises(ValueError, match="precision 'half'"):
        autocast_dtype("cpu", "half")


def test_this_machine_detection_matches_proc_cpuinfo():
    flags = precision._cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    assert cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_fp32_is_exact_and_bf16_keeps_sensitive_parts_fp32(tiny_models):
    i2p, l2w = tiny_models
    h, w = i2p.cfg.img_size
    g = torch.Generator().manual_seed(3)
    imgs = torch.rand(4, 3, h, w, generator=g) * 2 - 1
    with torch.no_grad():
        ref_tok = i2p.encode(imgs)
        with autocast("cpu", "fp32"):
            assert torch.equal(i2p.encode(imgs), ref_tok)
        ref = i2p(ref_tok[:, None], 1)
        pts = torch.randn(4, 1, h, w, 3, generator=g)
        ref_l2w = l2w(ref_tok[:, None], pts, [0, 1])
        with autocast("cpu", "bf16"):
            tok = i2p.encode(imgs)
            out = i2p(ref_tok[:, None], 1)
            out_l2w = l2w(ref_tok[:, None], pts, [0, 1])
            pe = l2w.embed_points(pts)
    # the residual stream, point embedding and heads stay fp32; only matmuls were rounded
    assert tok.dtype == out.pts3d.dtype == out.conf.dtype == pe.dtype == torch.float32
    assert not torch.equal(tok, ref_tok)
    rel = ((tok - ref_tok).norm(dim=-1) / ref_tok.norm(dim=-1)).median()
    assert rel < 0.02
    for a, b in ((out, ref), (out_l2w, ref_l2w)):
        err = (a.pts3d - b.pts3d).norm(dim=-1).median() / b.pts3d.norm(dim=-1).median()
        assert 0 < err < 0.05


def test_auto_keeps_fp32_for_narrow_networks_on_cpu(monkeypatch):
    monkeypatch.setattr(precision, "CPU_AUTO_BF16", True)
    wide, narrow = precision.CPU_BF16_MIN_WIDTH, precision.CPU_BF16_MIN_WIDTH - 1
    assert autocast_dtype("cpu", "auto", capabilities=AMX, width=wide) is torch.bfloat16
    assert autocast_dtype("cpu", "auto", capabilities=AMX, width=narrow) is None
    assert autocast_dtype("cpu", "bf16", capabilities=PLAIN, width=narrow) is torch.bfloat16  # forced stays forced
    assert precision.resolve("cpu", "fp32", width=wide) == "fp32"
