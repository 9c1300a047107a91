"""``slam3r.system``: the cores the process may use."""

from __future__ import annotations

import os

from slam3r import system


def test_a_cgroup_cpu_quota_caps_the_cores(monkeypatch, tmp_path):
    """``docker --cpus=1.5`` on a host whose 8 cores the process may all run on: 2 cores (v2 and v1 layouts)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    v2.mkdir()
    (v1 / "cpu").mkdir(parents=True)
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert system.cgroup_cpu_quota(v2) == 1.5 and system.usable_cores(v2) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert system.cgroup_cpu_quota(v2) is None and system.usable_cores(v2) == 8
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert system.usable_cores(v1) == 3
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert system.usable_cores(v1) == 8
    (v2 / "cpu.max").write_text("1600000 100000\n")  # a quota above the affinity set: the affinity wins
    assert system.usable_cores(v2) == 8
