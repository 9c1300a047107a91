"""What the machine lends this process."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cores(cgroup: Path | None = None) -> int:
    """CPU cores this process may use: its affinity set (what ``docker --cpuset-cpus``, ``taskset`` or a batch
    scheduler pins it to), capped by a cgroup CPU quota (``docker --cpus=2``, a compose ``cpus:`` limit, a
    Kubernetes CPU limit), rounded up. Not ``os.cpu_count()``, which counts every core of the host and so
    oversubscribes a container. ``cgroup``: the cgroup file system's root (default :data:`CGROUP`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cgroup_cpu_quota(cgroup: Path | None = None) -> float | None:
    """CPUs' worth of time the process's cgroup may use (quota / period), or ``None`` without a limit: cgroup v2
    ``cpu.max`` (``"200000 100000"``, ``"max 100000"``), else v1 ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
    (quota -1 = none), under ``cgroup`` (default :data:`CGROUP`)."""
    cgroup = CGROUP if cgroup is None else cgroup
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
