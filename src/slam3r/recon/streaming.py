"""Streaming (causal) driver: frames arrive one at a time and each is registered as soon as its causal window
(itself and the ``win_r`` previous frames at stride s) is available; the buffering set is the only long-term memory.

With ``stream_pipeline`` the work of a push is split in two: the calling thread encodes the new frames and runs
I2P on every batch whose window is complete (``Engine.i2p_ahead_steps``), while one background thread registers
the batches of the previous push (``Engine.register_steps``: registration, buffering set, poses, eviction). The
registration of batch k and the networks of batch k+1 then overlap on two cores. Each batch's work is the same
as without the thread, in the same order per frame, so the results are identical; a push returns the frames the
previous push's registration finished (``flush`` waits for everything)."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import torch

from slam3r.data.preprocess import resize_crop
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.recon.batching import Steps, drive
from slam3r.recon.config import ReconConfig, resolve_geometry
from slam3r.recon.engine import Engine
from slam3r.recon.loop import MapUpdate
from slam3r.recon.threads import worker
from slam3r.recon.types import FrameResult
from slam3r.system import usable_cores


def pipeline_enabled(cfg: ReconConfig, device: torch.device) -> bool:
    """Whether ``stream_pipeline`` is on: its value, or for ``None`` whether a core is free for the registration
    thread (CUDA networks; CPU networks on fewer torch threads than the process may use) and loop closure is off
    (``ReconConfig.stream_pipeline``)."""
    if cfg.stream_pipeline is not None or cfg.loop_closure:
        return bool(cfg.stream_pipeline)
    if device.type == "cuda":
        return True
    return torch.get_num_threads() < usable_cores()


class StreamingReconstructor:
    """Causal reconstruction of a live stream.

    ``push`` takes one RGB frame of any size (uint8 ``(H, W, 3)``) and returns the frames registered by it, in
    order (none during initialisation, then all initial frames at once, then usually one batch of
    ``RunGeometry.num_register`` frames every that many pushes; with ``stream_pipeline``, one push later).
    ``flush`` registers what is left at the end of the stream; ``reset`` starts a new reconstruction with the same
    networks.
    """

    def __init__(self, i2p: Image2PointsModel, l2w: Local2WorldModel, cfg: ReconConfig | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.i2p, self.l2w = i2p, l2w
        self.cfg = cfg or ReconConfig()
        self.device = torch.device(device)
        self.size = i2p.cfg.img_size[0]
        self.engine: Engine | None = None
        self.pipelined = pipeline_enabled(self.cfg, self.device)  # decided once, on the caller's thread policy
        self._job: Future | None = None  # the registration handed to the thread by the last push

    def _engine(self, frame_shape: tuple[int, ...]) -> Engine:
        """The engine, started on the first frame (the intrinsics at network size need its shape)."""
        if self.engine is None:
            geometry = resolve_geometry(self.cfg, self.size, causal=True, frame_shape=frame_shape)
            self.engine = Engine(self.i2p, self.l2w, self.cfg, geometry, device=self.device)
        return self.engine

    @property
    def frames_seen(self) -> int:
        return 0 if self.engine is None else self.engine.n

    def push(self, rgb: np.ndarray, timestamp_ns: int | None = None) -> list[FrameResult]:
        """Add one frame; returns newly registered frames (possibly none)."""
        return self.push_many([rgb], [timestamp_ns])

    def push_many(self, rgbs: list[np.ndarray], timestamps: list[int | None] | None = None) -> list[FrameResult]:
        """Add several frames at once (encoded in one batch; used for micro-batching by the service)."""
        engine = self.engine
        if not self.pipelined or engine is None or not engine.registering:  # initialisation: nothing in flight
            return drive(self.push_steps(rgbs, timestamps))
        drive(engine.add_steps(self._inputs(rgbs), timestamps))
        batches = drive(engine.i2p_ahead_steps())  # overlaps the registration handed over by the last push
        out = self._collect()
        if batches:
            self._job = worker("slam3r-register").submit(drive, engine.register_steps(batches))
        return out

    def _collect(self) -> list[FrameResult]:
        """Results of the registration in flight (waits for it; re-raises its error), ``[]`` if none."""
        job, self._job = self._job, None
        return job.result() if job is not None else []

    def _settle(self) -> None:
        """Wait for the registration in flight without taking its results (the next push or flush returns them)."""
        if self._job is not None:
            self._job.exception()

    def _inputs(self, rgbs: list[np.ndarray]) -> list[np.ndarray]:
        """``rgbs`` checked and resized to the networks' input."""
        for rgb in rgbs:
            if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
                raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {getattr(rgb, 'dtype', type(rgb))} "
                                 f"{getattr(rgb, 'shape', '')}")
        return [resize_crop(r, self.size) for r in rgbs]

    def push_steps(self, rgbs: list[np.ndarray], timestamps: list[int | None] | None = None) -> Steps:
        """:meth:`push_many` as a step whose network calls can run batched with other streams' (the service runs
        the streams that have frames in the same batch with :func:`slam3r.recon.batching.drive_many`)."""
        if not rgbs:
            return []
        self._settle()
        inputs = self._inputs(rgbs)
        engine = self._engine(rgbs[0].shape)
        yield from engine.add_steps(inputs, timestamps)
        return self._collect() + (yield from engine.advance_steps())

    def flush(self) -> list[FrameResult]:
        """End of stream: register every frame still pending (needs at least s+1 frames in all)."""
        if self.engine is None or self.engine.final:
            return []
        out = self._collect()
        self.engine.finish()
        return out + self.engine.advance()

    def map_update(self, since_version: int = 0) -> MapUpdate | None:
        """With loop closure: the corrections of every frame returned so far (``recon.loop.MapUpdate``:
        cumulative 4x4 world similarities per frame id) when a loop has closed since map version
        ``since_version``; ``None`` without loop closure or when nothing changed. After :meth:`flush` it includes
        the final optimisation."""
        loop = self.engine.loop if self.engine is not None else None
        if loop is None:
            return None
        final = self.engine.final
        if final:
            loop.optimize()
        if loop.version <= since_version:
            return None
        return loop.map_update(final)

    def reset(self) -> None:
        """Forget the current reconstruction (e.g. a new video segment). Frames a pipelined push handed to the
        registration thread are dropped with it: :meth:`flush` first to keep them."""
        self._settle()
        self._job = None
        self.engine = None
