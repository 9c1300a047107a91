"""FLOP counting that includes CPU attention (no slam3r import: the official code's subprocess uses it too).

torch's ``FlopCounterMode`` has no formula for ``aten._scaled_dot_product_flash_attention_for_cpu`` and counts 0
for it, so attention done through SDPA on a CPU would be missing; :func:`count_gflop` adds it: ``2*B*H*Lq*Lk*D``
for ``Q K^T`` plus ``2*B*H*Lq*Lk*Dv`` for ``A V`` (the same formula torch uses for the CUDA kernels). Nor has it one
for ``mkldnn._linear_pointwise``, the oneDNN product slam3r's linear layers use on CPUs where it is faster
(``slam3r.models.blocks.onednn_linear``): without it a released-size encoder call counted 45 GFLOP instead of 1347.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    *batch, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * lq * lk * (d + dv)


def _linear_pointwise_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """``x`` ``(..., K)`` times ``weight.T`` for ``weight`` ``(N, K)``; the fused bias / activation not counted,
    as for ``aten.addmm``."""
    return 2 * math.prod(x_shape) * w_shape[0]


def _custom_mapping() -> dict:
    ops = {getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None): _sdpa_flops,
           getattr(torch.ops.mkldnn, "_linear_pointwise", None): _linear_pointwise_flops}
    return {op: f for op, f in ops.items() if op is not None}


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call of ``fn`` (matmuls, convolutions and attention, CPU SDPA included)."""
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        fn()
    return counter.get_total_flops() / 1e9
