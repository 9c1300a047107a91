"""The incremental SLAM3R engine shared by the offline and streaming drivers.

Frames are added in order (``add``) and ``advance`` does every piece of work the frames seen so far allow:
initialisation window, I2P windows, retrieval of scene frames, batched L2W registration, buffering-set update,
poses, eviction. The only difference between the drivers is the I2P window: symmetric (``v -+ i*s``, offline, needs
``win_r*s`` frames of look-ahead) or causal (``v - i*s``, streaming). Frame ids are always stream indices; buffer
positions are never mixed with ids.

Device memory is bounded: encoder tokens and pointmaps stay on the device only for buffered frames and for the
sliding window of frames still needed by upcoming I2P windows; registered frames leave as :class:`FrameResult`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from slam3r.data.preprocess import to_tensor
from slam3r.geometry.transforms import sim3_to_matrix
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.models.base import ViewFeatures
from slam3r.models.precision import autocast as precision_autocast
from slam3r.models.precision import resolve as resolve_precision
from slam3r.models.loading import compile_blocks
from slam3r.recon.camera import (estimate_focal, normalize_pointmaps, pose_from_pnp, pose_from_pointmaps,
                                 similarity_fit)
from slam3r.recon.batching import NetCall, Steps, drive
from slam3r.recon.config import ReconConfig, RunGeometry
from slam3r.recon.loop import LoopCloser, apply_sim3_matrix
from slam3r.recon.registration import chain_flow, flow_correspondences, register_by_flow, register_from_window
from slam3r.recon.summary import EngineSummary
from slam3r.recon.types import FrameResult


@dataclass
class _Frame:
    """Working state of one frame while the engine still needs it (tensors on the compute device)."""

    rgb: np.ndarray
    timestamp_ns: int | None
    tokens: Tensor | None = None  # (S, C) encoder tokens before enc_norm
    local: Tensor | None = None  # (H, W, 3) raw I2P points, camera frame
    conf_i2p: Tensor | None = None  # (H, W)
    pts_cam: Tensor | None = None  # (H, W, 3) normalised camera-frame points, invalid = 0 (L2W input)
    world: Tensor | None = None  # (H, W, 3)
    conf_l2w: Tensor | None = None  # (H, W)
    window: tuple[list[int], Tensor, Tensor] | None = None  # geometric registration: window ids, points, confs
    sim: np.ndarray | None = None  # flow registration: (4, 4) the frame's camera -> world similarity
    flow: tuple[int, np.ndarray, np.ndarray] | None = None  # flow registration: (u, keep, xy) flow to frame u
    focal: tuple[Tensor, Tensor, float] | None = None  # (local, weights, focal) of its last focal estimate
    # per-frame network work reused by every window / retrieval / L2W call the frame joins (Engine._features)
    i2p_ref: ViewFeatures | None = None  # as a window's keyframe or a retrieval query
    i2p_src: ViewFeatures | None = None  # as a window's other view or a retrieval candidate
    l2w_scene: ViewFeatures | None = None  # as an L2W scene frame (valid while `world` is fed unchanged)


def select_by_scores(scores: Tensor, k: int) -> list[int]:
    """Reference retrieval rule: scores ``(M, B, S)`` of M candidates -> indices of the ``k`` best candidates,
    ranked by ``(c - 1) / c`` of the mean score ``c`` over queries and tokens."""
    c = scores.float().mean(dim=(1, 2))
    return torch.argsort((c - 1) / c, descending=True)[:k].tolist()


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for the networks at ``precision`` (``auto``: see :mod:`slam3r.models.precision`)."""
    return precision_autocast(device, precision)


class Engine:
    """Incremental reconstruction state machine (see module docstring).

    Args:
        i2p, l2w: the networks (same ``img_size``).
        cfg: pipeline parameters.
        geometry: the run's resolved stride, window kind, intrinsics and batch size
            (:func:`slam3r.recon.config.resolve_geometry`; nothing is re-derived here).
    """

    def __init__(self, i2p: Image2PointsModel, l2w: Local2WorldModel, cfg: ReconConfig, geometry: RunGeometry, *,
                 device: torch.device | str = "cpu") -> None:
        if tuple(i2p.cfg.img_size) != tuple(l2w.cfg.img_size):
            raise ValueError(f"I2P ({i2p.cfg.img_size}) and L2W ({l2w.cfg.img_size}) image sizes differ")
        if geometry.size != i2p.cfg.img_size[0]:
            raise ValueError(f"run geometry for {geometry.size} px inputs, networks of {i2p.cfg.img_size}")
        self.i2p, self.l2w, self.cfg = i2p, l2w, cfg
        if cfg.compile:
            for net in (i2p, l2w):
                compile_blocks(net)
        self.geometry = geometry
        self.s, self.causal = geometry.stride, geometry.causal  # short names for the hot paths
        self.device = torch.device(device)
        self.precision = resolve_precision(self.device, cfg.precision, i2p.cfg.enc_embed_dim)  # what runs: fp32/bf16/..
        self.rng = np.random.default_rng(cfg.seed)
        self.frames: dict[int, _Frame] = {}
        self.n = 0  # frames added
        self.final = False
        self.initialized = False
        self.init_ids: list[int] = []
        self.init_ref_id = -1
        self.buffer: list[int] = []
        self.keyframes: list[int] = []  # every frame ever inserted into the buffering set, in order
        self.candidates_seen = 0
        self.next_id = 0  # next frame to register (after initialisation)
        self.milestone = 0
        self.local_mean: dict[int, float] = {}
        self.l2w_mean: dict[int, float] = {}
        self.timings: dict[str, float] = defaultdict(float)
        self._span_pending = False
        self.loop = LoopCloser(i2p, cfg, self.device) if cfg.loop_closure else None
        self._loop_seen = 0  # keyframes already handed to the loop closer
        # networks that expose per-view features get them cached per frame (the bench's naive wrappers do not)
        self.cache = all(hasattr(net, "view_features") for net in (i2p, l2w))
        self._init_out: dict[tuple[tuple[int, ...], int], object] = {}  # initial-window search -> _initialize
        self.i2p_front = 0  # frames before it have their I2P pointmaps (``i2p_ahead_steps`` runs ahead of next_id)
        # guards the frame tables where one thread adds / I2Ps frames while another registers them (recon.streaming)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ input
    def add(self, rgbs: Sequence[np.ndarray], timestamps: Sequence[int | None] | None = None,
            tokens: Sequence[Tensor | None] | None = None) -> None:
        """Add network-resolution frames ``(S, S, 3)`` uint8 (already cropped) and encode them in one batch;
        ``tokens``: encoder tokens ``(S, C)`` already computed for some of them (``None`` for the others)."""
        drive(self.add_steps(rgbs, timestamps, tokens))

    def add_steps(self, rgbs: Sequence[np.ndarray], timestamps: Sequence[int | None] | None = None,
                  tokens: Sequence[Tensor | None] | None = None) -> Steps:
        """:meth:`add` as a step whose encoder call can be batched with other engines' (``recon.batching``)."""
        if self.final:
            raise RuntimeError("frames added after finish()")
        if not len(rgbs):
            return
        timestamps = list(timestamps) if timestamps is not None else [None] * len(rgbs)
        tokens = list(tokens) if tokens is not None else [None] * len(rgbs)
        todo = [j for j, t in enumerate(tokens) if t is None]
        if todo:
            images = to_tensor(np.stack([rgbs[j] for j in todo])).to(self.device)
            encoded = yield self._net(self.i2p.encode, images, dim=0, timing="encode")
            for j, tok in zip(todo, encoded):
                tokens[j] = tok
        with self._lock:
            for rgb, ts, tok in zip(rgbs, timestamps, tokens):
                self.frames[self.n] = _Frame(rgb=rgb, timestamp_ns=ts, tokens=tok)
                self.n += 1

    def finish(self) -> None:
        """No more frames will come: windows at the end of the stream are truncated."""
        self.final = True

    # ------------------------------------------------------------------------------------------------ helpers
    def _net(self, fn, *args, dim: int = 1, timing: str | None = None, **kwargs) -> NetCall:
        """A network call for :mod:`slam3r.recon.batching` at this engine's precision (seconds -> ``timing``)."""
        return NetCall(fn, args, kwargs, self.device, self.precision, dim, self.timings, timing)

    @contextlib.contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[key] += time.perf_counter() - t0

    def window(self, v: int) -> list[int] | None:
        """I2P window of frame ``v`` (``v`` first), or ``None`` while its frames have not all arrived.

        Symmetric: ``v -+ i*s`` truncated at the stream ends. Causal: ``v - i*s``; frames at the very start of a
        stream, which have no past, use frames that have already arrived after them.
        """
        s, r = self.s, self.cfg.win_r
        if not self.causal and not self.final and v + r * s >= self.n:
            return None
        # causal look-ahead stops at the initial window, so results never depend on how frames were batched
        end = min(self.n, self.init_ids[-1] + 1) if self.causal and self.init_ids else self.n
        ids = [v]
        for i in range(1, r + 1):
            if v - i * s >= 0:
                ids.append(v - i * s)
            if (not self.causal or len(ids) <= i) and v + i * s < end:
                ids.append(v + i * s)
        if len(ids) < 2:  # a stream shorter than one stride step: fall back to the nearest frames
            near = sorted((j for j in range(max(0, v - r), min(end, v + r + 1)) if j != v), key=lambda j: abs(j - v))
            ids += near[:r]
        return ids if len(ids) >= 2 else None

    def _tokens(self, ids: Sequence[int]) -> Tensor:
        """``(V, 1, S, C)`` tokens of frames ``ids``."""
        return torch.stack([self.frames[i].tokens for i in ids])[:, None]

    def _features(self, ids: Sequence[int], attr: str, timing: str | None = None) -> Steps:
        """``(V, 1)`` cached per-frame features ``attr`` (a :class:`_Frame` field) of frames ``ids``, computing the
        missing ones in one batch (a step: the call yields; seconds -> ``timing``)."""
        missing = [i for i in dict.fromkeys(ids) if getattr(self.frames[i], attr) is None]
        if missing:
            tok = self._tokens(missing)
            if attr == "l2w_scene":
                feats = yield self._net(self.l2w.view_features, tok,
                                        torch.stack([self.frames[i].world for i in missing])[:, None],
                                        role="scene", timing=timing)
            else:
                feats = yield self._net(self.i2p.view_features, tok, role="ref" if attr == "i2p_ref" else "src",
                                        timing=timing)
            for j, i in enumerate(missing):
                setattr(self.frames[i], attr, feats.select([j]))
        return self._cached(ids, attr)

    def _cached(self, ids: Sequence[int], attr: str) -> ViewFeatures:
        """``(V, 1)`` features ``attr`` of frames ``ids``, all computed already (:meth:`_features`)."""
        return ViewFeatures.stack([getattr(self.frames[i], attr) for i in ids])

    def _i2p_windows(self, windows: Sequence[Sequence[int]], ref_only: bool = True) -> Steps:
        """Pointmaps ``(1 or V, B, ...)`` of B equal-size windows (keyframe first): the keyframe's only, or with
        ``ref_only=False`` every view's (in the keyframe's camera frame)."""
        if not self.cache:
            tokens = torch.stack([self._tokens(win)[:, 0] for win in windows], dim=1)
            return (yield self._net(self.i2p, tokens, ref_id=0, ref_only=ref_only, timing="i2p"))
        for attr, part in (("i2p_ref", slice(0, 1)), ("i2p_src", slice(1, None))):  # missing features, one call
            yield from self._features([i for win in windows for i in win[part]], attr, "i2p")
        ref = ViewFeatures.stack([self._cached(win[:1], "i2p_ref") for win in windows], dim=1)
        src = ViewFeatures.stack([self._cached(win[1:], "i2p_src") for win in windows], dim=1)
        out = yield self._net(self.i2p.forward_features, ref, src, ref_only=ref_only, timing="i2p")
        return out if ref_only else self.i2p.merge_views(len(windows[0]), [0], *out)

    def _run_i2p(self, ids: Sequence[int]) -> Steps:
        """Local pointmaps of frames ``ids`` (their windows must be ready), windows of equal size batched."""
        groups: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
        for v in ids:
            if self.frames[v].local is None:
                win = self.window(v)
                assert win is not None, f"window of frame {v} not ready"
                groups[len(win)].append((v, win))
        geometric = self.cfg.registration == "geometric"  # needs the window's other views too
        for items in groups.values():
            out = yield from self._i2p_windows([win for _, win in items], ref_only=not geometric)
            for b, (v, win) in enumerate(items):
                f = self.frames[v]
                f.local, f.conf_i2p = out.pts3d[0, b].float(), out.conf[0, b].float()
                if geometric:
                    f.window = (win, out.pts3d[:, b].float(), out.conf[:, b].float())
                f.pts_cam, _ = normalize_pointmaps(f.local, self._valid(f.conf_i2p))
                with self._lock:
                    self.local_mean[v] = f.conf_i2p.mean().item()

    def _l2w(self, scene_ids: Sequence[int], batches: Sequence[Sequence[int]]) -> Steps:
        """Register the frames of each of ``batches`` (B groups of equal size) against ``scene_ids``; the groups
        are independent batch elements sharing the scene frames."""
        nr = len(scene_ids)
        tok_scene = self._tokens(scene_ids)
        world = torch.stack([self.frames[i].world for i in scene_ids])
        anchor = None
        if self.cfg.l2w_frame == "anchor":  # world -> the latest scene frame's (normalised) camera frame
            a = self.frames[max(scene_ids)]
            anchor = similarity_fit(a.pts_cam, a.world, a.conf_l2w * self._valid(a.conf_i2p))
            sa, ra, ta = anchor
            world = torch.where(world.norm(dim=-1, keepdim=True) > 0, (world - ta) @ ra / sa, world)
        scale = None
        if self.cfg.norm_input:
            world, scale = normalize_pointmaps(world, world.norm(dim=-1) > 0)
        out = yield from self._l2w_call(scene_ids, tok_scene, world, batches)
        registered = out.pts3d.float() * (scale if scale is not None else 1.0)
        if anchor is not None:
            registered = sa * registered @ ra.T + ta
        for bi, group in enumerate(batches):
            for j, v in enumerate(group):
                f = self.frames[v]
                f.world = registered[j, bi]
                f.conf_l2w = out.conf[j, bi].float()
                self.l2w_mean[v] = f.conf_l2w.mean().item()

    def _l2w_call(self, scene_ids: Sequence[int], tok_scene: Tensor, world: Tensor,
                  batches: Sequence[Sequence[int]]) -> Steps:
        """The L2W network on scene frames (tokens ``(R, 1, S, C)``, points as fed ``(R, H, W, 3)``) and B groups
        of keyframes; the scene frames' features are cached when the points fed are their stored world points."""
        b = len(batches)
        src_tok = torch.stack([self._tokens(g)[:, 0] for g in batches], dim=1)
        src_pts = torch.stack([torch.stack([self.frames[i].pts_cam for i in g]) for g in batches], dim=1)
        if not self.cache:
            return (yield self._net(self.l2w, torch.cat([tok_scene.expand(-1, b, -1, -1), src_tok]),
                                    torch.cat([world[:, None].expand(-1, b, -1, -1, -1), src_pts]),
                                    ref_ids=list(range(len(scene_ids))), sources_only=True, timing="l2w"))
        if self.cfg.norm_input or self.cfg.l2w_frame != "world":  # points fed differ per call: nothing to reuse
            scene = yield self._net(self.l2w.view_features, tok_scene, world[:, None], role="scene", timing="l2w")
        else:
            scene = yield from self._features(scene_ids, "l2w_scene", "l2w")
        src = yield self._net(self.l2w.view_features, src_tok, src_pts, role="src", timing="l2w")
        return (yield self._net(self.l2w.register, scene.expand(b), src, timing="l2w"))

    def _retrieve(self, query_ids: Sequence[int]) -> list[int]:
        """Scene frames (frame ids) for the frames ``query_ids`` from the buffering set."""
        k = self.cfg.num_scene_frame
        if k >= len(self.buffer):
            return list(self.buffer)
        with self._timed("retrieval"), torch.no_grad(), autocast_context(self.device, self.precision):
            if self.cache:
                ref = ViewFeatures.stack([drive(self._features([i], "i2p_ref")) for i in query_ids], dim=1)
                logits = self.i2p.corr_logits_features(ref, drive(self._features(self.buffer, "i2p_src")),
                                                       self.cfg.retrieval_depth)
                scores = 1.0 + logits.exp()
            else:
                ref = torch.stack([self.frames[i].tokens for i in query_ids])
                cand = torch.stack([self.frames[i].tokens for i in self.buffer])
                scores = self.i2p.corr_scores(ref, cand, self.cfg.retrieval_depth)
        return [self.buffer[i] for i in select_by_scores(scores, k)]

    # ------------------------------------------------------------------------------------------------ stages
    def _initialize(self) -> bool:
        """Initial window: best reference among frames 0, s, ..., shrinking while confidence is low."""
        s = self.s
        w = self.cfg.initial_winsize
        if self.n < self.geometry.init_frames:
            if not self.final:
                return False
            w = min(w, (self.n - 1) // s + 1)  # keyframes 0, s, ... that exist
        if w < 2:
            raise ValueError(f"not enough frames to initialise: {self.n} frame(s) with keyframe stride {s} "
                             f"(need at least {s + 1})")
        w, best_ref = self._choose_init_window([i * s for i in range(w)])
        ids = [i * s for i in range(w)]
        out = self._init_out.pop((tuple(ids), best_ref), None)  # computed by the search already
        self._init_out.clear()
        if out is None:
            with torch.no_grad(), autocast_context(self.device, self.precision):
                out = self.i2p(self._tokens(ids), best_ref)
        pts, conf = out.pts3d[:, 0].float(), out.conf[:, 0].float()
        world, _ = normalize_pointmaps(pts, self._valid(conf))
        for j, v in enumerate(ids):
            f = self.frames[v]
            f.world, f.conf_l2w = world[j], conf[j]
            self.l2w_mean[v] = conf[j].mean().item()
        self.init_ids, self.init_ref_id = ids, best_ref
        self.buffer = list(ids)
        self.keyframes = list(ids)
        self.candidates_seen = len(ids)
        self.initialized = True
        self.next_id = self.milestone = (w - 1) * s + 1
        return True

    def _choose_init_window(self, ids: list[int]) -> tuple[int, int]:
        """Initial window size and reference: each frame of ``ids`` tried as the reference, the highest mean
        confidence wins; the window shrinks (down to 3) while that confidence is below ``init_conf_thres``."""
        w = len(ids)
        while True:
            tokens = self._tokens(ids[:w])
            best, best_ref = -1.0, 0
            with self._timed("init"), torch.no_grad(), autocast_context(self.device, self.precision):
                for r in range(w):
                    out = self.i2p(tokens, r)
                    mean_conf = out.conf.float().mean().item()
                    if mean_conf > best:
                        best, best_ref = mean_conf, r
                        self._init_out = {(tuple(ids[:w]), r): out}  # _initialize reuses the winner's output
            if w > 3 and best < self.cfg.init_conf_thres:
                w -= 1
                continue
            return w, best_ref

    def _valid(self, conf_i2p: Tensor) -> Tensor:
        """Pixels whose I2P points feed L2W: confidence above ``conf_thres_i2p`` (same shape, bool)."""
        return conf_i2p > self.cfg.conf_thres_i2p

    def _choose_keyframe(self, cands: list[int]) -> int:
        """The frame of a stride segment that enters the buffer: highest product of (c-1)/c of its mean L2W and
        I2P confidences."""
        lc = np.array([self.l2w_mean[i] for i in cands])
        ic = np.array([self.local_mean[i] for i in cands])
        return cands[int(np.argmax((lc - 1) / lc * (ic - 1) / ic))]

    def _finish_initial_span(self) -> Steps:
        """I2P for the initial span and L2W pre-registration of its non-keyframes; ids to emit, or ``None`` while
        their windows are not ready."""
        span = list(range(self.init_ids[-1] + 1))
        if any(self.window(v) is None for v in span):
            return None
        yield from self._run_i2p(span)
        if self.cfg.registration == "flow":  # the initial window's other views are rotation-blind guesses too
            ref = self.init_ref_id * self.s
            order = [*range(ref + 1, len(span)), *range(ref - 1, -1, -1)]
            yield from self._register_flow(order, lambda v: self._flow_refs(v, 1, ref) if v > ref
                                           else self._flow_refs(v, -1, len(span) - 1))
            return span
        keyframes = set(self.init_ids)
        inner = [v for v in span if v not in keyframes]
        if inner:
            yield from self._l2w(self.buffer, [[v] for v in inner])
            factor = max(self.l2w_mean[v] for v in inner) / max(self.l2w_mean[v] for v in self.init_ids)
            for v in self.init_ids:
                self.frames[v].conf_l2w = self.frames[v].conf_l2w * factor
                self.l2w_mean[v] *= factor
        return span

    def _update_buffer(self) -> None:
        """Reference buffering-set update, once per stride segment behind the registration front."""
        s, size = self.s, self.cfg.buffer_size
        if self.next_id - self.milestone < s * self.cfg.update_buffer_intv:
            return
        while self.next_id - self.milestone >= s:
            self.candidates_seen += 1
            full = size > 0 and len(self.buffer) >= size
            insert = (not full) or self.cfg.buffer_strategy == "fifo" or \
                (self.cfg.buffer_strategy == "reservoir" and self.rng.random() < size / self.candidates_seen)
            offset = max(0, self.buffer[-1] + s * 3 // 4 - self.milestone)
            cands = list(range(self.milestone + offset, self.milestone + s))
            if insert and cands:
                chosen = self._choose_keyframe(cands)
                self.buffer.append(chosen)
                self.keyframes.append(chosen)
                if full:
                    self.buffer.pop(int(self.rng.integers(size)) if self.cfg.buffer_strategy == "reservoir" else 0)
            self.milestone += s

    def _result(self, v: int) -> FrameResult:
        f = self.frames[v]
        with self._timed("pose"):
            has_world = f.world.norm(dim=-1) > 0  # the initial window zeroes points it could not place
            conf = torch.where(has_world, f.conf_l2w.clamp(min=1.0), torch.ones_like(f.conf_l2w))
            weights = ((f.conf_i2p > self.cfg.conf_thres_i2p).float() * (1 - 1 / conf)).cpu().numpy()
            local, world, cam = f.local.cpu().numpy(), f.world.cpu().numpy(), f.pts_cam.cpu().numpy()
            if weights.sum() <= 0:  # no confident I2P point: register from the world points the frame has
                weights, cam = (has_world.float() * (1 - 1 / conf)).cpu().numpy(), local
            pose, focal = self._pose(v, f, cam, world, weights)
        return FrameResult(frame_id=v, timestamp_ns=f.timestamp_ns, rgb=f.rgb, pts3d_local=local,
                           conf_i2p=f.conf_i2p.cpu().numpy(), pts3d_world=world, conf=conf.cpu().numpy(),
                           pose_c2w=pose if pose is not None else np.full((4, 4), np.nan), focal=focal,
                           is_keyframe=v in self.buffer, registered=pose is not None)

    def _pose(self, v: int, f: _Frame, cam: np.ndarray, world: np.ndarray,
              weights: np.ndarray) -> tuple[np.ndarray | None, float]:
        """Camera-to-world pose (``None`` when no weighted point fixes it) and focal length of frame ``v``."""
        if self.geometry.intrinsics_net is not None:
            fx, fy, cx, cy = self.geometry.intrinsics_net
            pose = pose_from_pnp(world, weights, fx, fy, cx, cy, seed=v)
            focal = float(fx)
        else:
            pose = None
            focal = self._focal(f, torch.from_numpy(weights).to(f.local.device))
        if pose is None and (weights > 0).sum() >= 3:
            try:
                pose, _ = pose_from_pointmaps(cam, world, weights)
            except ValueError:  # degenerate (e.g. all weighted points identical)
                pose = None
        return pose, focal

    def _evict(self) -> None:
        """Drop state no future step can need: not buffered, registered, and older than every pending window."""
        keep_from = self.next_id - max(self.cfg.win_r * self.s,
                                       max(self.cfg.flow_refs) if self.cfg.registration == "flow" else 0)
        buffered = set(self.buffer)
        with self._lock:
            for v in [v for v in self.frames if v < keep_from and v not in buffered]:
                del self.frames[v]
            for v, f in self.frames.items():  # registered frames are never a keyframe or a query again
                if v < self.next_id:
                    f.i2p_ref = None
            for table in (self.local_mean, self.l2w_mean):
                for v in [v for v in table if v < self.milestone and v not in buffered]:
                    del table[v]

    # ------------------------------------------------------------------------------------------------ geometric
    def _register_geometric(self, batch: Sequence[int]) -> Steps:
        """``registration: geometric``: each frame by a robust similarity fit of its I2P window's registered frames
        to their world points (``recon.registration``); frames whose window has none fall back to L2W. The final
        confidence of a geometrically registered frame is its I2P confidence."""
        fallback = []
        for v in batch:
            f = self.frames[v]
            win, pts, conf = f.window
            used = [j for j, u in enumerate(win) if j > 0 and self.frames[u].world is not None]
            if not used:
                fallback.append(v)
                continue
            weights = torch.stack([conf[j] * self._valid(self.frames[win[j]].conf_i2p) *
                                   (1 - 1 / self.frames[win[j]].conf_l2w) for j in used])
            with self._timed("register"):
                try:
                    T, _ = register_from_window(pts[used].cpu().numpy(), weights.cpu().numpy(),
                                                torch.stack([self.frames[win[j]].world for j in used]).cpu().numpy())
                except ValueError:
                    fallback.append(v)
                    continue
            f.world = torch.from_numpy(apply_sim3_matrix(T, f.local.cpu().numpy())).to(f.local.device)
            f.conf_l2w = f.conf_i2p.clone()
            self.l2w_mean[v] = f.conf_l2w.mean().item()
            f.window = None
        if fallback:
            yield from self._l2w(self._retrieve(fallback[::2]), [fallback])

    def _flow_refs(self, v: int, step: int, bound: int) -> list[int]:
        """Registered frames ``v - step * d`` (d in ``flow_refs``) that frame ``v`` is matched to: those not past
        ``bound`` (registration proceeds away from it, ``step`` = +1: ids >= bound, -1: ids <= bound) and still
        held, nearest first; the nearest (``v - step``, whose flow is computed) always exists."""
        ids = [v - step * d for d in sorted(self.cfg.flow_refs)]
        return [u for u in ids if (u >= bound if step > 0 else u <= bound) and u in self.frames]

    def _chained_flow(self, v: int, target: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Flow matches ``(keep, xy)`` of frame ``v`` to frame ``target`` by composing the flows the frames kept
        from their own registration (``recon.registration.chain_flow``), or ``None`` where the chain breaks."""
        links, u = [], v
        while u != target:
            f = self.frames.get(u)
            if f is None or f.flow is None or len(links) > max(self.cfg.flow_refs):
                return None
            links.append(f.flow[1:])
            u = f.flow[0]
        return chain_flow(links)

    def _camera_sim(self, f: _Frame, weight: Tensor) -> np.ndarray | None:
        """``(4, 4)`` frame ``f``'s camera -> world similarity (``flow_rotation: homography`` only): kept from its
        flow registration, else fitted to its points (I2P camera frame -> world)."""
        if self.cfg.flow_rotation != "homography":
            return None
        if f.sim is None:
            s, r, t = similarity_fit(f.local, f.world, weight * (f.world.norm(dim=-1) > 0))
            f.sim = sim3_to_matrix(float(s), r.cpu().double().numpy(), t.cpu().double().numpy())
        return f.sim

    def _flow_focal(self, f: _Frame, weight: Tensor) -> float | None:
        """Focal length (pixels of the network input) that ``flow_rotation: homography`` reads rotations with: the
        known intrinsics' ``fx``, else estimated from the frame's I2P points; ``None`` for ``flow_rotation: fit``."""
        if self.cfg.flow_rotation != "homography":
            return None
        if self.geometry.intrinsics_net is not None:
            return float(self.geometry.intrinsics_net[0])
        return self._focal(f, weight.float())

    @staticmethod
    def _focal(f: _Frame, weights: Tensor) -> float:
        """Focal length (pixels) ``estimate_focal`` reads from frame ``f``'s I2P points with ``weights`` (H, W):
        estimated once for the same points and weights (flow registration's estimate serves the frame's pose)."""
        if f.focal is None or f.focal[0] is not f.local or not torch.equal(f.focal[1], weights):
            f.focal = (f.local, weights, float(estimate_focal(f.local, weights)))
        return f.focal[2]

    def _register_flow(self, order: Sequence[int], refs: Callable[[int], list[int]]) -> Steps:
        """``registration: flow``: frames ``order`` one after the other, each by a robust similarity fit of its own
        I2P points to the world points of the registered frames ``refs(v)`` at the pixels the optical flow
        matches (``recon.registration.register_by_flow``); frames with too few matches fall back to L2W. The final
        confidence of a frame registered so is its I2P confidence."""
        for v in order:
            f = self.frames[v]
            weight = self._valid(f.conf_i2p) * (1 - 1 / f.conf_i2p)
            registered = []
            with self._timed("register"):
                ids = refs(v)
                f.flow = (ids[0], *flow_correspondences(f.rgb, self.frames[ids[0]].rgb))
                for ui in ids:
                    u, match = self.frames[ui], self._chained_flow(v, ui)
                    if match is None:
                        continue
                    weight_u = self._valid(u.conf_i2p) * (1 - 1 / u.conf_l2w.clamp(min=1.0))
                    registered.append((match, u.world.cpu().numpy(), weight_u.cpu().numpy(),
                                       self._camera_sim(u, weight_u)))
                focal = self._flow_focal(f, weight)
                try:
                    T, _ = register_by_flow(f.local.cpu().numpy(), weight.cpu().numpy(), registered, focal)
                except ValueError:
                    T = None
            if T is None:
                yield from self._l2w(self._retrieve([v]), [[v]])
                continue
            f.sim = T
            f.world = torch.from_numpy(apply_sim3_matrix(T, f.local.cpu().numpy())).to(f.local.device)
            f.conf_l2w = f.conf_i2p.clone()
            self.l2w_mean[v] = f.conf_l2w.mean().item()

    # ------------------------------------------------------------------------------------------------ loop closure
    def _emit(self, ids: Sequence[int]) -> list[FrameResult]:
        """Results of frames ``ids``; the loop closer notes which keyframe pose each was emitted against."""
        results = [self._result(v) for v in ids]
        if self.loop is not None:
            for v in ids:
                self.loop.note_emitted(v)
        return results

    def _loop_step(self) -> None:
        """Collect the loop closer's work on the keyframes handed over at the previous step (after a loop closes,
        move every frame still held by its keyframe's correction, so that registration continues in the corrected
        world), then hand it the new keyframes (``LoopCloser.submit``: on its thread while the engine goes on)."""
        if self.loop is None:
            return
        with self._timed("loop"):
            if self.loop.collect():
                deltas = self.loop.optimize()
                with self._lock:
                    held = list(self.frames.items())
                for v, f in held:
                    if f.world is not None:
                        C = deltas[self.loop.keyframe_of(v)]
                        f.world = torch.from_numpy(apply_sim3_matrix(C, f.world.cpu().numpy())).to(f.world.device)
            new = [(k, self.frames[k]) for k in self.keyframes[self._loop_seen:]]
            self._loop_seen = len(self.keyframes)
            if new:
                self.loop.submit([(k, f.tokens, f.local, f.world, self._valid(f.conf_i2p).float()
                                   * (1 - 1 / f.conf_l2w)) for k, f in new],
                                 lambda: autocast_context(self.device, self.precision))

    # ------------------------------------------------------------------------------------------------ driver
    def summary(self) -> EngineSummary:
        """What this run did, for ``summary.json``; with loop closure, call it after the loop closer's final
        ``corrections()`` so that its counts include the last optimisation."""
        return EngineSummary(init_winsize=len(self.init_ids), kf_stride=self.s, init_ref_id=self.init_ref_id,
                             precision=self.precision, timings={k: round(v, 3) for k, v in self.timings.items()},
                             buffer_size=len(self.buffer), keyframes=list(self.keyframes),
                             loop_closure=self.loop.summary() if self.loop is not None else None)

    def advance(self) -> list[FrameResult]:
        """Do all the work the frames seen so far allow; returns newly registered frames in order."""
        return drive(self.advance_steps())

    def advance_steps(self) -> Steps:
        """:meth:`advance` as a step whose I2P / L2W calls can be batched with other engines'
        (``recon.batching``)."""
        out = yield from self._start_steps()
        if out is None:
            return []
        while (batch := self._ready_batch(self.next_id)) is not None:
            yield from self._run_i2p(batch)
            out += yield from self.register_steps([batch])
        return out

    @property
    def registering(self) -> bool:
        """Initialised and the initial span emitted: from here on each batch is I2P then registration."""
        return self.initialized and not self._span_pending

    def _start_steps(self) -> Steps:
        """Initialisation and the initial span: the span's results once done (``[]`` if done earlier), or ``None``
        while the frames seen so far do not allow it."""
        if not self.initialized:
            if not self._initialize():
                return None
            self._span_pending = True
        if not self._span_pending:
            return []
        span = yield from self._finish_initial_span()
        if span is None:
            return None
        self._span_pending = False
        self._loop_step()
        return self._emit(span)

    def _ready_batch(self, start: int) -> list[int] | None:
        """The registration batch starting at frame ``start`` (``RunGeometry.num_register`` frames, fewer at the
        end of the stream), or ``None`` while its frames or their I2P windows have not all arrived."""
        if start >= self.n:
            return None
        batch = list(range(start, min(start + self.geometry.num_register, self.n)))
        if len(batch) < self.geometry.num_register and not self.final:
            return None
        return None if any(self.window(v) is None for v in batch) else batch

    def i2p_ahead_steps(self) -> Steps:
        """I2P pointmaps of every batch that is ready beyond those already computed, without registering them
        (only once :attr:`registering`); returns those batches, in order, for :meth:`register_steps`. The I2P
        windows do not read the registration's state, so a caller may run this while another thread registers
        the batches returned earlier (``recon.streaming``)."""
        batches = []
        start = max(self.i2p_front, self.next_id)
        while (batch := self._ready_batch(start)) is not None:
            yield from self._run_i2p(batch)
            batches.append(batch)
            start = self.i2p_front = batch[-1] + 1
        return batches

    def register_steps(self, batches: Sequence[Sequence[int]]) -> Steps:
        """Register ``batches`` (consecutive, from :attr:`next_id`, their I2P done), update the buffering set and
        hand keyframes to the loop closer after each; returns their results, in order."""
        out: list[FrameResult] = []
        for batch in batches:
            assert batch[0] == self.next_id and all(self.frames[v].local is not None for v in batch), batch
            if self.cfg.registration == "geometric":
                yield from self._register_geometric(batch)
            elif self.cfg.registration == "flow":
                yield from self._register_flow(batch, lambda v: self._flow_refs(v, 1, 0))
            else:
                yield from self._l2w(self._retrieve(batch[::2]), [batch])
            self.next_id += len(batch)
            self._update_buffer()
            self._loop_step()
            out += self._emit(batch)  # after the buffer update, so is_keyframe is current
            self._evict()
        return out
