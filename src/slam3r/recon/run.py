"""High-level entry point: frames in, a reconstruction directory out (used by the CLI, the demo and the app)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from slam3r.config import to_dict
from slam3r.data.preprocess import resize_crop
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.recon.config import ReconConfig
from slam3r.recon.export import ReconWriter
from slam3r.recon.offline import run_offline
from slam3r.recon.streaming import StreamingReconstructor, intrinsics_to_net
from slam3r.recon.types import FrameResult

Frame = tuple[int, np.ndarray, "int | None"]
OFFLINE_CHUNK = 8
"""Frames added to the engine per offline step (results do not depend on it): a stop acts after at most one step."""


class StopRequest:
    """Asks a running :func:`reconstruct` to stop and finish what it has (thread-safe to set)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    @property
    def requested(self) -> bool:
        return self.reason is not None


def reconstruct(frames: Iterable[Frame], i2p: Image2PointsModel, l2w: Local2WorldModel, cfg: ReconConfig,
                out_dir: str | Path, *, online: bool = False, device: torch.device | str = "cpu",
                scene: str = "scene", keep_preds: bool = True, frame_plys: bool = False,
                progress: bool = True, on_result: Callable[[FrameResult], None] | None = None,
                stop: StopRequest | None = None) -> dict:
    """Reconstruct ``frames`` (``(index, rgb (H, W, 3) uint8, timestamp_ns | None)``) into ``out_dir``.

    Offline mode reads every frame first (network-resolution copies, 150 kB each at 224 px) and runs the reference
    algorithm; online mode registers frames causally as they are read. Returns the summary dict (also written to
    ``summary.json``). ``stop`` ends an offline run before its next registered frame: the frames registered so far
    are exported, with ``"interrupted": true`` and the ``stop_reason`` in the summary.
    """
    from tqdm import tqdm

    size = i2p.cfg.img_size[0]
    writer = ReconWriter(out_dir, scene, conf_thres_l2w=cfg.conf_thres_l2w, num_points_save=cfg.num_points_save,
                         keep_preds=keep_preds, frame_plys=frame_plys, seed=cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(desc="reconstructing", unit="frame", disable=not progress)

    def emit(results: list[FrameResult]) -> None:
        for r in results:
            writer.add(r)
            if on_result is not None:
                on_result(r)
        bar.update(len(results))

    shape: tuple[int, ...] | None = None
    if online:
        rec = StreamingReconstructor(i2p, l2w, cfg, device)
        for _, rgb, ts in frames:
            shape = shape or rgb.shape
            emit(rec.push(rgb, ts))
        if rec.frames_seen < 2:
            raise ValueError(f"need at least 2 readable frames, got {rec.frames_seen}")
        emit(rec.flush())
        engine = rec.engine
    else:
        net, stamps = [], []
        for _, rgb, ts in tqdm(frames, desc="reading frames", unit="frame", disable=not progress):
            shape = shape or rgb.shape
            net.append(resize_crop(rgb, size))
            stamps.append(ts)
        k = None
        if cfg.intrinsics is not None and shape is not None:
            k = intrinsics_to_net(cfg.intrinsics, shape[1], shape[0], size)
        engine, results = run_offline(i2p, l2w, net, cfg, device=device, timestamps=stamps, intrinsics_net=k,
                                      on_stride=lambda s: bar.set_postfix(stride=s), chunk=OFFLINE_CHUNK)
        bar.total = len(net)
        for r in results:
            if stop is not None and stop.requested:
                break
            emit([r])
    bar.close()
    elapsed = time.perf_counter() - t0
    assert engine is not None
    meta = {"init_winsize": len(engine.init_ids), "kf_stride": engine.s, "init_ref_id": engine.init_ref_id}
    summary = {"mode": "online" if online else "offline", "seconds": round(elapsed, 3),
               "fps": round(writer.next_frame / elapsed, 3) if elapsed > 0 else None,
               "timings": {k: round(v, 3) for k, v in engine.timings.items()},
               "buffer_size": len(engine.buffer), "keyframes": engine.keyframes, "device": str(device),
               "config": to_dict(cfg), "interrupted": bool(stop is not None and stop.requested),
               "stop_reason": stop.reason if stop is not None and stop.requested else "end of input"}
    return writer.close(meta, summary)
