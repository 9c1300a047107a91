"""One reconstruction running in a background thread, watched by the page through periodic updates (frames read,
frames registered, the newest incremental preview), and stoppable: reading ends, the pipeline stops before its next
registered frame, and what was registered so far is exported."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from slam3r.app.preview import PreviewCloud
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.recon.config import ReconConfig
from slam3r.recon.run import Frame, StopRequest, reconstruct
from slam3r.recon.types import FrameResult

log = logging.getLogger(__name__)


@dataclass
class JobUpdate:
    """The state of a job at one moment."""

    frames_read: int
    frames_registered: int
    preview: Path | None
    done: bool = False
    summary: dict | None = None
    error: str | None = None
    stopping: bool = False


class ReconJob:
    """Runs :func:`slam3r.recon.run.reconstruct` on ``frames`` into ``out_dir`` in a thread; a preview snapshot is
    written every ``preview_every`` registered frames. ``slot`` (held, if given, by the caller) is released when
    the thread ends, so a server-wide one-at-a-time limit covers the whole run, stopping and exporting included."""

    def __init__(self, frames: Iterable[Frame], i2p: Image2PointsModel, l2w: Local2WorldModel, cfg: ReconConfig,
                 out_dir: Path, *, scene: str, online: bool, device: torch.device | str, preview: PreviewCloud,
                 preview_every: int = 10, slot: threading.Lock | None = None, label: str = "reconstruction") -> None:
        self.frames, self.i2p, self.l2w, self.cfg = frames, i2p, l2w, cfg
        self.out_dir, self.scene, self.online, self.device = out_dir, scene, online, device
        self.preview_cloud, self.preview_every = preview, max(1, preview_every)
        self.frames_read = self.frames_registered = 0
        self.preview: Path | None = None
        self.summary: dict | None = None
        self.error: str | None = None
        self.slot, self.label = slot, label
        self._stop = StopRequest()
        self._thread = threading.Thread(target=self._run, name=f"slam3r-job-{scene}", daemon=True)

    def _read(self) -> Iterator[Frame]:
        for frame in self.frames:
            if self._stop.requested:
                return
            self.frames_read += 1
            yield frame

    def _on_result(self, result: FrameResult) -> None:
        self.frames_registered += 1
        self.preview_cloud.add(result)
        if self.frames_registered % self.preview_every == 0:
            self.preview = self.preview_cloud.snapshot()

    def _run(self) -> None:
        try:
            with torch.no_grad():
                self.summary = reconstruct(self._read(), self.i2p, self.l2w, self.cfg, self.out_dir,
                                           online=self.online, device=self.device, scene=self.scene, progress=False,
                                           on_result=self._on_result, stop=self._stop).to_json()
        except ValueError as exc:  # bad input (too few frames, unreadable data, invalid parameters)
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the page; the server keeps running
            log.exception("%s failed: %s", self.label, self.scene)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._report()
            if self.slot is not None:
                self.slot.release()

    def _report(self) -> None:
        if self.frames_registered == 0 and self._stop.requested:
            self.summary, self.error = None, "stopped before any frame was registered; nothing was kept"
        if self.summary is not None:
            log.info("%s %s: %s, %d frames, %d points", self.label, "stopped" if self.summary.get("interrupted")
                     else "finished", self.scene, self.summary["frames"], self.summary["points"])
        else:
            log.info("%s failed: %s: %s", self.label, self.scene, self.error)

    def start(self) -> "ReconJob":
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the input and stop before the next registered frame; the job then exports what it has."""
        self._stop.request("Stop pressed in the page")

    @property
    def stopping(self) -> bool:
        return self._stop.requested

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; returns whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def state(self) -> JobUpdate:
        done = not self._thread.is_alive()
        return JobUpdate(self.frames_read, self.frames_registered, self.preview, done, self.summary, self.error,
                         self.stopping)

    def updates(self, interval: float = 0.5) -> Iterator[JobUpdate]:
        """Yield the job's state whenever it changed (checked every ``interval`` seconds, and at once when the job
        ends), ending with the final state (``done`` set, with the summary or the error)."""
        last: tuple | None = None
        while True:
            st = self.state()
            key = (st.frames_read, st.frames_registered, st.preview, st.done, st.stopping)
            if key != last:
                last = key
                yield st
            if st.done:
                return
            self._thread.join(interval)  # wakes at once when the job ends
