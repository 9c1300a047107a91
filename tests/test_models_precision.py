"""Precision selection (``--precision auto``) and the networks' behaviour under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slam3r.models import blocks, precision
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_reduced_precision_attention_matches_sdpa(monkeypatch, dtype):
    """The chunked matmul-softmax path (inference, CPU autocast) computes SDPA: several chunks, a ragged last one,
    queries longer than keys; with grad enabled it is SDPA itself."""
    monkeypatch.setattr(blocks, "CPU_ATTENTION_CHUNK_BYTES", 5 * 30 * 20 * 2)  # 5 heads per chunk, 3 chunks for 14
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, n, 16, generator=g) for n in (30, 20, 20))
    exact = F.scaled_dot_product_attention(*(t.to(dtype).float() for t in (q, k, v)))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = blocks.attention(q, k, v)
    assert out.dtype == dtype and out.shape == exact.shape
    assert (out.float() - exact).abs().max() < 0.02 * exact.abs().max()
    with torch.autocast("cpu", dtype=dtype):
        assert torch.equal(blocks.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    with torch.no_grad():
        assert torch.equal(blocks.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_linear_keeps_a_bit_identical_low_precision_copy_until_the_weight_changes(monkeypatch):
    monkeypatch.setattr(blocks, "cpu_onednn_linear", lambda dtype: False)  # the copy, not the kernel, is under test
    torch.manual_seed(0)
    lin, ref = blocks.Linear(24, 40), torch.nn.Linear(24, 40)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(5, 24)
    with torch.no_grad():
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(lin(x), ref(x))
        assert lin._lowp is not None and set(lin.state_dict()) == {"weight", "bias"}
        first = lin._lowp[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lin(x)
        assert lin._lowp[1] is first  # reused, not recast
        for change in (lambda: lin.weight.add_(1.0), lambda: lin.load_state_dict(ref.state_dict())):
            change()
            ref.load_state_dict(lin.state_dict())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(lin(x), ref(x))
        assert torch.equal(lin(x), ref(x))  # no autocast: plain fp32
        blocks.drop_low_precision_copies(torch.nn.Sequential(lin))
        assert lin._lowp is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(lin(x), ref(x)) and lin._lowp is not None
    lin.to(torch.float64)
    assert lin._lowp is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # grad enabled: plain autocast, nothing cached
        lin.float()(x).sum().backward()
    assert lin._lowp is None and lin.weight.grad is not None


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_computes_linear_and_fused_gelu(monkeypatch, bias):
    """The oneDNN path (picked where it times faster) gives F.linear's numbers, with and without the fused exact
    GELU, in fp32 and (where this CPU's oneDNN has bf16) bf16-autocast inference, on batched and non-contiguous
    inputs; grad keeps F.linear."""
    torch.manual_seed(0)
    lin = blocks.Linear(48, 80, bias=bias)
    x = torch.randn(3, 7, 96)[..., ::2]  # non-contiguous (3, 7, 48)
    exact = F.linear(x.double(), lin.weight.double(), None if lin.bias is None else lin.bias.double())
    monkeypatch.setenv("SLAM3R_ONEDNN_LINEAR", "1")
    monkeypatch.setattr(blocks, "ONEDNN_MIN_WEIGHTS", 0)
    blocks.cpu_onednn_linear.cache_clear()
    assert blocks.cpu_onednn_linear(torch.float32)
    with torch.no_grad():
        for gelu in (False, True):
            want = F.gelu(exact) if gelu else exact
            out = lin(x, gelu=gelu)
            assert out.dtype == torch.float32 and out.shape == want.shape
            assert (out.double() - want).abs().max() < 1e-5 * want.abs().max()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = lin(x, gelu=gelu)
            assert low.dtype == torch.bfloat16 and (low.double() - want).abs().max() < 0.03 * want.abs().max()
    y = lin(x, gelu=True)
    assert torch.equal(y, F.gelu(F.linear(x, lin.weight, lin.bias)))
    y.sum().backward()
    assert lin.weight.grad is not None
    blocks.cpu_onednn_linear.cache_clear()


@needs_onednn
def test_only_layers_of_onednn_size_take_it(monkeypatch):
    """Where oneDNN is chosen, layers below ``ONEDNN_MIN_WEIGHTS`` weights (the bundled model's) keep F.linear."""
    calls = []
    real = blocks.onednn_linear
    monkeypatch.setattr(blocks, "onednn_linear", lambda *a: calls.append(a[1].shape) or real(*a))
    monkeypatch.setenv("SLAM3R_ONEDNN_LINEAR", "1")
    blocks.cpu_onednn_linear.cache_clear()
    assert blocks.cpu_onednn_linear(torch.float32)
    calls.clear()  # the probe's own products
    with torch.no_grad():
        blocks.Linear(160, 640)(torch.randn(2, 49, 160), gelu=True)
        assert calls == []
        blocks.Linear(512, 512)(torch.randn(2, 49, 512))
    assert calls == [torch.Size([512, 512])]
    blocks.cpu_onednn_linear.cache_clear()


@needs_onednn
def test_reduced_precision_takes_onednn_wherever_it_runs(monkeypatch):
    """bf16 is not timed: oneDNN is taken exactly when its bf16 product runs on this CPU (the fused GELU is the only
    difference from F.linear there), so the choice cannot flip between processes."""
    monkeypatch.delenv("SLAM3R_ONEDNN_LINEAR", raising=False)
    try:
        blocks.onednn_linear(torch.ones(2, 4, dtype=torch.bfloat16), torch.ones(3, 4, dtype=torch.bfloat16), None,
                             "none")
        runs = True
    except RuntimeError:
        runs = False
    timed = []

    def fake_best_seconds(fn, repeat=3):
        fn()
        timed.append(repeat)
        return 1.0

    monkeypatch.setattr(blocks, "_best_seconds", fake_best_seconds)
    blocks.cpu_onednn_linear.cache_clear()
    assert blocks.cpu_onednn_linear(torch.bfloat16) is runs
    assert timed == []  # decided by a trial call, not by timing
    blocks.cpu_onednn_linear.cache_clear()


@needs_onednn
def test_onednn_choice_can_be_forced_by_environment(monkeypatch):
    for value, want in (("0", False), ("1", True)):
        monkeypatch.setenv("SLAM3R_ONEDNN_LINEAR", value)
        blocks.cpu_onednn_linear.cache_clear()
        assert blocks.cpu_onednn_linear(torch.float32) is want
    monkeypatch.delenv("SLAM3R_ONEDNN_LINEAR")
    blocks.cpu_onednn_linear.cache_clear()
    assert isinstance(blocks.cpu_onednn_linear(torch.float32), bool)  # timed on this machine
    monkeypatch.setattr(blocks, "onednn_linear", lambda *a: (_ for _ in ()).throw(RuntimeError("no primitive")))
    blocks.cpu_onednn_linear.cache_clear()
    monkeypatch.setenv("SLAM3R_ONEDNN_LINEAR", "1")
    assert blocks.cpu_onednn_linear(torch.bfloat16) is False  # forced, but the op fails for it: F.linear stays
    blocks.cpu_onednn_linear.cache_clear()
