"""Transformer building blocks: ViT encoder block and the two-stream multi-view decoder block.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the device has them), except for reduced-precision inference on a CPU (:func:`attention`). Token tensors are
``(B, N, C)``; RoPE tables are ``(N, head_dim)``.
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slam3r.models.rope import apply_rope

Rope = tuple[Tensor, Tensor]


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> Tensor:
    """``act(x @ weight.T + bias)`` through oneDNN for ``x`` ``(..., K)``, ``weight`` ``(N, K)``, ``bias`` ``(N,)``
    or ``None``; ``act`` ``"none"`` or ``"gelu"`` (exact, fused). Raises ``RuntimeError`` where this CPU's oneDNN
    lacks the dtype."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [], "none" if act == "gelu" else "")


@functools.lru_cache(maxsize=None)
def cpu_onednn_linear(dtype: torch.dtype = torch.float32) -> bool:
    """Whether CPU inference in ``dtype`` runs linear layers through oneDNN (``torch.ops.mkldnn._linear_pointwise``,
    the op torch.compile uses on CPUs) rather than ``F.linear``, decided once per process and dtype.

    - bf16 / fp16: wherever this CPU's oneDNN runs the dtype (AVX-512 BF16 / AMX / AVX-512 FP16). ``F.linear``
      runs oneDNN's product there too, so the difference is the GELU fused into the product and no separate pass
      over the output: on a 2-core Intel Xeon with AMX (2026-12-03) released-size bf16 calls ran 6-11% faster
      (encoder, 11 frames: 1.33 -> 1.19-1.25 s; I2P window: 0.86 -> 0.78-0.84 s), L2W alike (1.04 / 1.07 s),
      while the ViT MLP below timed on its own there read 0.96-1.07x, so timing would only add noise to the
      choice; on a Zen 4 (AVX-512 BF16, no AMX) the MLP ran 1.02-1.12x faster, the networks no slower.
    - fp32: oneDNN when it times at least ``ONEDNN_MIN_SPEEDUP`` x faster than ``F.linear`` (MKL) on what the
      networks run most: a ViT MLP (1024 tokens, 768 -> 3072 -> GELU -> 768, ~10 GFLOP; about 0.5 s on 2 cores),
      fused GELU on oneDNN's side. On 2-core Zen 4 machines it ran 1.34-1.63x faster (five fresh processes), and
      released-size encoder / L2W / I2P calls 1.40x / 1.26x / 1.17x, outputs within 1.3e-6 relative (oneDNN's
      relative error against a float64 product 3.6e-7, MKL's 2.4e-7). On the AMX Xeon the MLP showed 1.09-1.20x
      and the networks tied (encoder 4.66-4.73 s vs 4.80-4.87, I2P and L2W within 3% either way), so the bar
      decides nothing there that matters; on a Zen 3 (AVX2) the product tied.

    ``F.linear`` stays wherever oneDNN lacks the dtype. ``SLAM3R_ONEDNN_LINEAR`` = ``0`` turns oneDNN off, ``1``
    takes it wherever it runs."""
    forced = os.environ.get("SLAM3R_ONEDNN_LINEAR")
    if forced == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:  # op missing, or the dtype unsupported on this CPU: RuntimeError
        onednn_linear(torch.ones(2, 4, dtype=dtype), torch.ones(3, 4, dtype=dtype), None, "gelu")
    except RuntimeError:
        return False
    if forced == "1" or dtype != torch.float32:
        return True
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 768, generator=g)
    w1, w2 = torch.randn(3072, 768, generator=g) / 28, torch.randn(768, 3072, generator=g) / 55
    b1, b2 = torch.zeros(3072), torch.zeros(768)
    onednn = _best_seconds(lambda: onednn_linear(onednn_linear(x, w1, b1, "gelu"), w2, b2, "none"))
    return onednn * ONEDNN_MIN_SPEEDUP < _best_seconds(lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2))

ONEDNN_MIN_SPEEDUP = 1.2
"""How much faster oneDNN must time than ``F.linear`` for :func:`cpu_onednn_linear` to pick it in fp32."""

ONEDNN_MIN_WEIGHTS = 512 * 512
"""Smallest layer (weight elements) that :class:`Linear` runs through oneDNN. The released networks' layers are
768 x 768 and larger; the bundled model's, 128 x 384 to 160 x 640, ran slower that way on the Zen 4 machine where
oneDNN wins at 768 (bundled streaming, 1 thread, three alternating runs: 0.0385-0.0399 s per steady frame through
oneDNN, 0.030-0.0385 through ``F.linear``)."""


def _best_seconds(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Linear(nn.Linear):
    """``nn.Linear`` (optionally followed by exact GELU) with two inference paths of its own.

    - Under autocast it multiplies by a reduced-precision copy of its weight and bias kept from call to call.
      Autocast casts every fp32 weight afresh in each ``with`` block, and the engine opens one per network call:
      for a one-frame released-size encoder call that cast cost as much as the arithmetic (0.53 s per frame against
      0.27 s with cached casts, bf16, 2 threads). The copy is what autocast would make (``weight.to(dtype)``); it is
      remade when the weight changes (its version counter or storage) and dropped by ``.to()`` / ``.cuda()``. It is
      not part of the state dict. The price is memory: half the fp32 weights again (about 1 GiB each for the
      released I2P and L2W networks), held until :func:`drop_low_precision_copies`.
    - On a CPU, where :func:`cpu_onednn_linear` found oneDNN faster, the product (and the GELU, fused into it) of a
      layer with at least ``ONEDNN_MIN_WEIGHTS`` weights runs through oneDNN, in fp32 and under autocast alike.

    Training (grad enabled) uses plain ``F.linear`` / autocast.
    """

    _lowp: tuple | None = None

    def forward(self, x: Tensor, gelu: bool = False) -> Tensor:
        device = x.device.type
        if torch.is_grad_enabled():
            out = super().forward(x)
            return F.gelu(out) if gelu else out
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(device):
            weight, bias = self._lowp_weights(torch.get_autocast_dtype(device))
            x = x.to(weight.dtype)
        # under torch.compile inductor picks its own CPU kernels (oneDNN among them); the probe must not be traced
        if (device == "cpu" and self.weight.numel() >= ONEDNN_MIN_WEIGHTS and not torch.compiler.is_compiling()
                and cpu_onednn_linear(x.dtype)):
            return onednn_linear(x, weight, bias, "gelu" if gelu else "none")
        out = F.linear(x, weight, bias)
        return F.gelu(out) if gelu else out

    def _lowp_weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        key = (dtype, *((t.data_ptr(), t._version) for t in (self.weight, self.bias) if t is not None))
        cached = self._lowp
        if cached is None or cached[0] != key:
            cached = self._lowp = (key, self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))
        return cached[1], cached[2]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        self._lowp = None
        return super()._apply(fn, recurse)


def drop_low_precision_copies(module: nn.Module) -> None:
    """Free the reduced-precision weight copies of every :class:`Linear` in ``module`` (half the size of its fp32
    weights; remade by the next reduced-precision inference call): for a process that goes on in fp32, or that
    measures memory per run."""
    for m in module.modules():
        if isinstance(m, Linear):
            m._lowp = None


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear (the GELU fused into the first product where :class:`Linear` can)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x, gelu=True))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# Bytes of attention scores one chunk of :func:`attention`'s CPU reduced-precision path holds: small enough to stay
# in a core's cache between the two matmuls and the softmax (1-8 MB measured alike, larger tensors ran ~10% slower).
CPU_ATTENTION_CHUNK_BYTES = 2 << 20


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``q`` ``(B, heads, Nq, d)`` and ``k``, ``v`` ``(B, heads, Nk, d)``.

    ``scaled_dot_product_attention``, except in inference on a CPU under bf16 / fp16 autocast: there torch's flash
    kernel reaches ~130 GFLOP/s at the networks' sizes (196 to 1960 queries against 196 keys) against ~280 for two
    batched matmuls and a softmax taken over chunks of heads whose scores fit in cache (2-core Zen 4, AVX-512
    BF16). Scores and probabilities are then rounded to the autocast dtype, which the accuracy checks of
    ``bench/bench_precision.py`` cover. fp32 keeps SDPA (no faster that way), and so does training (SDPA's
    backward needs no stored scores).
    """
    if q.device.type != "cpu" or torch.is_grad_enabled() or not torch.is_autocast_enabled("cpu"):
        return F.scaled_dot_product_attention(q, k, v)
    b, h, nq, d = q.shape
    nk, dtype = k.shape[2], torch.get_autocast_dtype("cpu")
    q = (q * d**-0.5).to(dtype).reshape(b * h, nq, d)
    k, v = (t.to(dtype).reshape(b * h, nk, d) for t in (k, v))
    out = q.new_empty(b * h, nq, d)
    step = max(1, CPU_ATTENTION_CHUNK_BYTES // (nq * nk * q.element_size()))
    with torch.autocast("cpu", enabled=False):  # bf16 in, bf16 out; autocast rejects ``out=``
        for i in range(0, b * h, step):
            scores = torch.bmm(q[i:i + step], k[i:i + step].transpose(1, 2))
            torch.bmm(scores.softmax(-1), v[i:i + step], out=out[i:i + step])
    return out.view(b, h, nq, d)


# Most tokens one chunk of per-token work (linear layers, GELU, residuals) handles at once. Bigger chunks buy no
# matmul speed on a CPU, and tensors above 32 MB are mmap-ed afresh by glibc on every allocation: the page faults
# then cost more than the arithmetic (bench/bench_networks.py).
TOKENS_PER_CHUNK = 1536


def views_per_chunk(views: int, tokens_per_view: int) -> int:
    """Views per chunk so that ``views`` split into equal chunks of at most ``TOKENS_PER_CHUNK`` tokens (>= 1)."""
    chunks = -(-views * tokens_per_view // TOKENS_PER_CHUNK)
    return max(1, -(-views // max(1, chunks)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3)
        self.proj = Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(qkv[:2], *rope).unbind(0)  # queries and keys rotated in one go
        return self.proj(merge_heads(attention(q, k, qkv[2])))


class CrossAttention(nn.Module):
    """Queries from the views of one decoder stream, keys / values from the views of the other (its *memories*),
    RoPE with each side's own positions; the output is the max over memories.

    :meth:`kv` depends on the memories alone, so a caller may compute it once per frame (``ViewFeatures``) and
    hand it to :meth:`attend` for every window the frame joins. Inputs are already layer-normed by the block.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = Linear(dim, dim)
        self.projk = Linear(dim, dim)
        self.projv = Linear(dim, dim)
        self.proj = Linear(dim, dim)

    def kv(self, y: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """Keys (RoPE-rotated) and values of memories ``y`` ``(M, B, N, C)``: two ``(M, B, heads, N, d)``."""
        m, b, n, c = y.shape
        h, d = self.num_heads, c // self.num_heads
        flat = y.reshape(m * b, n, c)
        k = apply_rope(split_heads(self.projk(flat), h), *rope)
        return k.view(m, b, h, n, d), split_heads(self.projv(flat), h).view(m, b, h, n, d)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, rope: Rope) -> Tensor:
        """Views ``x`` ``(V, B, N, C)`` against the memories' :meth:`kv` ``(M, B, heads, N_y, d)``:
        ``max_m proj(attn(projq x, k_m, v_m))``, ``(V, B, N, C)``.

        The attention of every view to one memory is a single attention call over the views' concatenated
        queries (softmax is per query, so this is exact); memories are taken a chunk at a time (chunk x V x B x N
        at most ``TOKENS_PER_CHUNK``, at least one memory) and max-combined.
        """
        nv, b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        q = apply_rope(split_heads(self.projq(x.reshape(nv * b, n, c)), h), *rope)  # (V*B, h, N, d)
        q = q.view(nv, b, h, n, d).permute(1, 2, 0, 3, 4).reshape(1, b, h, nv * n, d)
        out = None
        for kc, vc in zip(*(t.split(views_per_chunk(k.shape[0], b * nv * n)) for t in (k, v))):
            mc = kc.shape[0]
            att = attention(q.expand(mc, -1, -1, -1, -1).reshape(mc * b, h, nv * n, d),
                            kc.reshape(mc * b, h, -1, d), vc.reshape(mc * b, h, -1, d))
            chunk = self.proj(merge_heads(att)).view(mc, b, nv, n, c).amax(dim=0)
            out = chunk if out is None else torch.maximum(out, chunk)
        return out.transpose(0, 1)


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: ``x += attn(norm1 x)``; ``x += mlp(norm2 x)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class MultiviewDecoderBlock(nn.Module):
    """One layer of one decoder stream, attending to every view of the other stream and max-combining.

    For views ``x`` ``(V, B, N, C)`` of this stream and memories ``y`` ``(M, B, N, C)`` of the other:
    ``x += selfattn(norm1 x)``; ``x += crossattn(norm2 x, norm_y y)`` (:class:`CrossAttention`, max over ``m``);
    ``x += mlp(norm3 x)``. Views and memories are processed in chunks of at most ``TOKENS_PER_CHUNK`` tokens.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = layer_norm(dim)

    def kv(self, y: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """The cross-attention's :meth:`CrossAttention.kv` of memories ``y`` ``(M, B, N, C)`` (``norm_y``-ed here,
        in chunks): two ``(M, B, heads, N, d)`` tensors. They depend only on ``y``, so a caller may compute them once
        per frame and pass them to :meth:`forward`."""
        m, b, n, _ = y.shape
        k, val = zip(*(self.cross_attn.kv(self.norm_y(yc), rope) for yc in y.split(views_per_chunk(m, b * n))))
        return torch.cat(k), torch.cat(val)

    def self_attend(self, x: Tensor, rope: Rope) -> Tensor:
        """The self-attention step ``x + selfattn(norm1 x)`` of views ``x`` ``(V, B, N, C)`` alone (cacheable per
        view: it does not read the other stream)."""
        v, b, n, c = x.shape
        out = []
        for xc in x.split(views_per_chunk(v, b * n)):
            flat = xc.reshape(-1, n, c)
            out.append((flat + self.attn(self.norm1(flat), rope)).view(xc.shape))
        return torch.cat(out)

    def forward(self, x: Tensor, y: Tensor | None, rope: Rope, *, kv: tuple[Tensor, Tensor] | None = None,
                attended: bool = False) -> Tensor:
        """One layer for views ``x`` against memories ``y``. ``kv``: precomputed :meth:`kv` of ``y`` (then ``y`` is
        not read); ``attended``: ``x`` is already :meth:`self_attend`-ed."""
        v, b, n, c = x.shape
        k, val = kv if kv is not None else self.kv(y, rope)
        return torch.cat([self._update(xc, k, val, rope, attended) for xc in x.split(views_per_chunk(v, b * n))])

    def _update(self, x: Tensor, k: Tensor, val: Tensor, rope: Rope, attended: bool = False) -> Tensor:
        """One chunk of views ``(v, B, N, C)`` against all memories' keys / values ``(M, B, heads, N_y, d)``."""
        v, b, n, c = x.shape
        flat = x.reshape(v * b, n, c)
        if not attended:
            flat = flat + self.attn(self.norm1(flat), rope)
        cross = self.cross_attn.attend(self.norm2(flat).view(v, b, n, c), k, val, rope)
        flat = flat + cross.reshape(v * b, n, c)
        flat = flat + self.mlp(self.norm3(flat))
        return flat.view(v, b, n, c)
