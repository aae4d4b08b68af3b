"""When a growing worker hits its wall, and the setting that recycles it before then.

The wall is the memory limit that applies to the process: its cgroup's (v2 ``memory.max``, v1
``memory.limit_in_bytes``, the smallest along the path up the hierarchy, as the kernel enforces
it), else the machine's: what the process uses now plus ``MemAvailable``. Against a cgroup limit
the figure that counts is the group's working set, as the kernel's OOM decision and kubelet see
it: usage less the inactive file cache the kernel reclaims first.

Everything is read from ``/proc`` and ``/sys``; nothing is created (no cgroup), nothing touches the
target. The readers take their roots as arguments so that tests read recorded trees.

The stopgap is the role's own recycling setting, with a value computed from the process's size and
the headroom: recycle a worker once it has grown by half of what each worker may still take.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MIB = 1 << 20
# v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB pages).
V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Limit:
    bytes: int  # the ceiling
    used: int  # what counts against it now
    source: str  # where it was read, in words

    @property
    def headroom(self) -> int:
        return max(0, self.bytes - self.used)

    def as_json(self) -> dict[str, object]:
        return {"bytes": self.bytes, "used": self.used, "headroom": self.headroom,
                "source": self.source}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(65536).strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _stat_field(path: str, names: tuple[str, ...]) -> int:
    text = _read(path) or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in names and parts[1].isdigit():
            return int(parts[1])
    return 0


def _mounts(mountinfo: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(v2 mounts, v1 memory mounts) as (root within the hierarchy, mount point) pairs."""
    v2: list[tuple[str, str]] = []
    v1: list[tuple[str, str]] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 3:
            continue
        root, point = f[3], f[4].replace("\\040", " ")
        if r[0] == "cgroup2":
            v2.append((root, point))
        elif r[0] == "cgroup" and "memory" in r[2].split(","):
            v1.append((root, point))
    return v2, v1


def _dir_of(cgroup_path: str, mounts: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The directory of ``cgroup_path`` under the mount that holds it, and that mount's point."""
    for root, point in mounts:
        rel = cgroup_path
        if root != "/":
            if not (cgroup_path == root or cgroup_path.startswith(root.rstrip("/") + "/")):
                continue
            rel = cgroup_path[len(root) :]
        d = os.path.join(point, rel.lstrip("/"))
        if os.path.isdir(d):
            return d, point
    return None


def cgroup_limit(pid: int, proc: str = "/proc") -> Limit | None:
    """The cgroup memory limit of ``pid`` (the smallest up the hierarchy), or None without one."""
    own = _read(f"{proc}/{pid}/cgroup")
    mountinfo = _read(f"{proc}/self/mountinfo")
    if own is None or mountinfo is None:
        return None
    v2_mounts, v1_mounts = _mounts(mountinfo)
    best: Limit | None = None
    for line in own.splitlines():
        files: tuple[str, str, tuple[str, ...]]
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            where, mounts, files = ("cgroup v2", v2_mounts,
                                    ("memory.max", "memory.current", ("inactive_file",)))
        elif "memory" in controllers.split(","):
            where, mounts, files = (
                "cgroup v1",
                v1_mounts,
                ("memory.limit_in_bytes", "memory.usage_in_bytes",
                 ("total_inactive_file", "inactive_file")),
            )
        else:
            continue
        found = _dir_of(path, mounts)
        if found is None:
            continue
        d, point = found
        while True:
            limit = _int(_read(os.path.join(d, files[0])))  # "max" (v2) reads as None
            if limit is not None and limit < V1_UNLIMITED:
                usage = _int(_read(os.path.join(d, files[1]))) or 0
                inactive = _stat_field(os.path.join(d, "memory.stat"), files[2])
                used = max(0, usage - inactive)
                if best is None or limit - used < best.headroom:
                    best = Limit(limit, used, f"{where} {files[0]} of {d}")
            if os.path.normpath(d) == os.path.normpath(point):
                break
            d = os.path.dirname(d)
    return best


def machine_limit(rss: int, proc: str = "/proc") -> Limit | None:
    """What the machine can still give: the process's RSS now plus MemAvailable."""
    avail = _stat_field(f"{proc}/meminfo", ("MemAvailable:",))
    if avail <= 0:
        return None
    return Limit(rss + avail * 1024, rss, "no cgroup limit: the machine's MemAvailable")


def memory_limit(pid: int, rss: int, proc: str = "/proc") -> Limit | None:
    return cgroup_limit(pid, proc) or machine_limit(rss, proc)


def seconds_to_limit(limit: Limit | None, slope_bytes_per_s: float) -> float | None:
    """How long until ``limit`` is reached at this slope; None when it is not growing.

    >>> seconds_to_limit(Limit(2 * 1024 * MIB, 1024 * MIB, "x"), MIB)
    1024.0
    """
    if limit is None or slope_bytes_per_s <= 0:
        return None
    return limit.headroom / slope_bytes_per_s


def duration(seconds: float) -> str:
    """
    >>> duration(95), duration(26 * 60 + 10), duration(30 * 3600), duration(12 * 86400)
    ('2 min', '26 min', '30 h', '12 days')
    """
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _size(n: float) -> str:
    return f"{n / (1024 * MIB):.1f} GiB" if n >= 1024 * MIB else f"{n / MIB:,.0f} MiB"


def wall_line(limit: Limit | None, slope_bytes_per_s: float, growing: bool) -> str | None:
    """One sentence: when the limit is reached at this rate.

    >>> lim = Limit(2 * 1024 * MIB, 2 * 1024 * MIB - 1920 * MIB, "cgroup v2 memory.max of /x")
    >>> print(wall_line(lim, 4.4 * 1024 * MIB / 3600, True))
    at +4,506 MB/hour it reaches its 2.0 GiB limit (cgroup v2 memory.max of /x; 1.9 GiB left) in
    about 26 min
    """
    if limit is None:
        return None
    if not growing or slope_bytes_per_s <= 0:
        return (
            f"limit: {_size(limit.bytes)} ({limit.source}; {_size(limit.headroom)} left); not "
            "growing: no time to it"
        )
    secs = seconds_to_limit(limit, slope_bytes_per_s) or 0.0
    rate = slope_bytes_per_s * 3600 / MIB
    return (
        f"at {rate:+,.0f} MB/hour it reaches its {_size(limit.bytes)} limit ({limit.source}; "
        f"{_size(limit.headroom)} left) in about {duration(secs)}"
    )


@dataclass(frozen=True)
class Stopgap:
    setting: str  # what to set, e.g. "--max-memory-per-child"
    value: int | None  # the value to set, in the setting's own unit
    text: str

    def as_json(self) -> dict[str, object]:
        return {"setting": self.setting, "value": self.value, "text": self.text}


def budget(rss: int, limit: Limit | None, workers: int) -> int:
    """What one worker may grow to before it is recycled: its size now plus half of its share of
    the headroom (without a known limit, twice its size).

    >>> budget(100 * MIB, Limit(1100 * MIB, 500 * MIB, "x"), 3) // MIB
    200
    """
    if limit is None:
        return 2 * rss
    return rss + limit.headroom // (2 * max(1, workers))


def stopgap(
    role: str, rss: int, slope_bytes_per_s: float, limit: Limit | None, workers: int = 1
) -> Stopgap | None:
    """The role's setting that recycles a growing worker before it hits the wall, with its value.

    >>> lim = Limit(2048 * MIB, 1048 * MIB, "x")
    >>> print(stopgap("celery-child", 300 * MIB, 1000.0, lim, 4).text)
    stopgap: celery worker --max-memory-per-child=435200 (KiB; worker_max_memory_per_child = 435200
    in the
    config): each prefork child is replaced after the task that takes it past 425 MiB (now 300 MiB)
    >>> stopgap("uwsgi-worker", 300 * MIB, 1000.0, lim, 4).setting
    'reload-on-rss'
    """
    family = role.split("-")[0]
    cap = budget(rss, limit, workers)
    grow_s = (cap - rss) / slope_bytes_per_s if slope_bytes_per_s > 0 else None
    if family == "celery":
        kib = cap // 1024
        return Stopgap(
            "--max-memory-per-child",
            kib,
            f"stopgap: celery worker --max-memory-per-child={kib} (KiB; "
            f"worker_max_memory_per_child = {kib} in the config): each prefork child is replaced "
            f"after the task that takes it past {_size(cap)} (now {_size(rss)})",
        )
    if family == "uwsgi":
        mib = cap // MIB
        return Stopgap(
            "reload-on-rss",
            mib,
            f"stopgap: uwsgi --reload-on-rss {mib} (MiB): a worker past {_size(cap)} "
            f"(now {_size(rss)}) is reloaded after its request",
        )
    if family == "gunicorn":
        when = f"within {duration(grow_s)}" if grow_s else "before it doubles"
        return Stopgap(
            "max_requests",
            None,
            "stopgap: gunicorn --max-requests N --max-requests-jitter N/10 with N = the requests "
            f"one worker serves {when} (the time it takes to grow from {_size(rss)} to "
            f"{_size(cap)} at this rate); gunicorn has no RSS-based setting",
        )
    return None
