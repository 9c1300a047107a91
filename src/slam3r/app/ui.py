"""The Gradio page: inputs (upload, live stream, RabbitMQ service), pipeline parameters, progress with an incremental
3D preview, Stop and Clear, the final 3D view (cameras, trajectory, a highlighted frame), a frame gallery, downloads,
and the export settings (threshold, confidence percentile, point count) re-applied without inference.

Everything a browser session writes lives in its own folder (:class:`~slam3r.app.sessions.Sessions`), deleted when
the tab closes; one reconstruction runs at a time on the server."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np
import torch

from slam3r.app.controls import export_controls, make_config, pipeline_controls, view_controls
from slam3r.app.inputs import ACCEPTED, UploadError, UploadLimits, open_upload
from slam3r.app.jobs import JobUpdate, ReconJob
from slam3r.app.preview import PreviewCloud, write_axes_glb
from slam3r.app.refilter import export_settings, highest_confidence, refilter
from slam3r.app.scene import ViewOptions, write_view
from slam3r.app.service_feed import ServiceFeed, without_credentials
from slam3r.app.sessions import Sessions, public_message
from slam3r.config import from_dict
from slam3r.data.ply import write_ply
from slam3r.data.sources import STREAM_SCHEMES, open_source
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.recon.config import ReconConfig
from slam3r.recon.output import RunOutput
from slam3r.recon.run import Frame
from slam3r.service.config import ServiceConfig

log = logging.getLogger(__name__)

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "synthetic_room.mp4"
"""The bundled example input: a short synthetic clip (``slam3r synth``)."""
GALLERY_FRAMES = 48
ARIA_LIVE_JS = """() => { for (const id of ['status']) { const el = document.getElementById(id);
  if (el) { el.setAttribute('aria-live', 'polite'); el.setAttribute('role', 'status'); } } }"""
Update = dict[Any, Any]


@dataclass
class Result:
    """A finished reconstruction of this browser session (kept in ``gr.State``)."""

    out_dir: Path
    scene: str
    refilters: int = 0
    views: int = 0
    frame_ids: list[int] = field(default_factory=list)
    """Frame id of each gallery picture."""
    selected: int | None = None

    @property
    def output(self) -> RunOutput:
        return RunOutput(self.out_dir, self.scene)

    def files(self) -> list[str]:
        """The downloads: the result's deliverables (:meth:`RunOutput.files`: the cloud in every format, ...)."""
        return [str(p) for p in self.output.files()]

    def view(self, opt: ViewOptions) -> str:
        """Write the 3D view under a new name (a browser never shows a stale cached copy); keeps the newest two."""
        self.views += 1
        path = write_view(self.out_dir, self.out_dir / f"view_{self.views:04d}.glb", opt)
        (self.out_dir / f"view_{self.views - 2:04d}.glb").unlink(missing_ok=True)
        return str(path)

    def gallery(self) -> list[tuple[str, str]]:
        """Thumbnails of up to :data:`GALLERY_FRAMES` input frames (network crops), evenly spaced."""
        import cv2

        imgs = self.output.pred("input_imgs")
        folder = self.out_dir / "gallery"
        folder.mkdir(exist_ok=True)
        self.frame_ids = sorted({int(i) for i in np.linspace(0, len(imgs) - 1, min(len(imgs), GALLERY_FRAMES))})
        items = []
        for i in self.frame_ids:
            path = folder / f"frame_{i:05d}.jpg"
            cv2.imwrite(str(path), np.ascontiguousarray(np.asarray(imgs[i])[..., ::-1]))
            items.append((str(path), f"frame {i}"))
        return items

    def discard(self) -> None:
        """Delete the run's directory (a newer result replaces it, or the browser session ended)."""
        import shutil

        shutil.rmtree(self.out_dir.parent, ignore_errors=True)


def _discard(result: Result | None) -> None:
    if result is not None:
        result.discard()


@dataclass
class AppOptions:
    """Server settings chosen on the command line."""

    work_dir: Path
    limits: UploadLimits = field(default_factory=UploadLimits)
    video_fps: float = 5.0
    preview_every: int = 10
    update_interval: float = 0.5
    defaults: ReconConfig = field(default_factory=ReconConfig)
    """The pipeline settings the page starts from; every run's config is ``make_config(defaults, widgets)``."""


class ReconApp:
    """Server-wide state (networks, device, sessions) and the page's event handlers; :meth:`build` creates the page,
    whose input widgets the handlers look values up by (``data[self.files]``, ...)."""

    def __init__(self, i2p: Image2PointsModel, l2w: Local2WorldModel, device: torch.device,
                 options: AppOptions) -> None:
        self.i2p, self.l2w, self.device, self.opt = i2p, l2w, device, options
        self.opt.work_dir.mkdir(parents=True, exist_ok=True)
        # The viewer's "nothing yet" model. Never send it None: in Gradio 6 an emptied Model3D re-creates its
        # renderer on the next model and can miss that model when it arrives twice (generator + completion).
        self.axes = str(write_axes_glb(self.opt.work_dir / "axes.glb"))
        from gradio.utils import get_upload_folder

        self.sessions = Sessions(self.opt.work_dir, Path(get_upload_folder()))
        self.pending: dict[str, dict] = {}
        """Export settings changed by a session while its reconstruction runs, applied to that run's export."""
        self._runs = itertools.count(1)

    # ---------------------------------------------------------------------------------------------- running
    def _wait_for_slot(self) -> Iterator[Update]:
        """Take the one-at-a-time slot, telling the page while another run (possibly a stopping one) holds it."""
        while not self.sessions.slot.acquire(timeout=self.opt.update_interval):
            yield {self.status: "**Waiting** for the previous reconstruction on this server to finish …"}

    def _run(self, frames: Iterator[Frame], cfg: ReconConfig, scene: str, online: bool, run_dir: Path,
             session: str, view: ViewOptions, total: int | None = None) -> Iterator[Update]:
        """Start a job and turn its updates into page updates; ``total`` is the number of frames expected."""
        yield from self._wait_for_slot()
        number = next(self._runs)
        log.info("inference run %d started: %s (%s)", number, scene, "online" if online else "offline")
        self.pending.pop(session, None)
        try:
            preview = PreviewCloud(run_dir / "preview", cfg.conf_thres_l2w, seed=cfg.seed)
            job = ReconJob(frames, self.i2p, self.l2w, cfg, run_dir / "result", scene=scene, online=online,
                           device=self.device, preview=preview, preview_every=self.opt.preview_every,
                           slot=self.sessions.slot, label=f"inference run {number}")
        except BaseException:
            self.sessions.slot.release()
            raise
        self.sessions.set_running(session, job.start())
        try:
            for st in job.updates(self.opt.update_interval):
                if not st.done:
                    shown = str(st.preview) if st.preview is not None else self.axes
                    yield {self.status: self._progress_text(scene, st, total, session), self.viewer: shown}
                elif st.error is not None:
                    _rmtree(run_dir)
                    yield {self.status: _error(f"reconstruction failed: {st.error}"), self.viewer: self.axes,
                           self.downloads: None, self.result: None}
                else:
                    result = Result(run_dir / "result", scene)
                    yield self._finished(result, st.summary, session)
                    if result.out_dir.is_dir():  # then the heavier 3D view and gallery
                        yield {self.viewer: result.view(view), self.gallery: result.gallery()}
        finally:
            job.stop()  # the page went away or the run ended: never leave a stream running
            self.sessions.set_running(session, None)

    def _finished(self, result: Result, summary: dict, session: str) -> Update:
        """The page update for a finished (or stopped) run, first of two (the 3D view follows); applies export
        settings changed during the run."""
        pending = self.pending.pop(session, None)
        if not result.output.is_result():  # the tab closed meanwhile: its files are gone
            return {self.status: "The session ended; its files were deleted."}
        note = ""
        if pending is not None and pending != _export_key(summary):
            summary = refilter(result.out_dir, **pending)
            note = "\n- export settings changed during the run were applied to this result"
        log.info("result shown: %s", result.scene)
        return {self.status: self._summary_text(result, summary) + note, self.downloads: result.files(),
                self.result: result}

    def _progress_text(self, scene: str, st: JobUpdate, total: int | None, session: str) -> str:
        of = f" of {total}" if total else ""
        verb = "Stopping" if st.stopping else "Reconstructing"
        text = (f"**{verb} `{scene}`** — frames read: {st.frames_read}{of}, registered: "
                f"{st.frames_registered}{of}" + (" (3D preview updating)" if st.preview else ""))
        if session in self.pending:
            p = self.pending[session]
            text += (f"\n\nNew export settings (threshold {p['conf_thres']:g}, percentile {p['percentile']:g} %, "
                     f"{p['num_points']} points) will be applied to this run's export when it finishes.")
        return text

    def _summary_text(self, result: Result, s: dict) -> str:
        e = export_settings(s)
        head = "Stopped" if s.get("interrupted") else "Done"
        kept = f" ({s.get('stop_reason')}: the frames registered so far were kept)" if s.get("interrupted") else ""
        pct = (f" and above the {e['conf_percentile']:g}th percentile ({e['effective_conf_thres']:.3g})"
               if e["conf_percentile"] else "")
        lines = [f"**{head}: `{result.scene}`** — {s['frames']} frames{kept}, keyframe stride "
                 f"{s['metadata']['kf_stride']}, {s['seconds']:.1f} s ({s['fps']} frames/s) on {s['device']}",
                 f"- points: **{s['points']}** (L2W confidence > {e['conf_thres_l2w']:g}{pct}, at most "
                 f"{e['num_points_save']})",
                 f"- low-confidence frames: {len(s['low_confidence_frames'])}",
                 f"- re-filters of this result: {result.refilters}"]
        if s["points"] == 0:
            top = highest_confidence(result.out_dir)
            lines.append(f"- **No point passed the filters**: the highest L2W confidence in this result is "
                         f"{top:.3g}; lower the **L2W confidence threshold** below it"
                         + (" or the **percentile** filter" if e["conf_percentile"] else "") + ".")
        return "\n".join(lines)

    def _config(self, data: dict) -> ReconConfig:
        return make_config(self.opt.defaults, {name: data[w] for name, w in self.params.items()})

    def _view_options(self, data: dict, result: Result | None = None) -> ViewOptions:
        return ViewOptions(bool(data[self.show_cameras]), bool(data[self.show_trajectory]),
                           result.selected if result is not None and data[self.highlight] else None)

    def _check_numbers(self, data: dict) -> int:
        """Validate the upload tab's number boxes; returns the frame limit."""
        limit = data[self.max_frames]
        if limit is None or not 2 <= limit <= self.opt.limits.max_frames:
            raise UploadError(f"Max frames must be a whole number from 2 to {self.opt.limits.max_frames}")
        if data[self.fps] is not None and data[self.fps] < 0:
            raise UploadError("Video frames per second must be 0 (all frames) or more")
        _points(data[self.export["num_points_save"]])
        return int(limit)

    def run_upload(self, data: dict, request: gr.Request) -> Iterator[Update]:
        """Reconstruct an uploaded video / images / zip / folder (offline, like the reference)."""
        run_dir: Path | None = None
        session = request.session_hash
        try:
            limit = self._check_numbers(data)
            cfg = self._config(data)
            files = data[self.files] or data[self.folder]
            self.sessions.note_uploads(session, files)
            run_dir = self.sessions.new_run_dir(session, "upload")
            source, scene = open_upload(files, run_dir, self.opt.limits, fps=data[self.fps] or None,
                                        skip_other_files=not data[self.files])
        except ValueError as exc:
            if run_dir is not None:
                _rmtree(run_dir)
            yield {self.status: _error(f"not started: {exc}")}
            return
        _discard(data[self.result])
        yield {self.status: f"**Reading `{scene}`** …", self.viewer: self.axes, self.downloads: None,
               self.result: None, self.gallery: None}
        total = min(source.expected_frames or limit, limit)
        yield from self._run(itertools.islice(source, limit), cfg, scene, False, run_dir, session,
                             self._view_options(data), total)

    def run_live(self, data: dict, request: gr.Request) -> Iterator[Update]:
        """Reconstruct a camera / stream causally until it ends or Stop is pressed."""
        spec = (data[self.stream] or "").strip()
        try:
            # Only cameras and network streams: a path typed in the page must not read the server's files.
            if not (spec.isdigit() or spec.lower().startswith(STREAM_SCHEMES)):
                raise ValueError(f"{spec!r} is not a camera index (0, 1, …) or a stream URL "
                                 f"({', '.join(STREAM_SCHEMES)})")
            _points(data[self.export["num_points_save"]])
            cfg = self._config(data)
            source = open_source(spec, fps=data[self.live_fps] or None)
        except ValueError as exc:
            yield {self.status: _error(f"not started: {exc}")}
            return
        _discard(data[self.result])
        yield {self.status: f"**Connecting to `{spec}`** …", self.viewer: self.axes, self.downloads: None,
               self.result: None, self.gallery: None}
        yield from self._run(iter(source), cfg, "live", True, self.sessions.new_run_dir(request.session_hash, "live"),
                             request.session_hash, self._view_options(data))

    def run_service(self, data: dict, request: gr.Request) -> Iterator[Update]:
        """Show what the RabbitMQ service publishes (points and camera poses) until Disconnect is pressed; the last
        reconstruction stays the one the export settings apply to. "Subscribed" is shown only once the queues are
        declared, bound and consumed."""
        try:
            cfg = from_dict(ServiceConfig, {"rabbitmq_url": (data[self.amqp_url] or "").strip(),
                                            "name_prefix": (data[self.amqp_prefix] or "").strip()})
        except ValueError as exc:
            yield {self.status: _error(str(exc))}
            return
        run_dir = self.sessions.new_run_dir(request.session_hash, "service")
        feed = ServiceFeed(cfg, PreviewCloud(run_dir / "preview", conf_thres=1.0))
        feed.start()
        self.sessions.set_running(request.session_hash, feed)
        broker = without_credentials(cfg.rabbitmq_url)
        yield {self.status: f"**Connecting to `{broker}`** …", self.viewer: self.axes}
        try:
            yield from self._watch_feed(feed, broker)
        finally:
            feed.stop()
            self.sessions.set_running(request.session_hash, None)
        feed.join(10)
        if feed.error is not None:
            yield {self.status: _error(f"RabbitMQ: {feed.error}")}
            return
        ply = run_dir / "service_points.ply"
        write_ply(ply, feed.preview.xyz, feed.preview.rgb)
        yield {self.status: f"**Disconnected** — received {feed.points_messages} point messages and "
                            f"{feed.pose_messages} poses; {len(feed.preview)} points kept (download below)",
               self.viewer: feed.snapshot(), self.downloads: [str(ply)]}

    def _watch_feed(self, feed: ServiceFeed, broker: str) -> Iterator[Update]:
        while not feed.connected.wait(self.opt.update_interval):
            if not feed.is_alive():
                return  # could not connect: the caller reports feed.error
        seen: tuple[int, int] = (-1, -1)
        shown = self.axes
        while feed.is_alive():
            counts = (feed.points_messages, feed.pose_messages)
            if counts != seen and sum(counts) > 0:
                shown = feed.snapshot()
            if counts != seen:
                seen = counts
                yield {self.status: f"**Subscribed to the service at `{broker}`** — point messages: {counts[0]}, "
                                    f"poses: {counts[1]}", self.viewer: shown}
            time.sleep(self.opt.update_interval)

    def stop(self, request: gr.Request) -> Any:
        """Stop this session's reconstruction, stream or service subscription (what was registered is exported).
        The status is left to the run's own updates ("Stopping …", then the result): this answer travels apart
        from them and, arriving after the result on a loaded server, would leave the page saying "Stopping"."""
        running = self.sessions.running(request.session_hash)
        if running is None:
            return "Nothing is running."
        running.stop()
        log.info("stop requested")
        return gr.skip()

    def close_session(self, request: gr.Request) -> None:
        """The browser tab closed: stop its run and delete its files."""
        self.pending.pop(request.session_hash, None)
        self.sessions.close(request.session_hash)

    def clear(self, result: Result | None, request: gr.Request) -> Update:
        """Stop what runs, forget the result and empty the inputs."""
        running = self.sessions.running(request.session_hash)
        if running is not None:
            running.stop()
            running.join(30)
        _discard(result)
        return {self.status: "Ready.", self.viewer: self.axes, self.downloads: None, self.result: None,
                self.gallery: None, self.files: None, self.folder: None}

    def reexport(self, data: dict, request: gr.Request) -> Update:
        """Re-apply the L2W threshold, percentile and point count to this session's last result (no inference);
        during a run, remember them for that run's export."""
        result: Result | None = data[self.result]
        try:
            settings = {"conf_thres": float(data[self.export["conf_thres_l2w"]]),
                        "percentile": float(data[self.export["conf_percentile"]] or 0.0),
                        "num_points": _points(data[self.export["num_points_save"]])}
        except ValueError as exc:
            return {self.status: _error(str(exc))}
        if isinstance(self.sessions.running(request.session_hash), ReconJob):
            self.pending[request.session_hash] = settings
            return {self.status: "New export settings will be applied to this run's export when it finishes."}
        if result is None:
            return {self.status: "Export settings will apply to the next reconstruction."}
        if settings == _export_key(result.output.summary()):
            return {self.status: gr.skip()}  # already applied (e.g. Enter, then the box loses focus)
        try:
            summary = refilter(result.out_dir, **settings)
        except (ValueError, FileNotFoundError) as exc:
            return {self.status: _error(str(exc))}
        result.refilters += 1
        log.info("re-filter %d of %s: threshold %g, percentile %g, %d points (no inference)", result.refilters,
                 result.scene, settings["conf_thres"], settings["percentile"], summary["points"])
        return {self.status: self._summary_text(result, summary), self.viewer: result.view(self._view_options(
            data, result)), self.downloads: result.files(), self.result: result}

    def redraw(self, data: dict) -> Update:
        """Rewrite the 3D view after a view option changed."""
        result: Result | None = data[self.result]
        if result is None:
            return {self.viewer: gr.skip()}
        return {self.viewer: result.view(self._view_options(data, result))}

    def select_frame(self, data: dict, evt: gr.SelectData) -> Update:
        """A gallery picture was clicked: that frame's pointmap is highlighted (when the box is ticked)."""
        result: Result | None = data[self.result]
        if result is None or evt.index is None or not 0 <= evt.index < len(result.frame_ids):
            return {self.status: gr.skip()}
        result.selected = result.frame_ids[evt.index]
        return {self.result: result, self.viewer: result.view(self._view_options(data, result)),
                self.status: f"Frame {result.selected} selected" + ("" if data[self.highlight] else
                                                                      " (tick *Highlight selected frame* to see it)")}

    # ------------------------------------------------------------------------------------------------ page
    def build(self) -> gr.Blocks:
        """The page (call once); handlers get their inputs as one dict keyed by widget."""
        # Results are served straight from the session folders (Gradio copies other files to a shared cache)
        gr.set_static_paths([str(self.sessions.root), str(EXAMPLE)])
        with gr.Blocks(title="SLAM3R", delete_cache=(3600, 7200)) as page:
            gr.Markdown("# SLAM3R — dense 3D reconstruction from a monocular video\n"
                        "Upload a video, images, a zip or a folder of images, or connect a live stream. "
                        f"Running on **{self.device}**.")
            self.result = gr.State(None, delete_callback=_discard)
            with gr.Row():
                with gr.Column(scale=2):
                    buttons = self._input_tabs()
                    self.status = gr.Markdown("Ready.", elem_id="status")
                    with gr.Accordion("Pipeline parameters", open=False, elem_id="pipeline") as pipeline_box:
                        pipeline = pipeline_controls(self.opt.defaults)
                    with gr.Group(elem_id="export") as export_box:
                        self.export = export_controls(self.opt.defaults)
                with gr.Column(scale=3):
                    self.viewer = gr.Model3D(self.axes, label="3D reconstruction", clear_color=(0.1, 0.1, 0.1, 1.0),
                                             height=520, elem_id="viewer")
                    with gr.Row() as view_box:
                        view = view_controls()
                    self.gallery = gr.Gallery(label="Input frames (click one to select it)", columns=8, height=170,
                                              allow_preview=False, elem_id="frames")
                    self.downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                             elem_id="downloads")
            self.show_cameras, self.show_trajectory, self.highlight = view
            self.params = {**pipeline, **{k: v for k, v in self.export.items() if k != "conf_percentile"}}
            self._wire(page, buttons, (pipeline_box, export_box, view_box, self.gallery))
        return page

    def _input_tabs(self) -> dict[str, Any]:
        b: dict[str, Any] = {}
        with gr.Tabs():
            with gr.Tab("Upload") as b["upload_tab"]:
                self.files = gr.File(label="Video, images or a .zip of an image folder", file_count="multiple",
                                     file_types=list(ACCEPTED), elem_id="upload")
                with gr.Accordion("… or a folder of images", open=False):
                    self.folder = gr.File(label="Image folder (where the browser supports folder upload)",
                                          file_count="directory", elem_id="upload-folder")
                b["example"] = gr.Button(f"Load the example ({EXAMPLE.stem.replace('_', ' ')}, synthetic)",
                                         size="sm", elem_id="example")
                with gr.Row():
                    self.fps = gr.Number(value=self.opt.video_fps, elem_id="video-fps",
                                         label="Video frames per second (0 = all)")
                    self.max_frames = gr.Number(value=self.opt.limits.max_frames, precision=0, label="Max frames",
                                                elem_id="max-frames")
                with gr.Row():
                    b["run"] = gr.Button("Reconstruct", variant="primary", elem_id="run")
                    b["stop"] = gr.Button("Stop", variant="stop", elem_id="stop")
                    b["clear"] = gr.Button("Clear", elem_id="clear")
            with gr.Tab("Live stream") as b["live_tab"]:
                self.stream = gr.Textbox(label="Camera index or stream URL", elem_id="stream",
                                         placeholder="0, rtsp://…, http://…")
                self.live_fps = gr.Number(value=0, label="Frames per second to take (0 = all)")
                with gr.Row():
                    b["live"] = gr.Button("Start", variant="primary", elem_id="live-start")
                    b["live_stop"] = gr.Button("Stop", variant="stop", elem_id="live-stop")
            with gr.Tab("RabbitMQ service") as b["service_tab"]:
                gr.Markdown("Watch the points and camera poses published by a running `slam3r serve`.")
                self.amqp_url = gr.Textbox(ServiceConfig.rabbitmq_url, label="Broker URL", elem_id="amqp-url")
                self.amqp_prefix = gr.Textbox("", label="Exchange name prefix (SLAM3R_NAME_PREFIX)",
                                              elem_id="amqp-prefix")
                with gr.Row():
                    b["connect"] = gr.Button("Connect", variant="primary", elem_id="amqp-connect")
                    b["disconnect"] = gr.Button("Disconnect", elem_id="amqp-disconnect")
        return b

    def _wire(self, page: gr.Blocks, b: dict[str, Any], reconstruction_only: tuple) -> None:
        outputs = [self.status, self.viewer, self.downloads, self.result, self.gallery]
        params = set(self.params.values()) | {self.export["conf_percentile"]}
        view = {self.show_cameras, self.show_trajectory, self.highlight, self.result}
        run = dict(outputs=outputs, concurrency_id="inference", concurrency_limit=1, show_progress_on=[self.viewer])
        b["run"].click(self.run_upload, {self.files, self.folder, self.fps, self.max_frames, *params, *view}, **run)
        b["live"].click(self.run_live, {self.stream, self.live_fps, *params, *view}, **run)
        b["connect"].click(self.run_service, {self.amqp_url, self.amqp_prefix}, outputs, concurrency_limit=None,
                           show_progress_on=[self.viewer])
        for btn in (b["stop"], b["live_stop"], b["disconnect"]):
            btn.click(self.stop, None, self.status, concurrency_limit=None, queue=False)
        b["clear"].click(self.clear, self.result, [*outputs, self.files, self.folder], concurrency_limit=None)
        b["example"].click(lambda: [str(EXAMPLE)], None, self.files, queue=False)
        e = self.export
        gr.on([e["conf_thres_l2w"].release, e["conf_percentile"].release, e["num_points_save"].submit,
               e["num_points_save"].blur], self.reexport, {*params, *view}, outputs[:4], concurrency_id="export",
              show_progress_on=[self.viewer], trigger_mode="always_last")  # one trigger must not swallow another
        gr.on([self.show_cameras.input, self.show_trajectory.input, self.highlight.input], self.redraw, view,
              self.viewer, concurrency_id="export", trigger_mode="always_last")
        self.gallery.select(self.select_frame, view, [self.result, self.viewer, self.status], concurrency_id="export",
                            show_progress_on=[self.viewer])
        for tab, shown in ((b["upload_tab"], True), (b["live_tab"], True), (b["service_tab"], False)):
            tab.select(lambda s=shown: [gr.update(visible=s)] * len(reconstruction_only), None,
                       list(reconstruction_only), queue=False)
        page.load(None, js=ARIA_LIVE_JS)
        page.unload(self.close_session)


def _points(value: float | None) -> int:
    """The point-count box's value, or the app's message when it is empty, fractional or below 1."""
    if value is None or value < 1 or value != int(value):
        raise ValueError("Points to keep must be a whole number of at least 1")
    return int(value)


def _export_key(summary: dict) -> dict:
    e = export_settings(summary)
    return {"conf_thres": e["conf_thres_l2w"], "percentile": e["conf_percentile"], "num_points": e["num_points_save"]}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _error(message: str) -> str:
    return f"**Error:** {public_message(message)}"
