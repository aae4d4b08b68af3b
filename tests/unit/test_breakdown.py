"""The breakdown's pieces: pymalloc's totals parsed from each interpreter's real
sys._debugmallocstats(), /proc read for a live process, and the verdicts' rules."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import threading
from typing import Any

import pytest

from introspect import breakdown
from introspect.agent import AGENT_PATH
from tests.conftest import Interp, interp_params

MiB = 1 << 20


@pytest.fixture(scope="module")
def agent() -> dict[str, Any]:
    return runpy.run_path(str(AGENT_PATH))


@pytest.mark.parametrize("interp", interp_params())
def test_pymalloc_totals_from_the_real_stats(agent: dict[str, Any], interp: Interp) -> None:
    # GIVEN what this interpreter prints, with 20 MiB of small objects alive
    code = "import sys; keep = [(i, i) for i in range(200000)]; sys._debugmallocstats()"
    err = subprocess.run([interp.path, "-c", code], capture_output=True, timeout=60).stderr
    got = agent["_mem_pymalloc_parse"](err)
    # THEN arenas are whole arenas of the version's size, used fits in them, free is the rest
    size = MiB if interp.version >= (3, 10) else 256 << 10
    assert got["arena_size"] == size and got["arenas"] == got["count"] * size, got
    assert 0 < got["used"] <= got["arenas"] and got["free"] == got["arenas"] - got["used"]
    assert got["used"] >= 200000 * 64, got  # the tuples' blocks at least


def test_no_pymalloc_under_pythonmalloc_malloc(agent: dict[str, Any]) -> None:
    err = subprocess.run(
        ["/usr/bin/python3.11", "-c", "import sys; sys._debugmallocstats()"],
        capture_output=True,
        env={"PYTHONMALLOC": "malloc"},
        timeout=60,
    ).stderr
    assert agent["_mem_pymalloc_parse"](err) == {}


def test_read_proc_finds_this_process_and_its_thread_stacks() -> None:
    stop = threading.Event()
    th = threading.Thread(target=stop.wait)
    th.start()
    try:
        proc = breakdown.read_proc(os.getpid())
    finally:
        stop.set()
        th.join()
    assert 0 < proc.uss <= proc.rss and proc.threads >= 2
    total, how = breakdown.stacks(proc)
    found = re.search(r"and (\d+) threads' stacks by their stack pointer", how)
    assert total > 0 and found and int(found.group(1)) >= 1, how  # other tests may leave threads


def _mem(**kw: Any) -> dict[str, Any]:
    mem: dict[str, Any] = {
        "rss": 120 * MiB,
        "uss": 100 * MiB,
        "python_objects": 5 * MiB,
        "pymalloc": {"arenas": 6 * MiB, "used": 5 * MiB, "free": 1 * MiB},
        "malloc": {
            "allocator": "glibc",
            "in_use": 4 * MiB,
            "free": 2 * MiB,
            "mmapped": 0,
            "arenas": 1,
            "trimmable": 1 * MiB,
        },
        "native": 2 * MiB,
        "stacks": 0,
        "other": 0,
    }
    mem.update(kw)
    return mem


def test_verdict_names_the_part_holding_half() -> None:
    assert breakdown.verdict(_mem(native=80 * MiB))[0] == "native"
    assert breakdown.verdict(_mem(python_objects=60 * MiB))[0] == "python-objects"
    v, advice = breakdown.verdict(
        _mem(
            malloc={
                "allocator": "glibc",
                "in_use": 4 * MiB,
                "free": 90 * MiB,
                "mmapped": 0,
                "arenas": 5,
                "trimmable": 80 * MiB,
            }
        ),
        threads=4,
    )
    assert (
        v == "malloc-fragmentation"
        and "5 glibc arenas (4 threads" in advice
        and "80.0 MiB" in advice
    )
    assert (
        breakdown.verdict(_mem(pymalloc={"arenas": 90 * MiB, "used": 5 * MiB, "free": 85 * MiB}))[0]
        == "pymalloc-fragmentation"
    )


def test_verdict_mixed_and_none() -> None:
    # two parts of a similar size, none holding half: mixed
    assert breakdown.verdict(_mem(native=30 * MiB, python_objects=25 * MiB))[0] == "mixed"
    # one part far ahead of the next, though under half: that part
    assert breakdown.verdict(_mem(native=40 * MiB))[0] == "native"
    # without the allocators (no copy), only a part holding half gets a verdict
    bare = _mem(
        pymalloc=None,
        native=None,
        malloc={
            "allocator": "glibc",
            "in_use": None,
            "free": None,
            "mmapped": None,
            "arenas": None,
            "trimmable": None,
        },
    )
    assert breakdown.verdict(bare)[0] is None
    assert breakdown.verdict({**bare, "python_objects": 70 * MiB})[0] == "python-objects"


def test_change_is_signed_and_judged() -> None:
    before = _mem()
    after = _mem(uss=132 * MiB, native=33 * MiB, python_objects=5 * MiB + 100_000)
    ch = breakdown.change(before, after, 8.0)
    assert ch["uss"] == 32 * MiB and ch["native"] == 31 * MiB and ch["python_objects"] == 100_000
    assert ch["verdict"] == "native" and ch["advice"].startswith(
        "USS +32.0 MiB in 8 s: native +31.0 MiB"
    )
    assert set(ch) >= {
        "rss",
        "uss",
        "python_objects",
        "pymalloc",
        "malloc",
        "native",
        "stacks",
        "other",
        "verdict",
    }
    shrink = breakdown.change(after, before, 8.0)
    assert shrink["uss"] == -32 * MiB and shrink["verdict"] == "native"
    assert breakdown.change(before, _mem(uss=100 * MiB + 4096), 1.0)["verdict"] == "flat"


def test_chart_stacks_the_parts_from_zero() -> None:
    from introspect.render.plot import memory_svg

    ts = [0.0, 5.0, 10.0]
    rss = [40.0 * MiB, 50.0 * MiB, 60.0 * MiB]
    look = _mem(native=30 * MiB)
    svg = memory_svg(ts, [("RSS", rss)], None, "t", parts=[(1.0, _mem()), (9.0, look)])
    assert svg.count("<polygon") == 4 and "Python objects (at the forked looks)" in svg
    assert 'text-anchor="end">0</text>' in svg  # the y axis starts at zero under stacked parts


def test_the_walkers_memory_answer_is_checked() -> None:
    good = {
        "pymalloc": {
            "arenas": 4 * MiB,
            "used": MiB,
            "free": 3 * MiB,
            "count": 4,
            "arena_size": MiB,
        },
        "malloc": {
            "allocator": "glibc",
            "path": "/lib/libc.so.6",
            "in_use": MiB,
            "free": 0,
            "mmapped": 0,
            "arenas": 1,
            "trimmable": 0,
            "junk": [1],
        },
        "missing": {},
        "seconds": 0.05,
        "extra": "dropped",
    }
    got = breakdown.checked_copy(good)
    assert got["pymalloc"]["free"] == 3 * MiB and "junk" not in got["malloc"] and "extra" not in got
    for bad in (
        {**good, "pymalloc": {"arenas": "4"}},
        {**good, "malloc": {"in_use": -1}},
        {**good, "missing": {"pymalloc": 3}},
        {**good, "seconds": "soon"},
        {**good, "malloc": {"allocator": "x" * 5000}},
    ):
        with pytest.raises(ValueError):
            breakdown.checked_copy(bad)
