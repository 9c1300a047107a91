"""The web app in a real browser (Playwright + Debian's headless chromium), as a user drives it: input errors are
the app's own messages next to the Reconstruct button (an aria-live region), a short synthetic video is
reconstructed with the incremental preview and the final 3D view, the L2W threshold, the confidence percentile and
the point count are re-applied without a new inference, the 3D view's cameras / trajectory / highlighted frame
follow their switches, the bundled example is one click away, Stop ends an upload run within seconds and keeps what
was registered, closing a tab stops its run and deletes its files, and the RabbitMQ tab says "Subscribed" only
when it is (a wrong port is reported with a reason).

The app runs as ``slam3r app`` in a subprocess with tiny random networks. Every wait is on a page or server state,
never a fixed sleep. Screenshots of the main states go to ``test-artifacts/`` (ignored by git).
"""

from __future__ import annotations

import json
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
LONG_FRAMES = 2000
"""Frames of the long input (the server's frame limit is raised to match): its registration takes minutes on any
CPU, while what the tests do between its first registered frames and Stop (or the tab close) takes seconds, so no
run of it can finish first however fast or loaded the machine is. Offline runs read every frame before registering
(~1 ms a frame), so this length costs the suite seconds, not minutes."""

pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_video(path: Path, frames, fps: float = 5.0) -> Path:
    """Write ``frames`` (an iterable of ``(H, W, 3)`` uint8 RGB images of one size) as an mp4 video."""
    import cv2

    out = None
    for f in frames:
        if out is None:
            out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (f.shape[1], f.shape[0]))
        out.write(np.ascontiguousarray(f[..., ::-1]))
    out.release()
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from slam3r.data.synth import render_sequence

    root = tmp_path_factory.mktemp("inputs")
    seq = render_sequence(seed=1_000_003, num_frames=15, width=128, height=96)
    tex = np.random.default_rng(0).integers(0, 256, (48, 64 + 2 * LONG_FRAMES, 3), dtype=np.uint8)
    long = (tex[:, 2 * i:2 * i + 64] for i in range(LONG_FRAMES))  # a texture sliding by
    (root / "notes.txt").write_text("not a video")
    return {"video": write_video(root / "room.mp4", seq.rgb), "one_frame": write_video(root / "one.mp4", seq.rgb[:1]),
            "long": write_video(root / "long.mp4", long), "text": root / "notes.txt"}


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
           "--port", str(port), "--work-dir", str(root / "work"), "--preview-every", "5",
           "--max-frames", str(LONG_FRAMES)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
    env.pop("GRADIO_TEMP_DIR", None)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: proc.poll() is not None or answers(url), 120, "slam3r app to start")
        if proc.poll() is not None:
            pytest.fail(f"slam3r app exited with {proc.returncode}:\n{log.read_text()}")
        yield url, log, root / "work"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def wait_until(cond, timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll a server-side state (a file, a log line) until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str):
    pg = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    pg.set_default_timeout(180_000)  # generous: CI machines may be shared and slow
    pg.goto(url)
    pg.wait_for_selector("#run")
    return pg


@pytest.fixture(scope="module")
def page(browser, server):
    pg = open_page(browser, server[0])
    yield pg
    pg.close()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest):
    """Keep ``test-artifacts/app_failure_<test>.png`` of the page when a test fails (for CI diagnosis)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "page" in request.fixturenames:
        shot(request.getfixturevalue("page"), f"app_failure_{request.node.name}")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def upload(page, path: Path, accepted: bool = True) -> None:
    """Replace the upload widget's files with ``path``; waits until the page lists it (when ``accepted``)."""
    clear_files(page)
    page.locator("#upload input[type=file]").set_input_files(str(path))
    if accepted:
        wait_listed(page, path.name)


def clear_files(page) -> None:
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
        page.locator("#upload").get_by_text("Click to Upload").wait_for()  # the empty drop zone is back


def wait_listed(page, name: str) -> None:
    """Wait until the upload widget lists ``name`` (its file table labels each row with the file name)."""
    page.locator(f"#upload td.filename[aria-label='{name}']").first.wait_for()


def set_number(page, elem_id: str, value: float, key: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press(key)


def set_stride(page, value: str) -> None:
    """Choose a keyframe stride in the pipeline parameters (a fixed stride skips the automatic choice)."""
    if not page.locator("#stride").is_visible():
        page.get_by_text("Pipeline parameters").click()
    box = page.locator("#stride input")
    box.click()
    page.get_by_role("option", name=value, exact=True).click()
    page.wait_for_function(f"document.querySelector('#stride input').value === '{value}'")


def status(page) -> str:
    return page.locator("#status").inner_text()


def wait_status(page, pattern: str) -> re.Match:
    """Wait until the status region matches the regular expression ``pattern``; returns the match in the text
    that matched (a later update, e.g. of a concurrent event, may already have replaced it)."""
    text = page.wait_for_function("p => { const t = document.querySelector('#status').innerText;"
                                  " return new RegExp(p).test(t) && t; }", arg=pattern).json_value()
    match = re.search(pattern, text)
    assert match, text
    return match


def record_statuses(page) -> None:
    """Record every text the status region shows from now on (``window.statuses``)."""
    page.evaluate("""() => { window.statuses = [document.querySelector('#status').innerText];
        window.statusObserver?.disconnect();
        window.statusObserver = new MutationObserver(() =>
            window.statuses.push(document.querySelector('#status').innerText));
        window.statusObserver.observe(document.querySelector('#status'),
            {subtree: true, childList: true, characterData: true}); }""")


def downloaded_ply(page, tmp_path: Path, href_end: str = ".ply"):
    from slam3r.data.ply import read_ply

    link = page.locator(f"#downloads a[href$='{href_end}']").first
    with page.expect_download() as info:
        link.click()
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    return read_ply(target)


def viewer_glb(page) -> tuple[str, dict]:
    """The 3D view's model URL and its glTF document."""
    from slam3r.data.glb import read_glb_json

    href = page.locator("#viewer a[data-testid=model3d-download-link]").get_attribute("href")
    with urllib.request.urlopen(href, timeout=30) as resp:
        data = resp.read()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"view-{os.getpid()}.glb"
    path.write_bytes(data)
    return href, read_glb_json(path)


def primitive_modes(doc: dict) -> list[int]:
    return [p["mode"] for p in doc["meshes"][0]["primitives"]]


def wait_new_view(page, old_href: str) -> tuple[str, dict]:
    page.wait_for_function("h => document.querySelector('#viewer a[data-testid=model3d-download-link]')?.href !== h",
                           arg=old_href)
    return viewer_glb(page)


def result_dirs(work: Path, scene: str) -> list[Path]:
    return [p.parent for p in work.glob(f"sessions/*/upload-*/result/{scene}_recon.ply")]


def expected_points(work: Path, conf_thres: float, num_points: int, scene: str = "room") -> int:
    (result,) = result_dirs(work, scene)
    confs = np.load(result / "preds" / "registered_confs.npy")
    return min(num_points, int((confs > conf_thres).sum()))


def log_count(log: Path, pattern: str) -> int:
    return len(re.findall(pattern, log.read_text()))


def error_badges(page) -> int:
    """Gradio's own red "Error" badges on components (shown when it refuses a value before the app sees it)."""
    return page.locator("[data-testid=status-tracker] :text-is('Error'):visible").count()


def test_first_page_inputs_errors_next_to_the_button(page, inputs) -> None:
    page.wait_for_selector("#status[aria-live=polite][role=status]", state="attached")  # set when the page loads
    shot(page, "app_first_page")
    run_box, status_box = page.locator("#run").bounding_box(), page.locator("#status").bounding_box()
    assert 0 <= status_box["y"] - (run_box["y"] + run_box["height"]) < 80  # right under the button row
    upload(page, inputs["text"], accepted=False)  # refused by the file widget itself
    page.get_by_text("Invalid file type").first.wait_for()
    page.click("#run")
    wait_status(page, "nothing uploaded")
    upload(page, inputs["one_frame"])
    page.click("#run")
    failed = wait_status(page, "at least 2 frames").string
    assert "Error: reconstruction failed" in failed and "/" not in failed.split("failed:")[1]
    set_number(page, "num-points", 0, "Enter")  # invalid: the app's message, no bare "Error" badges
    wait_status(page, "Points to keep must be a whole number of at least 1")
    page.click("#run")  # the click's blur re-applies the box (the same message); the run's refusal is its own
    wait_status(page, r"Error: not started: Points to keep")
    assert error_badges(page) == 0
    shot(page, "app_error")
    set_number(page, "num-points", 2_000_000, "Enter")
    wait_status(page, "Export settings will apply to the next reconstruction")


def test_reconstruct_refilter_download(page, inputs, server, tmp_path: Path) -> None:
    _, log, work = server
    set_number(page, "conf-thres-l2w", 1.5, "Tab")  # tiny random networks are not confident: low threshold
    upload(page, inputs["video"])
    page.click("#run")
    done = wait_status(page, "Done: room").string
    page.wait_for_function(  # the 3D view follows the summary
        "() => /\\/view_\\d+\\.glb$/.test(document.querySelector('#viewer a[data-testid=model3d-download-link]')"
        "?.href || '')")
    page.wait_for_selector("#viewer canvas")
    page.locator("#frames button img").nth(14).wait_for()
    (result,) = result_dirs(work, "room")
    assert len(list(result.parent.glob("preview/preview_*.glb"))) >= 1  # the incremental preview was written
    assert "on this server" not in done  # no server-wide run count
    first = downloaded_ply(page, tmp_path)
    assert len(first) == expected_points(work, 1.5, 2_000_000) > 0

    set_number(page, "conf-thres-l2w", 2.2, "Tab")  # release of the slider's number box: re-filter
    wait_status(page, "re-filters of this result: 1")
    second = downloaded_ply(page, tmp_path)
    assert len(second) == expected_points(work, 2.2, 2_000_000) < len(first)
    assert (second.conf > 2.2).all()

    set_number(page, "num-points", 5000, "Enter")
    wait_status(page, "re-filters of this result: 2")
    assert len(downloaded_ply(page, tmp_path)) == 5000
    set_number(page, "num-points", 4000, "Tab")  # blur applies like Enter
    wait_status(page, "re-filters of this result: 3")
    page.locator("#num-points input[type=number]").focus()
    page.locator("#num-points input[type=number]").press("Enter")  # unchanged value: nothing to do
    page.locator("#conf-thres-l2w input[type=number]").focus()  # and the blur of that Enter neither
    assert len(downloaded_ply(page, tmp_path)) == 4000
    assert "re-filters of this result: 3" in status(page)
    assert log_count(log, r"inference run \d+ started") == 2  # the 1-frame video and this one
    assert log_count(log, r"re-filter \d+ of room") == 3
    shot(page, "app_done")


def test_percentile_filter(page, server, tmp_path: Path) -> None:
    from slam3r.app.refilter import percentile_threshold

    (result,) = result_dirs(server[2], "room")
    set_number(page, "num-points", 2_000_000, "Enter")
    wait_status(page, "re-filters of this result: 4")
    set_number(page, "conf-thres-l2w", 1.0, "Tab")
    wait_status(page, "re-filters of this result: 5")
    set_number(page, "conf-pct", 40, "Tab")
    wait_status(page, "above the 40th percentile")
    confs = np.load(result / "preds" / "registered_confs.npy")
    cut = percentile_threshold(confs, 40)
    ply = downloaded_ply(page, tmp_path)
    assert len(ply) == int((confs > cut).sum()) and 0.55 < len(ply) / confs.size < 0.65
    assert (ply.conf > cut).all()
    set_number(page, "conf-pct", 0, "Tab")
    set_number(page, "conf-thres-l2w", 30, "Tab")  # nothing passes: the page says which control to change
    wait_status(page, r"No point passed the filters.*lower the L2W confidence threshold")
    set_number(page, "conf-thres-l2w", 1.5, "Tab")
    wait_status(page, r"points: \d+ \(L2W confidence > 1.5,")


def test_view_controls_cameras_trajectory_gallery(page, server) -> None:
    href, doc = viewer_glb(page)
    cams = json.loads((result_dirs(server[2], "room")[0] / "cameras.json").read_text())
    assert primitive_modes(doc) == [0, 1, 1]  # points, frusta, trajectory
    frusta, trajectory = (doc["accessors"][p["attributes"]["POSITION"]]["count"]
                          for p in doc["meshes"][0]["primitives"][1:])
    assert frusta == len(cams) * 8 * 2 and trajectory == (len(cams) - 1) * 2
    page.locator("#show-cameras input").uncheck()
    href, doc = wait_new_view(page, href)
    assert primitive_modes(doc) == [0, 1]
    assert doc["accessors"][doc["meshes"][0]["primitives"][1]["attributes"]["POSITION"]]["count"] == trajectory
    page.locator("#show-trajectory input").uncheck()
    href, doc = wait_new_view(page, href)
    assert primitive_modes(doc) == [0]
    page.locator("#show-cameras input").check()
    href, doc = wait_new_view(page, href)
    assert primitive_modes(doc) == [0, 1]
    thumbs = page.locator("#frames button img")
    assert thumbs.count() == 15  # every input frame
    thumbs.nth(7).click()
    wait_status(page, "Frame 7 selected")
    href, doc = wait_new_view(page, href)
    assert primitive_modes(doc) == [0, 1, 0, 1]  # + the frame's points and frustum, highlighted
    page.locator("#highlight input").uncheck()
    href, doc = wait_new_view(page, href)
    assert primitive_modes(doc) == [0, 1]
    page.locator("#show-trajectory input").check()
    wait_new_view(page, href)


def test_example_input_one_click_away(page, server) -> None:
    clear_files(page)
    page.click("#example")
    wait_listed(page, "synthetic_room.mp4")
    page.click("#run")
    wait_status(page, r"Done: synthetic_room — 30 frames")
    assert not result_dirs(server[2], "room")  # the previous result was replaced, not kept
    page.click("#clear")
    wait_status(page, "^Ready.$")
    sync_api.expect(page.locator("#frames button img")).to_have_count(0)
    page.locator("#upload").get_by_text("Click to Upload").wait_for()
    wait_until(lambda: not list(server[2].glob("sessions/*/upload-*")), 30, "Clear to delete the result")


def test_stop_an_upload_run_keeps_what_was_registered(page, inputs, server, tmp_path: Path) -> None:
    set_number(page, "conf-thres-l2w", 1.5, "Tab")
    set_number(page, "num-points", 50_000, "Enter")  # the export after Stop writes at most this many points
    set_stride(page, "1")
    set_number(page, "video-fps", 0, "Tab")  # every frame of the long video
    upload(page, inputs["long"])
    page.click("#run")
    wait_status(page, r"Reconstructing long")  # the session's run has started (it reads the frames first)
    set_number(page, "conf-thres-l2w", 1.6, "Tab")  # changed during the run: applies to this run's export
    wait_status(page, rf"registered: [1-9]\d* of {LONG_FRAMES} \(3D preview updating\)\s+"
                      r"New export settings \(threshold 1\.6, percentile 0 %, 50000 points\) will be applied")
    page.wait_for_selector("#viewer canvas")
    shot(page, "app_running")
    page.click("#stop")
    t0 = time.monotonic()  # from the delivered click: a loaded browser's own input delay is not the app's
    match = wait_status(page, r"Stopped: long — (\d+) frames")
    elapsed = time.monotonic() - t0
    print(f"stop took {elapsed:.2f} s")
    assert elapsed < 5.0, f"stopping took {elapsed:.1f} s"
    kept = int(match.group(1))
    assert 0 < kept < LONG_FRAMES
    assert "export settings changed during the run were applied" in match.string
    (result,) = result_dirs(server[2], "long")
    summary = json.loads((result / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["frames"] == kept
    assert summary["export"]["conf_thres_l2w"] == 1.6
    ply = downloaded_ply(page, tmp_path)
    assert len(ply) == summary["points"] > 0 and (ply.conf > 1.6).all()
    set_number(page, "conf-thres-l2w", 1.5, "Tab")
    wait_status(page, r"L2W confidence > 1.5,")
    assert log_count(server[1], r"inference run \d+ stopped: long") == 1
    set_number(page, "num-points", 2_000_000, "Enter")
    wait_status(page, r"L2W confidence > 1.5, at most 2000000")
    set_number(page, "video-fps", 5, "Tab")
    set_stride(page, "auto")


def test_closing_the_tab_stops_its_run_and_deletes_its_files(browser, page, inputs, server) -> None:
    url, log, work = server
    before = set(work.glob("sessions/*"))
    other = open_page(browser, url)
    set_stride(other, "1")
    set_number(other, "video-fps", 0, "Tab")
    upload(other, inputs["long"])
    other.click("#run")
    wait_status(other, r"registered: [1-9]")
    (folder,) = set(work.glob("sessions/*")) - before
    assert list(folder.glob("upload-*/.result.partial-*/preds"))  # the run's outputs, staged until it ends
    closed = log_count(log, "session closed")
    other.close()
    wait_until(lambda: log_count(log, "session closed") > closed, 60, "the server to see the tab close")
    assert not folder.exists()
    assert log_count(log, r"inference run \d+ stopped: long") == 2  # this one and the Stop test's
    # the slot is free again: this page's next run starts and finishes
    upload(page, inputs["video"])
    page.click("#run")
    wait_status(page, "Done: room")


def test_live_stream_tab(page, inputs, server) -> None:
    page.get_by_role("tab", name="Live stream").click()
    page.fill("#stream textarea, #stream input", "/etc/hostname")  # server files are not a live source
    page.click("#live-start")
    wait_status(page, "is not a camera index")
    handler = partial(SimpleHTTPRequestHandler, directory=str(inputs["video"].parent))
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:  # an HTTP video stream that ends after 15 frames: registered causally, then exported
        page.fill("#stream textarea, #stream input", f"http://127.0.0.1:{http.server_port}/room.mp4")
        page.click("#live-start")
        done = wait_status(page, "Done: live").string
    finally:
        http.shutdown()
        http.server_close()
    assert "15 frames" in done
    assert page.locator("#downloads a[href$='live_recon.glb']").count() == 1
    assert log_count(server[1], r"inference run \d+ started: live \(online\)") == 1
    assert not list(server[2].glob("sessions/*/upload-*"))  # the session's previous result was replaced


def test_rabbitmq_wrong_port_is_an_error_with_a_reason(page) -> None:
    page.get_by_role("tab", name="RabbitMQ service").click()
    page.locator("#conf-thres-l2w").wait_for(state="hidden")  # controls of reconstructions only are hidden
    assert not page.get_by_text("Pipeline parameters").is_visible() and not page.locator("#frames").is_visible()
    with socket.socket() as silent:  # accepts connections but never speaks AMQP
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        page.fill("#amqp-url textarea, #amqp-url input", f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/")
        record_statuses(page)
        page.click("#amqp-connect")
        wait_status(page, r"Error: RabbitMQ: cannot connect to amqp://127\.0\.0\.1:\d+/: no AMQP handshake")
    refused = free_port()
    page.fill("#amqp-url textarea, #amqp-url input", f"amqp://guest:guest@127.0.0.1:{refused}/")
    page.click("#amqp-connect")
    refusal = wait_status(page, f"127.0.0.1:{refused}/: connection refused").string
    seen = page.evaluate("window.statuses")
    assert any("Connecting" in s for s in seen) and not any("Subscribed" in s for s in seen), seen
    assert "guest" not in refusal


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
    cfg = ServiceConfig(rabbitmq_url=url, name_prefix=f"appbrowser-{os.getpid()}-{time.monotonic_ns()}.")
    try:
        page.get_by_role("tab", name="RabbitMQ service").click()
        page.fill("#amqp-url textarea, #amqp-url input", url)
        page.fill("#amqp-prefix textarea, #amqp-prefix input", cfg.name_prefix)
        page.click("#amqp-connect")
        wait_status(page, "Subscribed to the service")  # shown only once the queues are bound: nothing is lost
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
        wait_status(page, "point messages: 3, poses: 3")
        page.click("#amqp-disconnect")
        assert "192 points kept" in wait_status(page, "Disconnected").string
        assert page.locator("#downloads a[href$='service_points.ply']").count() == 1
    finally:
        ch = conn.channel()
        for base in (cfg.pointcloud_exchange, cfg.pose_exchange):
            ch.exchange_delete(cfg.name(base))
        conn.close()
    page.get_by_role("tab", name="Upload").click()
    page.locator("#conf-thres-l2w").wait_for(state="visible")
