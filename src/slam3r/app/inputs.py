"""Uploaded files -> a frame source: one video, several images, or a zip of an image folder. Everything else, and
uploads over the limits, is refused with an :class:`UploadError` whose message is shown in the page."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from slam3r.data.sources import IMAGE_EXTS, FrameSource, open_source, sort_image_names

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
ZIP_EXTS = (".zip",)
ACCEPTED = VIDEO_EXTS + IMAGE_EXTS + ZIP_EXTS


class UploadError(ValueError):
    """An upload the app cannot reconstruct; the message says why and what would work."""


@dataclass(frozen=True)
class UploadLimits:
    """Upload bounds: total size of the uploaded files (and of a zip's extracted images), and frames used."""

    max_mb: float = 500.0
    max_frames: int = 1000

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


def _kind(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in VIDEO_EXTS:
        return "video"
    if ext in IMAGE_EXTS:
        return "image"
    if ext in ZIP_EXTS:
        return "zip"
    raise UploadError(f"{path.name}: unsupported file type {ext or '(no extension)'!r}; upload one video "
                      f"({', '.join(VIDEO_EXTS)}), images ({', '.join(IMAGE_EXTS)}) or a .zip of an image folder")


def _extract_images(archive: Path, dest: Path, limits: UploadLimits) -> Path:
    """Extract the images of ``archive`` into ``dest``; returns the folder holding most of them."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UploadError(f"{archive.name}: not a readable zip archive") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()
                   and PurePosixPath(m.filename).suffix.lower() in IMAGE_EXTS
                   and not PurePosixPath(m.filename).name.startswith((".", "__MACOSX"))
                   and "__MACOSX" not in PurePosixPath(m.filename).parts]
        if not members:
            raise UploadError(f"{archive.name}: the zip contains no images ({', '.join(IMAGE_EXTS)})")
        if sum(m.file_size for m in members) > limits.max_bytes:
            raise UploadError(f"{archive.name}: the images inside exceed the {limits.max_mb:g} MB upload limit")
        folders = Counter(PurePosixPath(m.filename).parent for m in members)
        best = folders.most_common(1)[0][0]
        target = dest / "frames"
        target.mkdir(parents=True, exist_ok=True)
        for m in members:
            name = PurePosixPath(m.filename)
            if name.parent == best:  # flat copy by base name: no path from the archive reaches the disk
                with zf.open(m) as src, open(target / name.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return target


def open_upload(paths: Sequence[str | Path] | None, work_dir: str | Path, limits: UploadLimits,
                fps: float | None = None, skip_other_files: bool = False) -> tuple[FrameSource, str]:
    """Check the uploaded ``paths`` and open them as frames; returns the source and a scene name.

    One video (subsampled to ``fps``), one zip, or any number of images (ordered as SLAM3R orders a folder).
    ``skip_other_files`` (a folder upload) ignores files that are not images instead of refusing them."""
    files = [Path(p) for p in (paths or [])]
    if skip_other_files:
        files = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        if paths and not files:
            raise UploadError(f"the folder holds no images ({', '.join(IMAGE_EXTS)})")
    if not files:
        raise UploadError("nothing uploaded: add a video, images, a zip or a folder of images")
    kinds = [_kind(p) for p in files]
    total = sum(p.stat().st_size for p in files)
    if total > limits.max_bytes:
        raise UploadError(f"the upload is {total / 2**20:.1f} MB; the limit is {limits.max_mb:g} MB")
    if any(k != "image" for k in kinds) and len(files) > 1:
        raise UploadError("upload either one video, one zip, or images only (got "
                          f"{', '.join(p.name for p in files)})")
    kind, first = kinds[0], files[0]
    try:
        if kind == "video":
            return open_source(first, fps=fps), first.stem
        if kind == "zip":
            return open_source(_extract_images(first, Path(work_dir), limits)), first.stem
        by_name = {p.name: p for p in files}
        ordered = sort_image_names(list(by_name))
        if not ordered:
            raise UploadError("no usable images (names containing 'depth' are depth maps and are skipped)")
        return open_source([by_name[n] for n in ordered]), "images" if len(files) > 1 else first.stem
    except (ValueError, FileNotFoundError) as exc:
        if isinstance(exc, UploadError):
            raise
        raise UploadError(f"{first.name}: {exc}") from None
