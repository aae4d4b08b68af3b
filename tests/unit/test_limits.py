"""The wall and the stopgap: cgroup v2 and v1 layouts as recorded trees, this machine's own tree,
and the arithmetic of time to the limit."""

from __future__ import annotations

import os
from pathlib import Path

from introspect import limits
from introspect.limits import MIB, Limit

V2_MOUNTINFO = ("25 30 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
                "rw,nsdelegate,memory_recursiveprot\n"
                "31 30 0:26 / /proc rw,nosuid,nodev,noexec,relatime shared:14 - proc proc rw\n")
V1_MOUNTINFO = ("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
                "36 31 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n")


def _tree(tmp: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = tmp / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _fix_mount(tmp: Path, mountinfo: str) -> str:
    # the recorded mount points, moved under the test's directory
    return mountinfo.replace(" /sys/fs/cgroup", f" {tmp}/sys/fs/cgroup")


def test_v2_takes_the_smallest_limit_up_the_tree_and_the_working_set(tmp_path: Path) -> None:
    # GIVEN a pod-like v2 hierarchy: the container at 2 GiB, its pod at 3 GiB, the slice unlimited
    g = "/sys/fs/cgroup/kubepods.slice/pod1/ctr"
    _tree(tmp_path, {
        "proc/77/cgroup": "0::/kubepods.slice/pod1/ctr\n",
        "proc/self/mountinfo": _fix_mount(tmp_path, V2_MOUNTINFO),
        f"{g}/memory.max": str(2048 * MIB), f"{g}/memory.current": str(1500 * MIB),
        f"{g}/memory.stat": f"anon {1200 * MIB}\nfile {300 * MIB}\ninactive_file {200 * MIB}\n",
        "/sys/fs/cgroup/kubepods.slice/pod1/memory.max": str(3072 * MIB),
        "/sys/fs/cgroup/kubepods.slice/pod1/memory.current": str(1600 * MIB),
        "/sys/fs/cgroup/kubepods.slice/memory.max": "max",
    })
    # WHEN read
    lim = limits.cgroup_limit(77, proc=str(tmp_path / "proc"))
    # THEN the container's limit, against its working set (usage less inactive file cache)
    assert lim is not None and lim.bytes == 2048 * MIB and lim.used == 1300 * MIB, lim
    assert lim.source.startswith("cgroup v2 memory.max of ") and lim.source.endswith("/pod1/ctr")
    assert limits.seconds_to_limit(lim, MIB) == 748.0


def test_v2_without_limits_falls_back_to_the_machine(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "proc/5/cgroup": "0::/user.slice/session-1.scope\n",
        "proc/self/mountinfo": _fix_mount(tmp_path, V2_MOUNTINFO),
        "proc/meminfo": "MemTotal:       24683784 kB\nMemFree:  1 kB\nMemAvailable:   1048576 kB\n",
        "/sys/fs/cgroup/user.slice/session-1.scope/memory.max": "max",
        "/sys/fs/cgroup/user.slice/memory.max": "max",
    })
    proc = str(tmp_path / "proc")
    assert limits.cgroup_limit(5, proc=proc) is None
    lim = limits.memory_limit(5, 100 * MIB, proc=proc)
    assert lim == Limit(100 * MIB + 1024 * MIB, 100 * MIB, "no cgroup limit: the machine's MemAvailable")


def test_v1_layout_reads_limit_in_bytes_and_ignores_the_unlimited_value(tmp_path: Path) -> None:
    # GIVEN docker on v1: the container limited to 512 MiB, its parent "unlimited" (PAGE_COUNTER_MAX)
    g = "/sys/fs/cgroup/memory/docker/abc"
    _tree(tmp_path, {
        "proc/9/cgroup": "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        "proc/self/mountinfo": _fix_mount(tmp_path, V1_MOUNTINFO),
        f"{g}/memory.limit_in_bytes": str(512 * MIB), f"{g}/memory.usage_in_bytes": str(400 * MIB),
        f"{g}/memory.stat": f"cache {90 * MIB}\ntotal_inactive_file {40 * MIB}\n",
        "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes": "9223372036854771712",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
    })
    lim = limits.cgroup_limit(9, proc=str(tmp_path / "proc"))
    assert lim is not None and (lim.bytes, lim.used) == (512 * MIB, 360 * MIB), lim
    assert lim.source.startswith("cgroup v1 memory.limit_in_bytes of ")


def test_this_machines_own_tree_is_read_without_creating_anything() -> None:
    # This machine kind's memory controller is cgroup v1 and the tree is the machine's: read only.
    lim = limits.memory_limit(os.getpid(), 50 * MIB)
    assert lim is not None and lim.bytes > lim.used > 0
    own = Path(f"/proc/{os.getpid()}/cgroup").read_text()
    if lim.source.startswith("cgroup"):
        assert any(":memory:" in line or line.startswith("0::") for line in own.splitlines())
    else:
        assert lim.source == "no cgroup limit: the machine's MemAvailable"


def test_wall_line_and_stopgaps_per_role() -> None:
    lim = Limit(2048 * MIB, 1024 * MIB, "cgroup v2 memory.max of /x")
    line = limits.wall_line(lim, MIB / 1.0, True)
    assert line is not None and "reaches its 2.0 GiB limit" in line and "in about 17 min" in line
    flat = limits.wall_line(lim, 0.0, False)
    assert flat is not None and "not growing" in flat
    celery = limits.stopgap("celery-child", 200 * MIB, 1000.0, lim, 4)
    assert celery is not None and celery.setting == "--max-memory-per-child"
    assert celery.value == (200 * MIB + 1024 * MIB // 8) // 1024  # its size plus half its share of the headroom
    uwsgi = limits.stopgap("uwsgi-worker", 200 * MIB, 1000.0, lim, 4)
    assert uwsgi is not None and uwsgi.value == 328 and "--reload-on-rss 328" in uwsgi.text
    gunicorn = limits.stopgap("gunicorn-worker", 200 * MIB, 1000.0, lim, 4)
    assert gunicorn is not None and "--max-requests" in gunicorn.text and "jitter" in gunicorn.text
    assert limits.stopgap("python", 200 * MIB, 1000.0, lim) is None
