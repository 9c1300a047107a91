"""``slam3r app``: serve the Gradio web app (upload or stream a video, watch it reconstruct, download results)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slam3r.runtime import add_runtime_arguments

    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all; default: "
                        "127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--work-dir", default=None,
                        help="where runs are written (default: a temporary folder removed on exit)")
    parser.add_argument("--max-upload-mb", type=float, default=500.0, help="upload size limit (default: 500)")
    parser.add_argument("--max-frames", type=int, default=1000, help="most frames reconstructed per upload "
                        "(default: 1000)")
    parser.add_argument("--video-fps", type=float, default=5.0,
                        help="default frames per second taken from uploaded videos (reference app: 5)")
    parser.add_argument("--preview-every", type=int, default=10,
                        help="update the 3D preview every this many registered frames (default: 10)")
    add_runtime_arguments(parser)  # the widgets start at the resolved pipeline settings


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import shutil
    import signal
    import sys
    import tempfile
    from pathlib import Path

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline server
    try:
        from slam3r.app.ui import AppOptions, ReconApp
    except ModuleNotFoundError as exc:
        print(f"slam3r app: missing dependency {exc.name!r}; install it with `pip install {exc.name}`",
              file=sys.stderr)
        return 1
    from slam3r.app.inputs import UploadLimits
    from slam3r.runtime import recon_settings, runtime_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    defaults = recon_settings(args).value
    rt = runtime_from_args(args)
    i2p, l2w, device = rt.i2p, rt.l2w, rt.device
    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="slam3r-app-") if temporary else args.work_dir).resolve()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))  # uploads too live in the work folder
    options = AppOptions(work_dir=work, limits=UploadLimits(args.max_upload_mb, args.max_frames),
                         video_fps=args.video_fps, preview_every=args.preview_every, defaults=defaults)
    page = ReconApp(i2p, l2w, device, options).build()
    page.queue(default_concurrency_limit=1)

    def terminate(signum: int, frame: object) -> None:  # docker stop: shut down as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:  # results are served from the session folders only (static paths set by the page), not all of work
        page.launch(server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb:g}mb",
                    footer_links=[])
    except KeyboardInterrupt:
        pass
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return 0
