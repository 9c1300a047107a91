"""Pipeline parameters (reference ``recon.py`` names and defaults) as one validated dataclass, and the geometry of
a run resolved from them once (:func:`resolve_geometry`, used by both drivers; the engine takes it as given)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from slam3r.config import ConfigError


@dataclass(frozen=True)
class ReconConfig:
    """Every parameter of the incremental reconstruction; defaults are the reference's unless noted.

    Confidences are the networks' ``1 + exp(c)`` values; thresholds compare against them.
    """

    keyframe_stride: int = -1
    """Stride s between the frames of an I2P window; -1 = choose automatically (offline) / ``online_stride``."""
    keyframe_adapt_min: int = 1
    """Smallest stride tried when choosing it automatically."""
    keyframe_adapt_max: int = 20
    """Largest stride tried when choosing it automatically."""
    keyframe_adapt_stride: int = 1
    """Step between the strides tried when choosing it automatically."""
    auto_stride_windows: int = 10
    """Random windows per candidate stride when choosing it automatically."""
    initial_winsize: int = 5
    """Frames in the initialisation window."""
    init_conf_thres: float = 5.0
    """Shrink the initial window while its best mean confidence is below this (and it has more than 3 frames)."""
    win_r: int = 3
    """I2P window radius: window = [v] + v -+ i*s, i = 1..win_r (causal mode: only v - i*s)."""
    conf_thres_i2p: float = 1.5
    """I2P confidence threshold of the points L2W is given."""
    num_scene_frame: int = 10
    """Scene frames retrieved from the buffer for each L2W registration."""
    max_num_register: int = 10
    """Most frames registered per L2W call."""
    conf_thres_l2w: float = 12.0
    """Export threshold: points with L2W confidence above it go into the cloud (PLY / GLB, service messages)."""
    num_points_save: int = 2_000_000
    """The exported cloud is randomly reduced to at most this many points."""
    low_conf_frame_thresh: float = 10.0
    """A frame whose mean L2W confidence is below this is listed in summary.json's low_confidence_frames."""
    update_buffer_intv: int = 1
    """Update the buffering set every stride * intv frames."""
    buffer_size: int = 100
    """Buffering-set size; -1 = unbounded."""
    buffer_strategy: Literal["reservoir", "fifo"] = "reservoir"
    """Buffering-set replacement policy: reservoir sampling (the reference) or the latest keyframes."""
    retrieval_depth: int = 2
    """Decoder blocks the retrieval head runs to score candidate scene frames."""
    norm_input: bool = False
    """Normalise the scene frames' world points before L2W (outputs are scaled back)."""
    l2w_frame: Literal["world", "anchor"] = "world"
    """Frame of the points L2W sees: ``world`` (the reference) feeds scene frames' world points as they are;
    ``anchor`` first maps them into the camera frame of the latest scene frame (a similarity fit of its camera
    points to its world points) and maps the outputs back, so the origin sits at a nearby camera as in L2W
    training, however far the camera has travelled from the first keyframe."""
    registration: Literal["l2w", "geometric", "flow"] = "l2w"
    """How a new frame is placed in the world: ``l2w`` (the network); ``geometric``: a robust similarity fit of
    its I2P window's points of already-registered frames to their world points; ``flow``: a robust similarity fit
    of its own I2P points to the previous frame's world points at the pixels dense optical flow matches
    (``recon.registration``)."""
    flow_refs: tuple[int, ...] = (1,)
    """``registration: flow``: offsets d of the already-registered frames ``v - d`` each frame ``v`` is matched to;
    all their matches enter one fit (points) and one chordal mean (``flow_rotation: homography``). Must include 1:
    only the flow to the previous frame is computed (one DIS pair per frame), the longer baselines compose it with
    the flows the frames in between kept (``recon.registration.chain_flow``)."""
    flow_rotation: Literal["fit", "homography"] = "fit"
    """``registration: flow``: where a frame's rotation comes from: ``fit`` (the robust similarity fit of its I2P
    points, as scale and translation) or ``homography`` (the images alone: a RANSAC homography of the flow matches
    to each reference frame read as a rotation, ``recon.registration.flow_rotation``; scale and translation are
    then fitted with that rotation held). With flattened network depth, ``fit`` under-turns the camera."""
    loop_closure: bool = False
    """Detect revisits among all keyframes, verify them with I2P and correct every frame by a Sim(3) pose graph
    (``recon.loop``); ``--loop-closure``."""
    loop_score: Literal["retrieval", "descriptor"] = "descriptor"
    """Loop candidate scoring: the cosine of encoder-token global descriptors, or the retrieval head (with the
    bundled model the descriptor's top candidate is 3x more co-visible: ``bench/bench_loop_scoring.py``)."""
    loop_min_gap: int = 50
    """Loop candidates are keyframes at least this many frames older than the new keyframe."""
    loop_candidates: int = 2
    """Best-scored candidates verified per new keyframe (best first, stopping at the first that fails)."""
    loop_min_inliers: float = 0.5
    """Fraction of valid pixels that must agree (within ``loop_inlier_thresh``) in both similarity fits of a loop
    verification."""
    loop_min_overlap: float = 0.2
    """Fraction of the new keyframe's valid points that must fall inside the old keyframe's view (partial overlap
    suffices: a revisit is entered gradually)."""
    loop_min_agree: float = 0.8
    """Fraction of those in-view points that must lie on the old keyframe's own surface (a true revisit agrees
    wherever the views overlap; I2P on an unrelated pair also puts the new points in view, off the surface:
    ``bench/bench_loop_scoring.py --verify``)."""
    loop_local_span: int = 10
    """Besides loops, each new keyframe gets one verified edge (same verification) to the keyframe up to this many
    keyframes back (the span halves when a verification fails, grows back by one per success; at least 2, the
    previous keyframe has the odometry edge): a second measurement of the stretch the registration drifted over,
    so the pose graph also holds down the drift of stretches that are never revisited (one I2P pair call per
    keyframe; ``recon.loop``). 0 = off."""
    loop_local_interval: int = 1
    """Try a local edge on every this-many-th keyframe only (one I2P pair call per this many keyframes). Sparser
    is cheaper but not safe: on a fast-turning sequence without loops (``tests/test_recon_loop.py``'s), every
    keyframe's local edge cut ATE 3.54 -> 2.60 cm, every 3rd's raised it to 4.76."""
    loop_inlier_thresh: float = 0.05
    """Inlier residual, as a fraction of the keyframe's mean point distance."""
    loop_optimize_interval: int = 10
    """While streaming, optimise at most once every this many keyframes (pending loops wait; all are optimised at the
    end)."""
    loop_background: bool = True
    """Run loop detection and verification on a background thread while the next frames are registered (the
    engine collects them at its next loop step, so the results do not depend on it: off runs the same schedule on
    the calling thread). It uses a free core; where none is free it competes with the networks' threads."""
    loop_robust: bool = True
    """Graduated non-convexity over the loop edges (rejects wrong loops); off = plain least squares."""
    stream_pipeline: bool | None = None
    """Streaming: register each batch on a background thread while the calling thread encodes and runs I2P on
    the next frames (``recon.streaming``), so a frame's results come back from the next ``push`` instead of its
    own; the results themselves are identical. ``None`` = on where a core is free for it (CPU networks on fewer
    threads than the process has cores, e.g. ``--threads 1`` on two cores; CUDA), off otherwise and with
    ``loop_closure`` (whose map updates cover the frames returned so far)."""
    seed: int = 42
    """Seed of the random choices (automatic-stride windows, reservoir buffer, point subsampling)."""
    online_stride: int = 3
    """Stride used by the causal (streaming) driver when ``keyframe_stride`` is -1 (the later release's default)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Autocast dtype: auto = bf16 on CUDA devices that support it (else fp16); on CPUs bf16 where the CPU has
    AVX-512 BF16 / AMX and the networks are at least 512 wide (the released size; its accuracy checks passed), else
    fp32 (``slam3r.models.precision``; ``summary.json`` ``precision`` says what ran). ``fp32`` forces exact
    arithmetic, ``bf16`` forces bf16 autocast."""
    compile: bool = False
    """``torch.compile`` the networks' blocks (``models.loading.compile_blocks``): minutes of compilation per input
    shape on a CPU for about 5-10% less time per call; eager where it cannot compile."""
    intrinsics: tuple[float, float, float, float] | None = None
    """Known (fx, fy, cx, cy) in pixels of the ORIGINAL frames, if the user has them; ``None`` = estimate."""

    def validate(self) -> None:
        checks = [
            (self.keyframe_stride == -1 or self.keyframe_stride >= 1, "keyframe_stride must be -1 (auto) or >= 1"),
            (1 <= self.keyframe_adapt_min <= self.keyframe_adapt_max, "need 1 <= keyframe_adapt_min <= _max"),
            (self.keyframe_adapt_stride >= 1, "keyframe_adapt_stride must be >= 1"),
            (self.initial_winsize >= 2, "initial_winsize must be >= 2"),
            (self.win_r >= 1, "win_r must be >= 1"),
            (self.num_scene_frame >= 1, "num_scene_frame must be >= 1"),
            (self.max_num_register >= 1, "max_num_register must be >= 1"),
            (self.num_points_save >= 1, "num_points_save must be >= 1"),
            (self.update_buffer_intv >= 1, "update_buffer_intv must be >= 1"),
            (self.buffer_size == -1 or self.buffer_size >= self.initial_winsize,
             "buffer_size must be -1 (unbounded) or >= initial_winsize"),
            (self.retrieval_depth >= 1, "retrieval_depth must be >= 1"),
            (self.loop_min_gap >= 1 and self.loop_candidates >= 1 and self.loop_optimize_interval >= 1,
             "loop_min_gap, loop_candidates and loop_optimize_interval must be >= 1"),
            (self.loop_local_span == 0 or self.loop_local_span >= 2, "loop_local_span must be 0 (off) or >= 2"),
            (self.loop_local_interval >= 1, "loop_local_interval must be >= 1"),
            (all(0 < x <= 1 for x in (self.loop_min_inliers, self.loop_min_overlap, self.loop_min_agree))
             and self.loop_inlier_thresh > 0,
             "loop_min_inliers, loop_min_overlap and loop_min_agree must be in (0, 1] and loop_inlier_thresh > 0"),
            (self.online_stride >= 1, "online_stride must be >= 1"),
            (1 in self.flow_refs and min(self.flow_refs) >= 1 and len(set(self.flow_refs)) == len(self.flow_refs),
             f"flow_refs must be distinct frame offsets >= 1 including 1, got {self.flow_refs}"),
            (self.conf_thres_i2p >= 1 and self.conf_thres_l2w >= 1 and self.init_conf_thres >= 1
             and self.low_conf_frame_thresh >= 1, "confidence thresholds are >= 1 (confidences are 1 + exp(c))"),
            (all(math.isfinite(v) for v in (self.conf_thres_i2p, self.conf_thres_l2w, self.init_conf_thres,
                                            self.low_conf_frame_thresh)),
             "confidence thresholds must be finite numbers"),
            (not (self.stream_pipeline and self.loop_closure),
             "stream_pipeline cannot be combined with loop_closure: a loop's map update would cover frames the "
             "registration thread has not handed back yet"),
            (self.intrinsics is None or (all(math.isfinite(v) for v in self.intrinsics)
                                         and self.intrinsics[0] > 0 and self.intrinsics[1] > 0),
             f"intrinsics (fx, fy, cx, cy) must be finite with fx, fy > 0, got {self.intrinsics}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


@dataclass(frozen=True)
class RunGeometry:
    """The settings of one run that depend on the driver, the network and the input, resolved once.

    Attributes:
        stride: keyframe stride s (frames) between the views of an I2P window, >= 1.
        causal: streaming windows (``v - i*s``, past frames only) instead of symmetric ones (``v -+ i*s``).
        size: network input side S (pixels); frames are cropped and resized to ``S x S``.
        intrinsics_net: known (fx, fy, cx, cy) in pixels of the ``S x S`` network input, or ``None`` (focal lengths
            are then estimated per frame, the principal point at the image centre).
        num_register: frames registered per L2W call, ``max(1, min((s + 1) // 2, max_num_register))``.
        init_frames: frames the engine holds before it can initialise, ``(initial_winsize - 1) * s + 1``.
    """

    stride: int
    causal: bool
    size: int
    intrinsics_net: tuple[float, float, float, float] | None
    num_register: int
    init_frames: int


def resolve_geometry(cfg: ReconConfig, size: int, *, causal: bool, frame_shape: tuple[int, ...] | None = None,
                     search: Callable[[], int] | None = None) -> RunGeometry:
    """The :class:`RunGeometry` of a run of ``cfg`` on ``size x size`` network inputs.

    The stride is ``cfg.keyframe_stride`` when set (>= 1); when it is -1 (automatic) a causal run takes
    ``cfg.online_stride`` and an offline run the result of ``search()`` (the automatic stride search over the
    whole input, :func:`slam3r.recon.offline.choose_stride`). ``cfg.intrinsics`` (pixels of the original frames)
    are mapped to the network crop of frames of ``frame_shape`` ``(H, W, ...)``; ``None`` without a frame shape.
    """
    stride = cfg.keyframe_stride
    if stride == -1:
        if causal:
            stride = cfg.online_stride
        elif search is None:
            raise ValueError("an automatic keyframe stride (keyframe_stride -1) needs the offline stride search")
        else:
            stride = search()
    k = None
    if cfg.intrinsics is not None and frame_shape is not None:
        import numpy as np

        from slam3r.geometry.camera import crop_resize_intrinsics

        fx, fy, cx, cy = cfg.intrinsics
        m = crop_resize_intrinsics(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), frame_shape[1], frame_shape[0],
                                   size)
        k = (float(m[0, 0]), float(m[1, 1]), float(m[0, 2]), float(m[1, 2]))
    return RunGeometry(stride=stride, causal=causal, size=size, intrinsics_net=k,
                       num_register=max(1, min((stride + 1) // 2, cfg.max_num_register)),
                       init_frames=(cfg.initial_winsize - 1) * stride + 1)
