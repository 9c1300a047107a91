"""What the machine lends this process."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity set (what ``docker --cpuset-cpus``, ``taskset`` or a batch
    scheduler grants), not ``os.cpu_count()`` (every core of the host, which oversubscribes a container)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
