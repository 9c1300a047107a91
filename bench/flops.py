"""FLOP counting that includes CPU attention (no slam3r import: the official code's subprocess uses it too).

torch's ``FlopCounterMode`` has no formula for ``aten._scaled_dot_product_flash_attention_for_cpu`` and counts 0
for it, so attention done through SDPA on a CPU would be missing; :func:`count_gflop` adds it: ``2*B*H*Lq*Lk*D``
for ``Q K^T`` plus ``2*B*H*Lq*Lk*Dv`` for ``A V`` (the same formula torch uses for the CUDA kernels).
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


def _custom_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _sdpa_flops}


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call of ``fn`` (matmuls, convolutions and attention, CPU SDPA included)."""
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        fn()
    return counter.get_total_flops() / 1e9
