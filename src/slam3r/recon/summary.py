"""The run summary (``summary.json``) as typed values: what the engine reports (:class:`EngineSummary`,
``Engine.summary()``) and the whole run's record (:class:`RunSummary`), with ``to_json`` / ``from_json`` giving
exactly the file's keys.

``summary.json`` keys, in order: ``mode`` (offline / online), ``interrupted``, ``stop_reason``, ``input`` (what the
frame source read and skipped), ``seconds``, ``fps``, ``timings`` (seconds per engine stage), ``buffer_size``,
``keyframes``, ``device``, ``precision`` (what the networks ran in), ``config`` (the resolved
:class:`~slam3r.recon.config.ReconConfig`), the caller's settings record (``weights``, ``config_sources``),
``frames``, ``points``, ``low_confidence_frames``, ``unregistered_frames``, ``metadata`` (``init_winsize``, ``kf_stride``, ``init_ref_id``; also
``preds/metadata.json``), ``export_check``, then ``loop_closure`` (loop-closure runs) and ``export`` (after a
refilter) when present.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class EngineSummary:
    """What the engine reports about its run; all ``None`` / empty when the run failed before it had an engine.

    Attributes:
        init_winsize: frames in the initial window.
        kf_stride: keyframe stride s (frames).
        init_ref_id: position in the initial window of its reference frame.
        precision: what the networks ran in (``fp32`` / ``bf16`` / ``fp16``: ``ReconConfig.precision`` resolved).
        timings: seconds spent per stage (``encode``, ``i2p``, ``l2w``, ...), rounded to ms.
        buffer_size: frames in the buffering set at the end.
        keyframes: every frame ever inserted into the buffering set, in order.
        loop_closure: the loop closer's counts (``LoopCloser.summary``) when loop closure ran.
    """

    init_winsize: int | None = None
    kf_stride: int | None = None
    init_ref_id: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    buffer_size: int | None = None
    keyframes: list[int] = field(default_factory=list)
    loop_closure: dict[str, Any] | None = None
    precision: str | None = None

    def metadata(self) -> dict[str, int | None]:
        """The reference's ``preds/metadata.json`` values (without ``scene_id``), also ``summary.json`` ``metadata``."""
        return {"init_winsize": self.init_winsize, "kf_stride": self.kf_stride, "init_ref_id": self.init_ref_id}


@dataclass(frozen=True)
class RunSummary:
    """One run's ``summary.json`` (see the module docstring for the keys).

    Attributes:
        mode: ``offline`` or ``online``.
        interrupted: the run ended before the end of its input (``stop_reason`` says why).
        stop_reason: ``end of input``, a signal name, ``input failed: ...``, ``failed: ...``, ...
        input: what the frame source read and skipped (``name``, ``skipped``, ``skipped_items``,
            ``excluded_depth_maps``); empty without a source.
        seconds: wall time of the run; fps: registered frames per second (``None`` for a zero-length run).
        engine: the engine's report.
        device: the compute device.
        config: the resolved pipeline parameters (``to_dict(ReconConfig)``).
        settings: the caller's record of where they came from (``weights``, ``config_sources``), written as
            top-level keys; on reading, every key this class does not name lands here.
        frames, points: frames written, points in the exported cloud.
        low_confidence_frames, unregistered_frames: frame indices.
        export_check: the writer's check of the export threshold (``recon.diagnostics.export_check``).
        export: the export settings of the last refilter (``app.refilter``), ``None`` before one.
    """

    mode: str = "offline"
    interrupted: bool = False
    stop_reason: str = "end of input"
    input: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    fps: float | None = None
    engine: EngineSummary = field(default_factory=EngineSummary)
    device: str = "cpu"
    config: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    frames: int = 0
    points: int = 0
    low_confidence_frames: list[int] = field(default_factory=list)
    unregistered_frames: list[int] = field(default_factory=list)
    export_check: dict[str, Any] | None = None
    export: dict[str, Any] | None = None

    def replace(self, **changes: Any) -> RunSummary:
        """A copy with ``changes`` (field names) applied."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` object (keys in the file's order; ``loop_closure`` / ``export`` only when set)."""
        e = self.engine
        out = {"mode": self.mode, "interrupted": self.interrupted, "stop_reason": self.stop_reason,
               "input": self.input, "seconds": self.seconds, "fps": self.fps, "timings": e.timings,
               "buffer_size": e.buffer_size, "keyframes": e.keyframes, "device": self.device,
               "precision": e.precision, "config": self.config,
               **self.settings, "frames": self.frames, "points": self.points,
               "low_confidence_frames": self.low_confidence_frames, "unregistered_frames": self.unregistered_frames,
               "metadata": e.metadata(), "export_check": self.export_check}
        if e.loop_closure is not None:
            out["loop_closure"] = e.loop_closure
        if self.export is not None:
            out["export"] = self.export
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        """Read a ``summary.json`` object; missing keys take the defaults (older results), keys this class does
        not name go to ``settings``."""
        rest = dict(data)
        meta = rest.pop("metadata", None) or {}
        engine = EngineSummary(**{k: meta.get(k) for k in ("init_winsize", "kf_stride", "init_ref_id")},
                               **{k: rest.pop(k) for k in ("precision", "timings", "buffer_size", "keyframes",
                                                               "loop_closure")
                                  if k in rest})
        names = {f.name for f in dataclasses.fields(cls)} - {"engine", "settings"}
        own = {k: rest.pop(k) for k in list(rest) if k in names}
        return cls(engine=engine, settings=rest, **own)
