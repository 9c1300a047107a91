"""High-level entry point: frames in, a reconstruction directory out (used by the CLI, the demo and the app).

A run can end early and still keep its work: Ctrl-C / SIGTERM (with :func:`stop_on_signals`), a live stream or
camera that stops, or an input that fails part-way all finish the outputs for every frame registered so far, with
``"interrupted": true`` and the ``stop_reason`` in ``summary.json`` ("end of input" and ``false`` for a file read to
its end). A run that registers no frame writes nothing.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from slam3r.config import to_dict
from slam3r.data.preprocess import resize_crop
from slam3r.errors import InputError
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.recon.config import ReconConfig
from slam3r.recon.output import ReconWriter
from slam3r.recon.offline import run_offline
from slam3r.recon.streaming import StreamingReconstructor
from slam3r.recon.summary import EngineSummary, RunSummary
from slam3r.recon.types import FrameResult

Frame = tuple[int, np.ndarray, "int | None"]
OFFLINE_CHUNK = 8
"""Frames added to the engine per offline step (results do not depend on it): a stop acts after at most one step."""


class StopRequest:
    """Asks a running :func:`reconstruct` to stop reading input and finish what it has (thread-safe to set)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum: int | None = None

    def request(self, reason: str, signum: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.signum = reason, signum

    @property
    def requested(self) -> bool:
        return self.reason is not None

    @property
    def exit_code(self) -> int:
        """The shell convention for a run ended by signal N: 128 + N (130 for SIGINT, 143 for SIGTERM); else 0."""
        return 128 + self.signum if self.signum else 0


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopRequest]:
    """While active, the first SIGINT / SIGTERM sets the yielded :class:`StopRequest` (the run then finishes the
    outputs of the frames registered so far); a second one raises KeyboardInterrupt (abort, nothing written).
    Outside the main thread signals cannot be caught, and the request is only set by hand."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name, signum)
        print(f"\n{signal.Signals(signum).name}: finishing the outputs of the frames registered so far "
              "(send it again to abort without writing)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _until_stopped(frames: Iterable[Frame], stop: StopRequest) -> Iterator[Frame]:
    """``frames`` until ``stop`` is requested."""
    for frame in frames:
        if stop.requested:
            return
        yield frame


def reconstruct(frames: Iterable[Frame], i2p: Image2PointsModel, l2w: Local2WorldModel, cfg: ReconConfig,
                out_dir: str | Path, *, online: bool = False, device: torch.device | str = "cpu",
                scene: str = "scene", keep_preds: bool = True, frame_plys: bool = False,
                progress: bool = True, on_result: Callable[[FrameResult], None] | None = None,
                stop: StopRequest | None = None, source: object | None = None,
                settings: dict | None = None) -> RunSummary:
    """Reconstruct ``frames`` (``(index, rgb (H, W, 3) uint8, timestamp_ns | None)``) into ``out_dir``.

    Offline mode reads every frame first (network-resolution copies, 150 kB each at 224 px) and runs the reference
    algorithm; online mode registers frames causally as they are read. ``stop`` ends the run early (outputs kept
    for the frames registered so far); ``source`` (a :class:`slam3r.data.sources.FrameSource`) puts what it
    skipped in the summary; ``settings`` adds where the configuration came from (``weights``,
    ``config_sources``). Returns the :class:`~slam3r.recon.summary.RunSummary` (also written to
    ``summary.json``). Raises ValueError, leaving no files, when no frame was registered; an error after that first
    finishes the outputs (with ``stop_reason`` "failed: ...") and is then raised.
    """
    stop = stop or StopRequest()
    writer = ReconWriter(out_dir, scene, conf_thres_l2w=cfg.conf_thres_l2w, num_points_save=cfg.num_points_save,
                         keep_preds=keep_preds or cfg.loop_closure,  # loop corrections are applied to preds/
                         frame_plys=frame_plys, seed=cfg.seed, low_conf_frame_thresh=cfg.low_conf_frame_thresh)
    run = RunSummary(mode="online" if online else "offline", device=str(device), config=to_dict(cfg),
                     settings=dict(settings or {}))
    t0 = time.perf_counter()
    try:
        engine, input_error = _register(frames, i2p, l2w, cfg, writer, online=online, device=device,
                                        progress=progress, on_result=on_result, stop=stop)
    except KeyboardInterrupt:  # a second signal: abort
        writer.discard()
        raise
    except Exception as exc:
        if writer.next_frame == 0:
            writer.discard()
            if stop.requested and isinstance(exc, ValueError):
                raise InputError(f"stopped ({stop.reason}) before the first registered frame, nothing written: "
                                 f"{exc}") from None
            raise
        _finish(writer, run, EngineSummary(), time.perf_counter() - t0, f"failed: {type(exc).__name__}: {exc}",
                source)
        raise
    reason = stop.reason or (f"input failed: {input_error}" if input_error else None) \
        or getattr(source, "end_reason", None) or "end of input"
    elapsed = time.perf_counter() - t0
    corrections = engine.loop.corrections() if engine.loop is not None else None  # the final optimisation
    summary = _finish(writer, run, engine.summary(), elapsed, reason, source)
    if corrections is not None:  # loop closure: correct the written frames with the optimised pose graph
        from slam3r.recon.loop import finish_output

        finish_output(out_dir, corrections, scene, cfg, keep_preds)
    return summary


def _finish(writer: ReconWriter, run: RunSummary, engine: EngineSummary, elapsed: float, reason: str,
            source: object | None) -> RunSummary:
    """Close ``writer`` with the summary of ``run`` ended after ``elapsed`` seconds for ``reason`` (``engine``
    empty when the run failed part-way); returns it as written."""
    return writer.close(run.replace(interrupted=reason != "end of input", stop_reason=reason,
                                    input=_input_summary(source), engine=engine, seconds=round(elapsed, 3),
                                    fps=round(writer.next_frame / elapsed, 3) if elapsed > 0 else None))


def _input_summary(source: object | None) -> dict:
    """What the frame source read and skipped (every skipped file named), for ``summary.json``."""
    if source is None:
        return {}
    return {"name": getattr(source, "name", str(source)), "skipped": getattr(source, "skipped", 0),
            "skipped_items": list(getattr(source, "skipped_items", [])),
            "excluded_depth_maps": len(getattr(source, "excluded", []))}


def _register(frames: Iterable[Frame], i2p: Image2PointsModel, l2w: Local2WorldModel, cfg: ReconConfig,
              writer: ReconWriter, *, online: bool, device: torch.device | str, progress: bool,
              on_result: Callable[[FrameResult], None] | None,
              stop: StopRequest) -> tuple[object, str | None]:
    """Run the pipeline, handing every result to ``writer``; returns (engine, input error or None)."""
    from tqdm import tqdm

    size = i2p.cfg.img_size[0]
    bar = tqdm(desc="reconstructing", unit="frame", disable=not progress)
    errors: list[str] = []
    feed = _until_stopped(_noting_errors(frames, errors), stop)

    def emit(results: list[FrameResult]) -> None:
        for r in results:
            writer.add(r)
            if on_result is not None:
                on_result(r)
        bar.update(len(results))

    shape: tuple[int, ...] | None = None
    if online:
        rec = StreamingReconstructor(i2p, l2w, cfg, device)
        for _, rgb, ts in feed:
            shape = shape or rgb.shape
            emit(rec.push(rgb, ts))
        if rec.frames_seen < 2:
            raise InputError(f"need at least 2 readable frames, got {rec.frames_seen}")
        emit(rec.flush())
        engine = rec.engine
    else:
        net, stamps = [], []
        for _, rgb, ts in tqdm(feed, desc="reading frames", unit="frame", disable=not progress):
            shape = shape or rgb.shape
            net.append(resize_crop(rgb, size))
            stamps.append(ts)
        if stop.requested:
            raise InputError("the input was stopped while frames were being read")
        engine, results = run_offline(i2p, l2w, net, cfg, device=device, timestamps=stamps, frame_shape=shape,
                                      on_stride=lambda s: bar.set_postfix(stride=s), chunk=OFFLINE_CHUNK)
        bar.total = len(net)
        for r in results:
            if stop is not None and stop.requested:
                break
            emit([r])
            if stop.requested:
                break
    bar.close()
    return engine, errors[0] if errors else None


def _noting_errors(frames: Iterable[Frame], errors: list[str]) -> Iterator[Frame]:
    """``frames``; an OSError after the first frame (a camera unplugged, a file truncated) ends the input and is
    noted in ``errors``, so what was read is kept. Before the first frame it propagates (bad input)."""
    count = 0
    it = iter(frames)
    while True:
        try:
            frame = next(it)
        except StopIteration:
            return
        except OSError as exc:
            if count == 0:
                raise
            warnings.warn(f"input failed after {count} frames: {exc}", RuntimeWarning, stacklevel=2)
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        count += 1
        yield frame
