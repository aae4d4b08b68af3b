"""Snapshot analysis on real recorded snapshots of a known heap (tests/victims/heap_fixture.py),
taken by the agent's forked walker in a child of this test's interpreter. guppy3 is the oracle
for retained sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from introspect.agent import AGENT_PATH
from introspect.snapshot import chains as chains_mod
from introspect.snapshot import heap, views
from introspect.snapshot.collect import Walker
from introspect.snapshot.records import MAGIC, Reader, Snapshot, load_recorded, read_snapshot

FIXTURE = Path(__file__).resolve().parents[1] / "victims" / "heap_fixture.py"


@dataclass
class Taken:
    snap: Snapshot
    walker: Walker
    guppy: dict[str, int]
    parent: dict[str, Any]
    raw: bytes


@pytest.fixture(scope="module")
def taken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taken]:
    pytest.importorskip("guppy", reason="guppy3 not installed: pip install -e '.[test]'")
    d = tmp_path_factory.mktemp("snap")
    stream, control = str(d / "stream"), str(d / "control")
    os.mkfifo(stream, 0o600)
    os.mkfifo(control, 0o600)
    fd = os.open(stream, os.O_RDONLY | os.O_NONBLOCK)
    proc = subprocess.Popen([sys.executable, str(FIXTURE), stream, control, str(AGENT_PATH)], stdout=subprocess.PIPE, text=True)
    walker = None
    try:
        assert proc.stdout is not None
        guppy = json.loads(proc.stdout.readline())
        parent = json.loads(proc.stdout.readline())
        reader = Reader(fd, time.monotonic() + 60)
        raw: list[bytes] = []
        metas: list[dict[str, Any]] = []
        snap = read_snapshot(reader, tee=raw, on_meta=metas.append)
        walker = Walker(reader, control, int(metas[0]["pid"]), int(metas[0]["start_ticks"]), reader.deadline)
        yield Taken(snap, walker, guppy, parent, MAGIC + b"".join(raw))
    finally:
        if walker is not None:
            walker.close()
            walker.kill()
        proc.wait(30)
        os.close(fd)


def _holder(h: heap.Heap, taken: Taken, path: str) -> views.Holder:
    found = {x.path: x for x in heap.holders(h, taken.walker.labels, 20)}
    assert path in found, sorted(found)
    return found[path]


def _global(h: heap.Heap, taken: Taken, name: str) -> int:
    """Position of a global of the fixture's __main__, found through the walker's labels."""
    snap = taken.snap
    main = next(r.pos for r in snap.roots if r.kind == "module" and r.name == "__main__")
    d = next(int(p) for p in snap.referents(main) if snap.type_name(int(p)) == "dict")
    kids = [int(p) for p in snap.referents(d)]
    labels = taken.walker.labels([(d, k) for k in kids])
    return kids[labels.index(f"[{name!r}]")]


def test_parent_pause_is_the_fork(taken: Taken) -> None:
    assert taken.parent["forked"] is True and 0 < taken.parent["pause_s"] < 1.0


def test_every_object_counted_tracked_or_not(taken: Taken) -> None:
    rows = heap.type_rows(taken.snap)
    assert rows["bytes"].count >= 300 + 2 + 21 + 8 and rows["bytes"].tracked == 0
    assert rows["__main__.Node"].count == 21 and rows["__main__.Node"].untracked == 0
    if sys.version_info < (3, 14):  # 3.14 stopped untracking dicts of atomic values
        assert rows["dict"].untracked >= 300
    assert rows["bytes"].bytes >= 300 * 1024 + 5000 + 2000
    # nothing of the agent's: its functions, its namespace
    assert not any(name.startswith("__introspect") for name in rows)


def test_retained_sizes_agree_with_guppy(taken: Taken) -> None:
    h = heap.analyse(taken.snap)
    store = _holder(h, taken, "module __main__ .store")
    assert store.items == 300
    # exact where the roots agree: the list, its dicts, their ints and bytes
    assert store.retained_bytes == taken.guppy["store"], (store.retained_bytes, taken.guppy["store"])
    # shared (5000 bytes) is held by left and right: neither retains it
    left, right = _global(h, taken, "left"), _global(h, taken, "right")
    assert int(h.retained[left]) == taken.guppy["left"] < 5000
    assert int(h.retained[right]) == taken.guppy["right"]
    tree = _global(h, taken, "tree")
    assert int(h.retained[tree]) == taken.guppy["tree"], (int(h.retained[tree]), taken.guppy["tree"])


def test_chains_start_at_the_owner_module(taken: Taken) -> None:
    h = heap.analyse(taken.snap)
    chains, found, _ = chains_mod.chains(h, "logging.Logger", taken.walker.labels, taken.walker.names, 10, taken.walker.freevars)
    # __main__ .log_manager .loggerDict['fixture-request-0'] is the shortest path, but the loggers'
    # nearest non-builtin holder is a logging.Manager: the chain starts at module logging
    mine = [c for c in chains if any(str(s.get("via", "")).startswith("['fixture-request-") for s in c["path"])]  # type: ignore[union-attr]
    assert found >= 3 and mine, chains
    assert all(c["root"] == "module logging" for c in mine), [(c["root"], c["path"]) for c in mine]
    assert sum(int(str(c["count"])) for c in mine) == 3


def test_chains_pass_through_untracked_containers(taken: Taken) -> None:
    h = heap.analyse(taken.snap)
    chains, found, unreachable = chains_mod.chains(h, "bytes", taken.walker.labels, taken.walker.names, 500, taken.walker.freevars)
    texts = [[(s["type"], s["via"]) for s in c["path"]] for c in chains]
    assert [("module", ".store"), ("list", texts[0][1][1]), ("dict", "['data']"), ("bytes", None)] == texts[0]
    assert chains[0]["count"] == 300 and found >= 331 and unreachable == 0
    assert any(("function", "closure var chunks") in t for t in texts), texts
    assert any(("__main__.Node", ".payload") in t for t in texts), texts


def test_recorded_stream_reloads_identically(taken: Taken, tmp_path: Path) -> None:
    rec = tmp_path / "snap.bin"
    rec.write_bytes(taken.raw)
    again = load_recorded(str(rec))
    assert again.n == taken.snap.n and again.types == taken.snap.types
    assert (again.refs == taken.snap.refs).all() and (again.excess == taken.snap.excess).all()


def test_modules_reach_their_dicts(taken: Taken) -> None:
    h = heap.analyse(taken.snap)
    c_held = [name for name in h.root_name.values() if name.startswith("held from C")]
    sys_pos = next(r.pos for r in taken.snap.roots if r.kind == "module" and r.name == "sys")
    kids = {taken.snap.type_name(int(p)) for p in taken.snap.referents(sys_pos)}
    assert "dict" in kids, kids
    # held from C: the small name tuples and kind bytes code objects share (3.11+ keeps them where no
    # attribute reaches), type dicts of static types; never a big container
    assert not [p for p, name in h.root_name.items() if name.startswith("held from C") and h.retained[p] > 200_000], c_held

