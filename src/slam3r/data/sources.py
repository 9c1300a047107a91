"""Frame sources: iterate RGB frames from an image folder, a list of images, a video file, or a live camera /
RTSP / HTTP stream, with one interface.

Every source yields ``(index, rgb, timestamp_ns)``: ``index`` is the frame's position in the original sequence
(list position, video frame number, or the count of frames read from a stream), so frames that are skipped or
subsampled away leave gaps; ``rgb`` is (H, W, 3) uint8; ``timestamp_ns`` is an int (a video frame's
presentation time in the container, a stream's capture time, a TUM frame's ``rgb.txt`` time) or None (image
files). Unreadable frames (0-byte, permission denied, undecodable) are skipped with a ``warnings.warn``, counted in
``source.skipped`` and named in ``source.skipped_items``; a source with nothing readable at all raises ValueError
naming the path.
"""

from __future__ import annotations

import importlib.util
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
Frame = tuple[int, np.ndarray, "int | None"]
_TRAILING_INT = re.compile(r"(\d+)$")
_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in _DIGITS.split(name)]


_REPLICA_NAME = re.compile(r"^(frame|depth)\d+\.(jpe?g|png)$", re.IGNORECASE)
_SEVEN_SCENES_NAME = re.compile(r"^frame-\d+\.(color|depth)\.png$", re.IGNORECASE)


def split_depth_maps(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the file names of one folder into (colour frames, depth maps), recognising depth maps by the dataset
    layouts the project reads, never by a substring: Replica ``results/`` (``depthNNNNNN.png`` beside
    ``frameNNNNNN.jpg``) and 7-Scenes ``seq-XX/`` (``frame-NNNNNN.depth.png`` beside ``frame-NNNNNN.color.png``).
    TUM RGB-D keeps its depth maps in a folder of their own (see :func:`scan_image_folder`)."""
    replica = [n for n in names if _REPLICA_NAME.match(n)]
    seven = [n for n in names if _SEVEN_SCENES_NAME.match(n)]
    depth: set[str] = set()
    if any(n.lower().startswith("frame") for n in replica):
        depth |= {n for n in replica if n.lower().startswith("depth")}
    if any(".color." in n.lower() for n in seven):
        depth |= {n for n in seven if ".depth." in n.lower()}
    return [n for n in names if n not in depth], [n for n in names if n in depth]


def sort_image_names(names: Sequence[str]) -> list[str]:
    """SLAM3R's frame order of one folder's image names, without the depth maps of a recognised RGB-D layout
    (:func:`split_depth_maps`): sorted by the integer right before the extension when every name has one, else
    in natural order ("img2" before "img10")."""
    kept, _ = split_depth_maps(names)
    nums = [_TRAILING_INT.search(Path(n).stem) for n in kept]
    if kept and all(nums):
        return [n for _, n in sorted(zip((int(m.group(1)) for m in nums), kept))]
    return sorted(kept, key=_natural_key)


@dataclass
class FolderImages:
    """The frames of an image folder: ``paths`` in SLAM3R's order, the ``depth_maps`` left out (names),
    ``timestamps_ns`` when the layout gives capture times (TUM ``rgb.txt``), and the ``layout`` recognised."""

    paths: list[Path]
    depth_maps: list[str]
    timestamps_ns: list[int] | None = None
    layout: str = "images"


def scan_image_folder(folder: str | Path) -> FolderImages:
    """Image entries of ``folder`` (not recursive, no hidden names; an entry named like an image that cannot be
    read is kept, to be skipped with a warning when read). A TUM RGB-D sequence folder (``rgb.txt`` + ``rgb/``)
    gives its colour frames with their timestamps; its ``depth/`` folder is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if (folder / "rgb.txt").is_file() and (folder / "rgb").is_dir():
        from slam3r.data.tum import read_file_list

        stamps, names = read_file_list(folder / "rgb.txt")
        return FolderImages([folder / n for n in names], [], [int(round(t * 1e9)) for t in stamps], "tum")
    if folder.name == "depth" and (folder.parent / "depth.txt").is_file():
        raise ValueError(f"{folder} holds the depth maps of a TUM RGB-D sequence: pass the sequence folder "
                         f"{folder.parent} or its rgb/ folder")
    try:
        entries = list(folder.iterdir())
    except OSError as exc:  # e.g. permission denied
        raise ValueError(f"cannot list image folder {folder}: {exc.strerror or exc}") from None
    names = [p.name for p in entries if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    kept, depth = split_depth_maps(names)
    ordered = sort_image_names(kept)
    if not ordered:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) found in folder {folder}")
    return FolderImages([folder / n for n in ordered], depth, None, "rgbd" if depth else "images")


def list_image_folder(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` in SLAM3R's frame order (see :func:`scan_image_folder`)."""
    return scan_image_folder(folder).paths


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """OpenCV BGR / gray / BGRA image -> contiguous RGB uint8 (H, W, 3)."""
    import cv2

    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class FrameSource:
    """Base class: iterate ``(index, rgb (H, W, 3) uint8, timestamp_ns | None)``.

    Attributes: ``skipped`` (unreadable frames skipped so far) and ``skipped_items`` (each named, with the
    reason), ``excluded`` (files that are not frames, e.g. depth maps of an RGB-D layout), ``name`` (what is being
    read), ``expected_frames`` (number of frames the source expects to yield, None when unknown or live),
    ``end_reason`` (set when a live source ended on its own: a stream or camera that stopped).
    """

    name: str = ""
    expected_frames: int | None = None
    end_reason: str | None = None

    def __init__(self) -> None:
        self.skipped = 0
        self.skipped_items: list[str] = []
        self.excluded: list[str] = []

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _skip(self, what: str, reason: str = "") -> None:
        self.skipped += 1
        self.skipped_items.append(f"{what}: {reason}" if reason else what)
        warnings.warn(f"skipping unreadable frame {what}" + (f" ({reason})" if reason else ""), RuntimeWarning,
                      stacklevel=3)


class _TimeSubsampler:
    """Keeps about ``fps`` frames per second of presentation time: the first frame at or after each multiple of
    1/fps past the first kept frame (1 ms tolerance, so exact grid times are kept). ``fps`` None keeps all."""

    def __init__(self, fps: float | None) -> None:
        self.period = int(round(1e9 / fps)) if fps else 0
        self.tol = min(1_000_000, self.period // 100)
        self.t0: int | None = None
        self.due = 0

    def keep(self, ts_ns: int | None) -> bool:
        if not self.period or ts_ns is None:
            return True
        if self.t0 is None:
            self.t0 = ts_ns
        elif ts_ns < self.due - self.tol:
            return False
        self.due = self.t0 + ((ts_ns - self.t0 + self.tol) // self.period + 1) * self.period
        return True


def _check_fps(fps: float | None) -> float | None:
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    return fps


class ImageListSource(FrameSource):
    """Frames from a list of image paths, in the given order (index = position in the list). With capture times
    (``timestamps_ns``, one per path) ``fps`` keeps about that many frames per second; without, it is refused."""

    def __init__(self, paths: Sequence[str | Path], name: str | None = None,
                 timestamps_ns: Sequence[int] | None = None, fps: float | None = None):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("empty list of image paths")
        self.name = name or f"{len(self.paths)} images"
        if timestamps_ns is not None and len(timestamps_ns) != len(self.paths):
            raise ValueError(f"{len(timestamps_ns)} timestamps for {len(self.paths)} images")
        if _check_fps(fps) and timestamps_ns is None:
            raise ValueError(f"--fps needs the frames' capture times, which images ({self.name}) do not have: "
                             "drop --fps, or pass every n-th image")
        self.timestamps_ns = list(timestamps_ns) if timestamps_ns is not None else None
        self.fps = fps
        self.expected_frames = len(self.paths)
        if fps and self.timestamps_ns and len(self.paths) > 1:
            span = (self.timestamps_ns[-1] - self.timestamps_ns[0]) / 1e9
            self.expected_frames = min(len(self.paths), int(span * fps) + 1)

    def __iter__(self) -> Iterator[Frame]:
        from slam3r.data.rgbd import read_rgb

        yielded = 0
        sub = _TimeSubsampler(self.fps)
        for i, p in enumerate(self.paths):
            ts = self.timestamps_ns[i] if self.timestamps_ns is not None else None
            if not sub.keep(ts):
                continue
            try:
                rgb = read_rgb(p)
            except (OSError, ValueError) as exc:  # missing, empty, permission denied, a directory, undecodable
                self._skip(str(p), _reason(exc))
                continue
            yielded += 1
            yield i, rgb, ts
        if yielded == 0:
            raise ValueError(f"no readable images in {self.name} ({self.skipped} unreadable)")


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class ImageFolderSource(ImageListSource):
    """Frames from the images of a folder in SLAM3R's order (see :func:`scan_image_folder`); ``fps`` only for a
    layout with capture times (TUM)."""

    def __init__(self, folder: str | Path, fps: float | None = None):
        found = scan_image_folder(folder)
        super().__init__(found.paths, name=str(folder), timestamps_ns=found.timestamps_ns, fps=fps)
        self.excluded = [str(Path(folder) / n) for n in found.depth_maps]
        self.layout = found.layout


class VideoSource(FrameSource):
    """Frames of a video file with their presentation times (ns): decoded with PyAV when it is installed
    (``backend="auto"`` / ``"pyav"``), else OpenCV (``CAP_PROP_POS_MSEC``), so variable-frame-rate videos keep
    their true times. ``fps`` keeps about that many frames per second of video time (e.g. 5, as the reference app
    does), None keeps all. A frame that fails to decode is skipped with a warning; a file that announces more
    frames than it holds (e.g. OpenCV's ``tree.avi``) just ends."""

    def __init__(self, path: str | Path, fps: float | None = None, max_bad_frames: int = 25,
                 backend: str = "auto"):
        super().__init__()
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        if backend not in ("auto", "pyav", "opencv"):
            raise ValueError(f"backend must be auto, pyav or opencv, got {backend!r}")
        if backend == "auto":
            backend = "pyav" if importlib.util.find_spec("av") is not None else "opencv"
        self.backend = backend
        self.fps = _check_fps(fps)
        self.max_bad_frames = max_bad_frames
        self.native_fps, self.frame_count = _probe_video(self.path, backend)
        if self.frame_count > 0:
            keep = fps / self.native_fps if fps and self.native_fps > fps else 1.0
            self.expected_frames = int(np.ceil(self.frame_count * keep))

    def __iter__(self) -> Iterator[Frame]:
        decode = _decode_pyav if self.backend == "pyav" else _decode_opencv
        yielded, bad_run, last_ts = 0, 0, None
        sub = _TimeSubsampler(self.fps)
        step_ns = int(round(1e9 / self.native_fps)) if self.native_fps > 0 else 1
        for i, img, ts, error in decode(self.path):
            if ts is not None and last_ts is not None and ts <= last_ts:
                ts = last_ts + step_ns  # some AVIs mislabel their last frames (OpenCV even reports 0 there)
            last_ts = ts if ts is not None else last_ts
            if img is None:
                bad_run += 1
                self._skip(f"{i} of {self.path}", error or "")
                if bad_run >= self.max_bad_frames:
                    warnings.warn(f"{self.path}: {bad_run} frames in a row failed to decode, stopping there",
                                  RuntimeWarning, stacklevel=2)
                    break
                continue
            bad_run = 0
            if sub.keep(ts):
                yielded += 1
                yield i, img, ts
        if yielded == 0:
            raise ValueError(f"no decodable frames in video {self.path} ({self.skipped} unreadable)")


_Decoded = tuple[int, "np.ndarray | None", "int | None", "str | None"]


def _probe_video(path: Path, backend: str) -> tuple[float, int]:
    """(nominal frame rate or 0, announced frame count or 0) of a video; ValueError when it cannot be opened."""
    if backend == "pyav":
        import av

        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"no video stream in {path}")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                return float(rate) if rate else 0.0, int(stream.frames or 0)
        except av.error.FFmpegError as exc:
            raise ValueError(f"cannot open video (unreadable or unsupported format): {path} ({exc})") from None
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video (unreadable or unsupported format): {path}")
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0), int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()


def _decode_pyav(path: Path) -> Iterator[_Decoded]:
    """(index, rgb or None, presentation time ns, error) per frame, in presentation order, with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        i = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                yield i, None, None, str(exc)
                i += 1
                continue
            for frame in frames:
                ts = None
                if frame.pts is not None and frame.time_base is not None:
                    ts = int(round(frame.pts * frame.time_base * 10**9))
                yield i, frame.to_ndarray(format="rgb24"), ts, None
                i += 1


def _decode_opencv(path: Path) -> Iterator[_Decoded]:
    """(index, rgb or None, presentation time ns, error) per frame with OpenCV (``CAP_PROP_POS_MSEC`` after each
    grab). Failed grabs count as broken frames only when a later grab succeeds; at the end they are no frames."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video (unreadable or unsupported format): {path}")
    i, failed = 0, 0
    announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    try:
        while True:
            if not cap.grab():
                failed += 1
                if i + failed >= announced or failed > 25:  # past the announced end, or the decoder is stuck
                    return
                continue
            for _ in range(failed):
                yield i, None, None, "grab failed"
                i += 1
            failed = 0
            ts = int(round(cap.get(cv2.CAP_PROP_POS_MSEC) * 1e6))
            ok, img = cap.retrieve()
            yield (i, _to_rgb(img), ts, None) if ok and img is not None else (i, None, None, "decode failed")
            i += 1
    finally:
        cap.release()


class StreamSource(FrameSource):
    """Frames from a camera index (e.g. 0) or a stream URL (RTSP / HTTP / ...), until the stream ends or
    ``max_failures`` consecutive reads fail. ``fps`` throttles by capture time; timestamps are capture times
    (``time.time_ns()``)."""

    def __init__(self, spec: int | str, fps: float | None = None, max_failures: int = 30):
        super().__init__()
        self.spec = spec
        self.name = f"camera {spec}" if isinstance(spec, int) else str(spec)
        self.fps = _check_fps(fps)
        self.max_failures = max_failures

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        cap = cv2.VideoCapture(self.spec)
        if not cap.isOpened():
            raise ValueError(f"cannot open {self.name}")
        index, failures, next_ns = 0, 0, 0
        period_ns = int(1e9 / self.fps) if self.fps else 0
        try:
            while failures < self.max_failures:
                ok, img = cap.read()
                now = time.time_ns()
                if not ok or img is None:
                    failures += 1
                    time.sleep(0.01)
                    continue
                failures = 0
                if now >= next_ns:
                    next_ns = now + period_ns
                    yield index, _to_rgb(img), now
                index += 1
            self.end_reason = f"{self.name} stopped sending frames ({failures} failed reads in a row)"
        finally:
            cap.release()


def open_source(spec: str | int | Path | Sequence[str | Path], fps: float | None = None) -> FrameSource:
    """A frame source for ``spec``: a list of image paths, an image folder, an image file, a video file, a camera
    index (int or digit string) or a stream URL. ``fps`` subsamples videos, streams and image folders with capture
    times (TUM); elsewhere on images it is refused (ValueError), as images carry no frame rate."""
    if isinstance(spec, (list, tuple)):
        return ImageListSource(spec, fps=fps)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return StreamSource(int(spec), fps=fps)
    if isinstance(spec, str) and spec.lower().startswith(STREAM_SCHEMES):
        return StreamSource(spec, fps=fps)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, fps=fps)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageListSource([path], name=str(path), fps=fps)
    return VideoSource(path, fps=fps)
