"""The web app in a real browser (Playwright + Debian's headless chromium): bad uploads are reported in the page,
a short synthetic video is reconstructed with the incremental preview and the final 3D viewer, the L2W threshold
and point count are re-applied without a new inference, and the downloaded PLY has the expected point count.

The app runs as ``slam3r app`` in a subprocess with tiny random networks; a screenshot of the finished page goes to
``test-artifacts/app_finished.png``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_video(path: Path, frames: np.ndarray, fps: float = 5.0) -> Path:
    import cv2

    h, w = frames.shape[1:3]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        out.write(np.ascontiguousarray(f[..., ::-1]))
    out.release()
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from slam3r.data.synth import render_sequence

    root = tmp_path_factory.mktemp("inputs")
    seq = render_sequence(seed=1_000_003, num_frames=15, width=128, height=96)
    (root / "notes.txt").write_text("not a video")
    return {"video": write_video(root / "room.mp4", seq.rgb), "one_frame": write_video(root / "one.mp4", seq.rgb[:1]),
            "text": root / "notes.txt"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """``slam3r app`` on a free localhost port with tiny random weights; yields (url, log path, work dir)."""
    from slam3r.models import TINY, Image2PointsModel, Local2WorldModel, preset

    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    Image2PointsModel(TINY).save_pretrained(root / "weights" / "i2p")
    Local2WorldModel(preset("tiny", l2w=True)).save_pretrained(root / "weights" / "l2w")
    port, log = free_port(), root / "server.log"
    cmd = [sys.executable, "-m", "slam3r.cli", "app", "--weights", str(root / "weights"), "--device", "cpu",
           "--port", str(port), "--work-dir", str(root / "work"), "--preview-every", "5"]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"slam3r app exited with {proc.returncode}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"slam3r app did not start:\n{log.read_text()}")
                time.sleep(0.5)
        yield url, log, root / "work"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
            pg.set_default_timeout(120_000)  # generous: CI machines may be shared and slow
            pg.goto(server[0])
            pg.wait_for_selector("#run")
            yield pg
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest):
    """Keep ``test-artifacts/app_failure_<test>.png`` of the page when a test fails (for CI diagnosis)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "page" in request.fixturenames:
        ARTIFACTS.mkdir(exist_ok=True)
        request.getfixturevalue("page").screenshot(path=str(ARTIFACTS / f"app_failure_{request.node.name}.png"))


def upload(page, path: Path, accepted: bool = True) -> None:
    """Replace the upload widget's files with ``path``; waits until the page lists it (when ``accepted``)."""
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
        page.locator("#upload").get_by_text("Click to Upload").wait_for()  # the empty drop zone is back
    page.locator("#upload input[type=file]").set_input_files(str(path))
    if accepted:
        # the file name also appears in hidden elements; wait for a visible one
        page.locator("#upload").get_by_text(path.name).locator("visible=true").first.wait_for()


def set_number(page, elem_id: str, value: float, key: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press(key)


def status(page) -> str:
    return page.locator("#status").inner_text()


def downloaded_ply(page, tmp_path: Path):
    from slam3r.data.ply import read_ply

    link = page.locator("#downloads a[href$='.ply']").first
    with page.expect_download() as info:
        link.click()
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    return read_ply(target)


def expected_points(work: Path, conf_thres: float, num_points: int) -> int:
    (result,) = [p.parent for p in work.glob("upload-*/result/room_recon.ply")]
    confs = np.load(result / "preds" / "registered_confs.npy")
    return min(num_points, int((confs > conf_thres).sum()))


def log_count(log: Path, pattern: str) -> int:
    return len(re.findall(pattern, log.read_text()))


def test_bad_uploads_are_reported_and_the_app_keeps_serving(page, inputs) -> None:
    upload(page, inputs["text"], accepted=False)  # refused by the file widget itself
    page.get_by_text("Invalid file type").first.wait_for()
    page.click("#run")
    page.wait_for_selector("#status:has-text('nothing uploaded')")
    upload(page, inputs["one_frame"])
    page.click("#run")
    page.wait_for_selector("#status:has-text('at least 2 frames')")
    assert "Error: reconstruction failed" in status(page)


def test_reconstruct_refilter_download(page, inputs, server, tmp_path: Path) -> None:
    _, log, work = server
    set_number(page, "conf-thres-l2w", 1.5, "Tab")  # tiny random networks are not confident: low threshold
    upload(page, inputs["video"])
    page.click("#run")
    page.wait_for_selector("#status:has-text('Done')")
    page.wait_for_selector("#viewer canvas")
    assert page.locator("#viewer a[data-testid=model3d-download-link]").get_attribute("href").endswith(
        "room_recon.glb")
    assert len(list(work.glob("upload-*/preview/preview_*.glb"))) >= 1  # the incremental preview was written
    first = downloaded_ply(page, tmp_path)
    assert len(first) == expected_points(work, 1.5, 2_000_000) > 0

    set_number(page, "conf-thres-l2w", 2.2, "Tab")  # release of the slider's number box: re-filter
    page.wait_for_selector("#status:has-text('re-filters of this result: 1')")
    second = downloaded_ply(page, tmp_path)
    assert len(second) == expected_points(work, 2.2, 2_000_000) < len(first)
    assert (second.conf > 2.2).all()

    set_number(page, "num-points", 5000, "Enter")
    page.wait_for_selector("#status:has-text('re-filters of this result: 2')")
    third = downloaded_ply(page, tmp_path)
    assert len(third) == 5000
    assert "inference runs on this server: 2" in status(page)  # the failed 1-frame run and this one
    assert log_count(log, r"inference run \d+ started") == 2
    assert log_count(log, r"re-filter \d+ of room") == 2

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_finished.png"), full_page=True)


def test_live_stream_tab(page, inputs, server) -> None:
    page.get_by_role("tab", name="Live stream").click()
    page.fill("#stream textarea, #stream input", "/etc/hostname")  # server files are not a live source
    page.click("#live-start")
    page.wait_for_selector("#status:has-text('is not a camera index')")
    handler = partial(SimpleHTTPRequestHandler, directory=str(inputs["video"].parent))
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:  # an HTTP video stream that ends after 15 frames: registered causally, then exported
        page.fill("#stream textarea, #stream input", f"http://127.0.0.1:{http.server_port}/room.mp4")
        page.click("#live-start")
        page.wait_for_selector("#status:has-text('Done: live')")
    finally:
        http.shutdown()
        http.server_close()
    assert "15 frames" in status(page)
    assert page.locator("#viewer a[data-testid=model3d-download-link]").get_attribute("href").endswith(
        "live_recon.glb")
    assert log_count(server[1], r"inference run \d+ started: live \(online\)") == 1
    assert not list(server[2].glob("upload-*"))  # the session's previous result was replaced, not kept


def test_rabbitmq_service_tab(page) -> None:
    pika = pytest.importorskip("pika")
    from slam3r.recon.types import FrameResult
    from slam3r.service.config import ServiceConfig
    from slam3r.service.messages import Codec

    url = "amqp://guest:guest@127.0.0.1:5672/"
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=2"))
    except Exception:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    cfg = ServiceConfig(rabbitmq_url=url, name_prefix=f"appbrowser-{os.getpid()}.")
    try:
        page.get_by_role("tab", name="RabbitMQ service").click()
        page.fill("#amqp-prefix textarea, #amqp-prefix input", cfg.name_prefix)
        page.click("#amqp-connect")
        page.wait_for_selector("#status:has-text('Subscribed to the service')")
        ch = conn.channel()
        codec = Codec("json")
        for fid in range(3):
            pts = np.random.default_rng(fid).normal(size=(8, 8, 3)).astype(np.float32)
            pose = np.eye(4)
            pose[0, 3] = fid
            r = FrameResult(fid, fid, np.full((8, 8, 3), 200, np.uint8), pts, np.full((8, 8), 5, np.float32), pts,
                            np.full((8, 8), 20, np.float32), pose, 10.0)
            for exchange, msg in ((cfg.pointcloud_exchange, codec.points(r, *r.points(1.0), "default", "s")),
                                  (cfg.pose_exchange, codec.pose(r, "default", "s"))):
                ch.basic_publish(cfg.name(exchange), "", msg.wire_body(), pika.BasicProperties(
                    content_type=msg.content_type, content_encoding=msg.content_encoding))
        page.wait_for_selector("#status:has-text('point messages: 3, poses: 3')")
        page.click("#amqp-disconnect")
        page.wait_for_selector("#status:has-text('Disconnected')")
        assert "192 points kept" in status(page)
        assert page.locator("#downloads a[href$='service_points.ply']").count() == 1
    finally:
        ch = conn.channel()
        for base in (cfg.pointcloud_exchange, cfg.pose_exchange):
            ch.exchange_delete(cfg.name(base))
        conn.close()
