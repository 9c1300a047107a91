"""Frame sources: iterate RGB frames from an image folder, a list of images, a video file, or a live camera /
RTSP / HTTP stream, with one interface.

Every source yields ``(index, rgb, timestamp_ns)``: ``index`` is the frame's position in the original sequence
(list position, video frame number, or the count of frames read from a stream), so frames that are skipped or
subsampled away leave gaps; ``rgb`` is (H, W, 3) uint8; ``timestamp_ns`` is an int (video position or capture
time) or None (image files). Unreadable frames are skipped with a ``warnings.warn`` and counted in
``source.skipped``; a source with nothing readable at all raises ValueError naming the path.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
Frame = tuple[int, np.ndarray, "int | None"]
_TRAILING_INT = re.compile(r"(\d+)$")
_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in _DIGITS.split(name)]


def sort_image_names(names: Sequence[str]) -> list[str]:
    """SLAM3R's frame order: drop names containing "depth", sort by the integer right before the extension when
    every name has one, else in natural order ("img2" before "img10")."""
    kept = [n for n in names if "depth" not in n.lower()]
    nums = [_TRAILING_INT.search(Path(n).stem) for n in kept]
    if kept and all(nums):
        return [n for _, n in sorted(zip((int(m.group(1)) for m in nums), kept))]
    return sorted(kept, key=_natural_key)


def list_image_folder(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (not recursive, no hidden files) in SLAM3R's frame order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    names = [p.name for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    ordered = sort_image_names(names)
    if not ordered:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) found in folder {folder}")
    return [folder / n for n in ordered]


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

    Attributes: ``skipped`` (unreadable frames skipped so far), ``name`` (what is being read),
    ``expected_frames`` (number of frames the source expects to yield, None when unknown or live).
    """

    name: str = ""
    expected_frames: int | None = None

    def __init__(self) -> None:
        self.skipped = 0

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _skip(self, what: str) -> None:
        self.skipped += 1
        warnings.warn(f"skipping unreadable frame {what}", RuntimeWarning, stacklevel=3)


class ImageListSource(FrameSource):
    """Frames from a list of image paths, in the given order (index = position in the list)."""

    def __init__(self, paths: Sequence[str | Path], name: str | None = None):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("empty list of image paths")
        self.name = name or f"{len(self.paths)} images"
        self.expected_frames = len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        from slam3r.data.rgbd import read_rgb

        yielded = 0
        for i, p in enumerate(self.paths):
            try:
                rgb = read_rgb(p)
            except (FileNotFoundError, ValueError):
                self._skip(str(p))
                continue
            yielded += 1
            yield i, rgb, None
        if yielded == 0:
            raise ValueError(f"no readable images in {self.name} ({self.skipped} unreadable)")


class ImageFolderSource(ImageListSource):
    """Frames from the images of a folder in SLAM3R's order (see ``sort_image_names``)."""

    def __init__(self, folder: str | Path):
        super().__init__(list_image_folder(folder), name=str(folder))


class VideoSource(FrameSource):
    """Frames of a video file decoded with OpenCV; ``fps`` keeps about that many frames per second of video
    (e.g. 5, as the reference app does), None keeps all. Timestamps are the frames' positions in the video."""

    def __init__(self, path: str | Path, fps: float | None = None, max_bad_frames: int = 25):
        import cv2

        super().__init__()
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise ValueError(f"cannot open video (unreadable or unsupported format): {self.path}")
            self.native_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self.step = self.native_fps / fps if fps and self.native_fps > 0 and fps < self.native_fps else 1.0
        self.max_bad_frames = max_bad_frames
        if self.frame_count > 0:
            self.expected_frames = int(np.ceil(self.frame_count / self.step))

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        if self.fps and self.native_fps <= 0:
            warnings.warn(f"{self.path}: unknown native frame rate, keeping every frame", RuntimeWarning,
                          stacklevel=2)
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise ValueError(f"cannot open video (unreadable or unsupported format): {self.path}")
        yielded, bad_run, i, due = 0, 0, 0, 0.0
        try:
            while True:
                if not cap.grab():
                    # A failed grab before the announced end is a broken frame; give up after a run of them.
                    if i < self.frame_count and bad_run < self.max_bad_frames:
                        bad_run += 1
                        self._skip(f"{i} of {self.path}")
                        i += 1
                        continue
                    break
                bad_run = 0
                if i + 1e-6 >= due:
                    ok, img = cap.retrieve()
                    if ok and img is not None:
                        ts = int(round(i * 1e9 / self.native_fps)) if self.native_fps > 0 else None
                        yielded += 1
                        due += self.step
                        yield i, _to_rgb(img), ts
                    else:
                        self._skip(f"{i} of {self.path}")
                i += 1
        finally:
            cap.release()
        if yielded == 0:
            raise ValueError(f"no decodable frames in video {self.path} ({self.skipped} unreadable)")


class StreamSource(FrameSource):
    """Frames from a camera index (e.g. 0) or a stream URL (RTSP / HTTP / ...), until the stream ends or
    ``max_failures`` consecutive reads fail. ``fps`` throttles by capture time; timestamps are capture times
    (``time.time_ns()``)."""

    def __init__(self, spec: int | str, fps: float | None = None, max_failures: int = 30):
        super().__init__()
        self.spec = spec
        self.name = f"camera {spec}" if isinstance(spec, int) else str(spec)
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
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
        finally:
            cap.release()


def open_source(spec: str | int | Path | Sequence[str | Path], fps: float | None = None) -> FrameSource:
    """A frame source for ``spec``: a list of image paths, an image folder, an image file, a video file, a camera
    index (int or digit string) or a stream URL. ``fps`` subsamples videos and streams."""
    if isinstance(spec, (list, tuple)):
        return ImageListSource(spec)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return StreamSource(int(spec), fps=fps)
    if isinstance(spec, str) and spec.lower().startswith(STREAM_SCHEMES):
        return StreamSource(spec, fps=fps)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageListSource([path], name=str(path))
    return VideoSource(path, fps=fps)
