"""The memory headroom check before forking: cgroup v1 and v2 limits on the target's path, read
from a fake cgroup tree laid out like the real one for this test's own process."""

from __future__ import annotations

import os
from pathlib import Path

from introspect.snapshot import collect


def _own_cgroups() -> list[tuple[str, str]]:
    out = []
    for line in Path(f"/proc/{os.getpid()}/cgroup").read_text().splitlines():
        _h, controllers, path = line.split(":", 2)
        out.append((controllers, path.strip("/")))
    return out


def test_tightest_limit_on_the_path_wins(tmp_path: Path) -> None:
    # GIVEN a fake tree with a limit on our memory cgroup (v1) or unified cgroup (v2)
    wrote = []
    for controllers, rel in _own_cgroups():
        if controllers == "":
            base, lim, use = tmp_path / "unified", "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, lim, use = tmp_path / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        d = base / rel if rel else base
        d.mkdir(parents=True, exist_ok=True)
        (d / lim).write_text(str(300 * 2**20))
        (d / use).write_text(str(290 * 2**20))
        wrote.append(str(d))
        if rel:  # a looser limit above it
            (base / lim).write_text("max")
            (base / use).write_text("1")
    # WHEN the room is read for our own pid
    rooms = collect.cgroup_room(os.getpid(), str(tmp_path))
    # THEN each limited level reports limit - usage, "max" means no limit
    assert sorted(d for d, _ in rooms) == sorted(f"cgroup {w}" for w in wrote)
    assert all(room == 10 * 2**20 for _, room in rooms)
    room = collect.headroom(os.getpid(), cgroup_root=str(tmp_path))
    assert room.available == 10 * 2**20 and room.limited_by.startswith("cgroup ")
    assert room.ok == (room.need <= room.available)
    assert "leaves 10 MiB" in room.why()


def test_no_limit_readable_is_not_a_refusal(tmp_path: Path) -> None:
    room = collect.headroom(os.getpid(), cgroup_root=str(tmp_path / "none"))
    assert room.ok or room.limited_by == "MemAvailable"
