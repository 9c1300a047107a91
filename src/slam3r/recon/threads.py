"""The engine's background threads: one single-thread pool per kind of work (``slam3r-loop`` for loop closure,
``slam3r-register`` for the streaming pipeline), shared by every engine of the process, created on first use.
Pool threads finish their current job at interpreter exit."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict[str, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def worker(name: str) -> ThreadPoolExecutor:
    """The process's one thread for work ``name`` (its thread is named ``name_0``); jobs run in submission order."""
    with _LOCK:
        if name not in _POOLS:
            _POOLS[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return _POOLS[name]
