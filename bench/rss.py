"""Peak resident memory of this process, resettable per measured run (Linux ``/proc``; no slam3r import, so the
official code's subprocess can use it too)."""

from __future__ import annotations

import ctypes
import resource
from pathlib import Path


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (``VmHWM``) to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Hand memory the process has freed back to the system (glibc ``malloc_trim``), so the next run's peak starts
    from what is live; a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_gib() -> float:
    """Peak RSS in GiB since the last :func:`reset_peak` (or since the process started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
