"""Per-browser-session server state: each session's own folder (all its uploads and results, served to that page
only, deleted when the tab closes), what it has running (for Stop), and the server-wide slot that lets one
reconstruction run at a time, from its start until its thread has exported and ended."""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0
"""How long closing a session waits for its run to stop before deleting its folder anyway."""


class Stoppable(Protocol):
    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> bool | None: ...


class Sessions:
    """Session folders under ``work_dir / "sessions"`` (unguessable names, not the browser's session id), running
    jobs by session, the files each session uploaded into ``upload_root`` (Gradio's upload folder), and
    :attr:`slot`, the one-at-a-time reconstruction lock."""

    def __init__(self, work_dir: Path, upload_root: Path | None = None) -> None:
        self.root = Path(work_dir) / "sessions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.upload_root = upload_root.resolve() if upload_root is not None else None
        self.slot = threading.Lock()
        self._folders: dict[str, Path] = {}
        self._uploads: dict[str, set[Path]] = {}
        self._running: dict[str, Stoppable] = {}
        self._lock = threading.Lock()

    def folder(self, session: str) -> Path:
        """This session's folder (created on first use)."""
        with self._lock:
            if session not in self._folders:
                self._folders[session] = self.root / secrets.token_urlsafe(16)
                self._folders[session].mkdir()
            return self._folders[session]

    def new_run_dir(self, session: str, kind: str) -> Path:
        """A fresh folder for one run of ``kind`` (upload, live, service) inside the session's folder."""
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.folder(session)))

    def note_uploads(self, session: str, paths: list[str] | None) -> None:
        """Remember the session's uploaded files (inside ``upload_root``) to delete them when the tab closes."""
        if self.upload_root is None:
            return
        mine = {Path(p).resolve() for p in paths or []}
        with self._lock:
            self._uploads.setdefault(session, set()).update(p for p in mine if p.is_relative_to(self.upload_root))

    def owns(self, session: str, path: str | Path) -> bool:
        """Whether ``path`` lies inside this session's folder."""
        folder = self._folders.get(session)
        return folder is not None and Path(path).resolve().is_relative_to(folder.resolve())

    def set_running(self, session: str, job: Stoppable | None) -> None:
        with self._lock:
            if job is None:
                self._running.pop(session, None)
            else:
                self._running[session] = job

    def running(self, session: str) -> Stoppable | None:
        return self._running.get(session)

    def close(self, session: str) -> None:
        """The tab closed: stop the session's run, wait for it to end, delete the session's folder."""
        job = self._running.get(session)
        if job is not None:
            job.stop()
            if job.join(STOP_WAIT_S) is False:
                log.warning("a closed session's run did not stop within %g s", STOP_WAIT_S)
        self.set_running(session, None)
        with self._lock:
            folder = self._folders.pop(session, None)
            uploads = self._uploads.pop(session, set())
        for path in uploads:  # Gradio keeps each upload in a folder of its own
            path.unlink(missing_ok=True)
            if path.parent != self.upload_root and not any(path.parent.iterdir()):
                path.parent.rmdir()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("session closed: its run stopped, %s", "its files deleted" if folder or uploads else "no files")


_ABS_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s/'\"`]+/)+([^\s/'\"`]*)")


def public_message(text: str) -> str:
    """``text`` with absolute file paths cut down to their last component (messages shown in the page must not
    reveal the server's folders); URLs such as ``rtsp://host/path`` are left alone."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "(folder)", text)
