"""The benches' FLOP counter counts every product the networks run, whichever CPU kernel runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from flops import count_gflop  # noqa: E402

from slam3r.models import blocks  # noqa: E402


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_onednn_products_count_like_linear(act):
    x, w, b = torch.randn(2, 49, 96), torch.randn(160, 96), torch.randn(160)
    want = 2 * 2 * 49 * 96 * 160 / 1e9
    assert count_gflop(lambda: F.linear(x, w, b)) == pytest.approx(want)
    assert count_gflop(lambda: blocks.onednn_linear(x, w, b, act)) == pytest.approx(want)


def test_cpu_attention_is_counted():
    q, k, v = torch.randn(1, 2, 49, 16), torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 8)
    assert count_gflop(lambda: F.scaled_dot_product_attention(q, k, v)) == pytest.approx(2 * 2 * 49 * 30 * 24 / 1e9)
