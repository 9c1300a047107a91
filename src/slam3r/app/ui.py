"""The Gradio page: inputs (upload, live stream, RabbitMQ service), pipeline parameters, progress, an incremental
3D preview, the final viewer, downloads, and the export settings re-applied without inference."""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import gradio as gr
import torch

from slam3r.app.controls import export_controls, make_config, pipeline_controls
from slam3r.app.inputs import ACCEPTED, UploadError, UploadLimits, open_upload
from slam3r.app.jobs import JobUpdate, ReconJob
from slam3r.app.preview import PreviewCloud, write_axes_glb
from slam3r.app.refilter import refilter
from slam3r.app.service_feed import ServiceFeed, without_credentials
from slam3r.config import from_dict
from slam3r.data.sources import STREAM_SCHEMES, open_source
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.recon.config import ReconConfig
from slam3r.recon.export import write_ply
from slam3r.recon.run import Frame
from slam3r.service.config import ServiceConfig

log = logging.getLogger(__name__)

OUTPUT_FILES = ("{scene}_recon.ply", "{scene}_recon.glb", "trajectory.txt", "summary.json", "cameras.json")
PageUpdate = tuple[str, "str | None", "list[str] | None", "Result | None"]


@dataclass
class Result:
    """A finished reconstruction of this browser session (kept in ``gr.State``)."""

    out_dir: Path
    scene: str
    refilters: int = 0

    def files(self) -> list[str]:
        return [str(self.out_dir / f.format(scene=self.scene)) for f in OUTPUT_FILES
                if (self.out_dir / f.format(scene=self.scene)).is_file()]

    @property
    def glb(self) -> str:
        return str(self.out_dir / f"{self.scene}_recon.glb")

    def discard(self) -> None:
        """Delete the run's directory (a newer result replaces it, or the browser session ended)."""
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


class ReconApp:
    """Server-wide state (networks, device, counters, running jobs) and the page's event handlers; :meth:`build`
    creates the page, whose input widgets the handlers look values up by (``data[self.files]``, ...)."""

    def __init__(self, i2p: Image2PointsModel, l2w: Local2WorldModel, device: torch.device,
                 options: AppOptions) -> None:
        self.i2p, self.l2w, self.device, self.opt = i2p, l2w, device, options
        self.opt.work_dir.mkdir(parents=True, exist_ok=True)
        # The viewer's "nothing yet" model. Never send it None: in Gradio 6 an emptied Model3D re-creates its
        # renderer on the next model and can miss that model when it arrives twice (generator + completion).
        self.axes = str(write_axes_glb(self.opt.work_dir / "axes.glb"))
        self.inference_runs = 0
        self.running: dict[str, ReconJob | ServiceFeed] = {}
        """What each browser session has running (a reconstruction or a service subscription), for Stop."""
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- running
    def _run(self, frames: Iterator[Frame], cfg: ReconConfig, scene: str, online: bool, run_dir: Path,
             session: str, total: int | None = None) -> Iterator[PageUpdate]:
        """Start a job and turn its updates into page updates (status, viewer, downloads, state); ``total`` is the
        number of frames expected, if known."""
        with self._lock:
            self.inference_runs += 1
            number = self.inference_runs
        log.info("inference run %d started: %s (%s)", number, scene, "online" if online else "offline")
        preview = PreviewCloud(run_dir / "preview", cfg.conf_thres_l2w, seed=cfg.seed)
        job = ReconJob(frames, self.i2p, self.l2w, cfg, run_dir / "result", scene=scene, online=online,
                       device=self.device, preview=preview, preview_every=self.opt.preview_every).start()
        self.running[session] = job
        try:
            for st in job.updates(self.opt.update_interval):
                if not st.done:
                    preview = str(st.preview) if st.preview is not None else self.axes
                    yield self._progress_text(scene, st, total), preview, gr.skip(), None
                elif st.error is not None:
                    log.info("inference run %d failed: %s", number, st.error)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    yield _error(f"reconstruction failed: {st.error}"), self.axes, None, None
                else:
                    log.info("inference run %d finished: %d frames, %d points", number, st.summary["frames"],
                             st.summary["points"])
                    result = Result(run_dir / "result", scene)
                    yield self._summary_text(scene, st.summary), result.glb, result.files(), result
        finally:
            job.stop()  # the page went away or the run ended: never leave a stream running
            self.running.pop(session, None)

    def _progress_text(self, scene: str, st: JobUpdate, total: int | None) -> str:
        of = f" of {total}" if total else ""
        return (f"**Reconstructing `{scene}`** — frames read: {st.frames_read}{of}, registered: "
                f"{st.frames_registered}{of}" + (" (3D preview updating)" if st.preview else ""))

    def _summary_text(self, scene: str, s: dict, refilters: int = 0) -> str:
        export = s.get("export") or {"conf_thres_l2w": s["config"]["conf_thres_l2w"],
                                     "num_points_save": s["config"]["num_points_save"]}
        lines = [f"**Done: `{scene}`** — {s['frames']} frames, keyframe stride {s['metadata']['kf_stride']}, "
                 f"{s['seconds']:.1f} s ({s['fps']} frames/s) on {s['device']}",
                 f"- points: **{s['points']}** (L2W confidence > {export['conf_thres_l2w']:g}, at most "
                 f"{export['num_points_save']})",
                 f"- low-confidence frames: {len(s['low_confidence_frames'])}",
                 f"- inference runs on this server: {self.inference_runs}; re-filters of this result: {refilters}"]
        return "\n".join(lines)

    def _new_run_dir(self, scene: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{scene[:40]}-", dir=self.opt.work_dir))

    def _config(self, data: dict) -> ReconConfig:
        return make_config(self.opt.defaults, {name: data[w] for name, w in self.params.items()})

    def run_upload(self, data: dict, request: gr.Request) -> Iterator[PageUpdate]:
        """Reconstruct an uploaded video / images / zip (offline, like the reference)."""
        run_dir: Path | None = None
        try:
            cfg = self._config(data)
            limit = int(data[self.max_frames] or self.opt.limits.max_frames)
            if not 2 <= limit <= self.opt.limits.max_frames:
                raise UploadError(f"max frames must be between 2 and {self.opt.limits.max_frames}")
            run_dir = self._new_run_dir("upload")
            source, scene = open_upload(data[self.files], run_dir, self.opt.limits, fps=data[self.fps] or None)
        except ValueError as exc:
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
            yield _error(str(exc)), gr.skip(), gr.skip(), gr.skip()
            return
        _discard(data[self.result])
        yield f"**Reading `{scene}`** …", self.axes, None, None
        total = min(source.expected_frames or limit, limit)
        yield from self._run(itertools.islice(source, limit), cfg, scene, False, run_dir, request.session_hash,
                             total)

    def run_live(self, data: dict, request: gr.Request) -> Iterator[PageUpdate]:
        """Reconstruct a camera / stream causally until it ends or Stop is pressed."""
        spec = (data[self.stream] or "").strip()
        try:
            # Only cameras and network streams: a path typed in the page must not read the server's files.
            if not (spec.isdigit() or spec.lower().startswith(STREAM_SCHEMES)):
                raise ValueError(f"{spec!r} is not a camera index (0, 1, …) or a stream URL "
                                 f"({', '.join(STREAM_SCHEMES)})")
            cfg = self._config(data)
            source = open_source(spec, fps=data[self.live_fps] or None)
        except ValueError as exc:
            yield _error(str(exc)), gr.skip(), gr.skip(), gr.skip()
            return
        _discard(data[self.result])
        yield f"**Connecting to `{spec}`** …", self.axes, None, None
        yield from self._run(iter(source), cfg, "live", True, self._new_run_dir("live"), request.session_hash)

    def run_service(self, data: dict, request: gr.Request) -> Iterator[PageUpdate]:
        """Show what the RabbitMQ service publishes (points and camera poses) until Disconnect is pressed; the last
        reconstruction stays the one the export settings apply to."""
        try:
            cfg = from_dict(ServiceConfig, {"rabbitmq_url": (data[self.amqp_url] or "").strip(),
                                            "name_prefix": (data[self.amqp_prefix] or "").strip()})
        except ValueError as exc:
            yield _error(str(exc)), gr.skip(), gr.skip(), gr.skip()
            return
        run_dir = self._new_run_dir("service")
        feed = ServiceFeed(cfg, PreviewCloud(run_dir / "preview", conf_thres=1.0))
        feed.start()
        self.running[request.session_hash] = feed
        broker = without_credentials(cfg.rabbitmq_url)
        yield f"**Connecting to `{broker}`** …", self.axes, None, gr.skip()
        seen, shown = (-1, -1), self.axes
        try:
            while feed.is_alive():
                time.sleep(max(self.opt.update_interval, 1.0))
                counts = (feed.points_messages, feed.pose_messages)
                if counts != seen and counts[0] + counts[1] > 0:
                    seen, shown = counts, feed.snapshot()
                yield (f"**Subscribed to the service at `{broker}`** — point messages: {counts[0]}, "
                       f"poses: {counts[1]}"), shown, gr.skip(), gr.skip()
        finally:
            feed.stop()
            self.running.pop(request.session_hash, None)
        if feed.error is not None:
            yield _error(f"RabbitMQ: {feed.error}"), shown, None, gr.skip()
            return
        ply = run_dir / "service_points.ply"
        write_ply(ply, feed.preview.xyz, feed.preview.rgb)
        yield (f"**Disconnected** — received {feed.points_messages} point messages and {feed.pose_messages} "
               f"poses; {len(feed.preview)} points kept (download below)"), feed.snapshot(), [str(ply)], gr.skip()

    def stop(self, request: gr.Request) -> str:
        """Stop this session's stream or service subscription (a stream's frames so far are still registered and
        exported)."""
        running = self.running.get(request.session_hash)
        if running is None:
            return "Nothing is running."
        running.stop()
        return "**Stopping** …"

    def reexport(self, conf_thres: float, num_points: float | None, result: Result | None) -> PageUpdate:
        """Re-apply the L2W threshold and point count to this session's last result (no inference)."""
        if result is None:
            return "Export settings will apply to the next reconstruction.", gr.skip(), gr.skip(), None
        try:
            if num_points is None or num_points < 1:
                raise ValueError("points to keep must be at least 1")
            summary = refilter(result.out_dir, conf_thres, int(num_points))
        except (ValueError, FileNotFoundError) as exc:
            return _error(str(exc)), gr.skip(), gr.skip(), result
        result.refilters += 1
        log.info("re-filter %d of %s: threshold %g, %d points (no inference)", result.refilters, result.scene,
                 conf_thres, summary["points"])
        return self._summary_text(result.scene, summary, result.refilters), result.glb, result.files(), result

    # ------------------------------------------------------------------------------------------------ page
    def build(self) -> gr.Blocks:
        """The page (call once); handlers get their inputs as one dict keyed by widget."""
        d = self.opt.defaults
        with gr.Blocks(title="SLAM3R", delete_cache=(3600, 7200)) as page:
            gr.Markdown("# SLAM3R — dense 3D reconstruction from a monocular video\n"
                        "Upload a video, images or a zip of an image folder, or connect a live stream. "
                        f"Running on **{self.device}**.")
            result = self.result = gr.State(None, delete_callback=_discard)
            with gr.Row():
                with gr.Column(scale=2):
                    with gr.Tab("Upload"):
                        self.files = gr.File(label="Video, images or a .zip of an image folder",
                                             file_count="multiple", file_types=list(ACCEPTED), elem_id="upload")
                        with gr.Row():
                            self.fps = gr.Number(value=self.opt.video_fps, minimum=0, elem_id="video-fps",
                                                 label="Video frames per second (0 = all)")
                            self.max_frames = gr.Number(value=self.opt.limits.max_frames, precision=0,
                                                        label="Max frames", elem_id="max-frames")
                        run_btn = gr.Button("Reconstruct", variant="primary", elem_id="run")
                    with gr.Tab("Live stream"):
                        self.stream = gr.Textbox(label="Camera index or stream URL", elem_id="stream",
                                                 placeholder="0, rtsp://…, http://…")
                        self.live_fps = gr.Number(value=0, minimum=0, label="Frames per second to take (0 = all)")
                        with gr.Row():
                            live_btn = gr.Button("Start", variant="primary", elem_id="live-start")
                            stop_btn = gr.Button("Stop", elem_id="live-stop")
                    with gr.Tab("RabbitMQ service"):
                        gr.Markdown("Watch the points and camera poses published by a running `slam3r serve`.")
                        self.amqp_url = gr.Textbox(ServiceConfig.rabbitmq_url, label="Broker URL", elem_id="amqp-url")
                        self.amqp_prefix = gr.Textbox("", label="Exchange name prefix (SLAM3R_NAME_PREFIX)",
                                                      elem_id="amqp-prefix")
                        with gr.Row():
                            connect_btn = gr.Button("Connect", variant="primary", elem_id="amqp-connect")
                            disconnect_btn = gr.Button("Disconnect", elem_id="amqp-disconnect")
                    with gr.Accordion("Pipeline parameters", open=False):
                        pipeline = pipeline_controls(d)
                    with gr.Group():
                        export = export_controls(d)
                    status = gr.Markdown("Ready.", elem_id="status")
                with gr.Column(scale=3):
                    viewer = gr.Model3D(self.axes, label="3D reconstruction", clear_color=(0.1, 0.1, 0.1, 1.0),
                                        height=520, elem_id="viewer")
                    downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                        elem_id="downloads")
            self.params = {**pipeline, **export}
            params = set(self.params.values())
            outputs = [status, viewer, downloads, result]
            run_btn.click(self.run_upload, {self.files, self.fps, self.max_frames, result, *params}, outputs,
                          concurrency_id="inference", concurrency_limit=1)
            live_btn.click(self.run_live, {self.stream, self.live_fps, result, *params}, outputs,
                           concurrency_id="inference", concurrency_limit=1)
            connect_btn.click(self.run_service, {self.amqp_url, self.amqp_prefix}, outputs, concurrency_limit=None)
            for btn in (stop_btn, disconnect_btn):
                btn.click(self.stop, None, status, concurrency_limit=None, queue=False)
            thr, npts = export["conf_thres_l2w"], export["num_points_save"]
            thr.release(self.reexport, [thr, npts, result], outputs, concurrency_id="export")
            npts.submit(self.reexport, [thr, npts, result], outputs, concurrency_id="export")
        return page


def _error(message: str) -> str:
    return f"**Error:** {message}"

