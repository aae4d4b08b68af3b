"""`introspect trace start|show|stop` on real processes of every interpreter kind.

The victim (tests/victims/trace_leak.py) leaks 10 records per 20 ms tick at its LEAK line and
allocates 64 KiB per tick at its CHURN line, freed at once: the leaking line must come first by
size_delta. Also: the application's own tracing is read, never taken over or stopped; a trace
ends by itself after --for with no introspect running; nothing is left after stop.
A second victim (tests/victims/alloc_sites.py) keeps instances of a plain class, a class with
__slots__, a dataclass, dicts, bytes and str, each made at its own line, and churns 20x as many at
another: growth, backrefs (forked and in-process) and report must name each kind's own line.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from introspect.agent import AGENT_PATH
from tests.conftest import VICTIMS, Interp, interp_params, introspect, state_beyond

VICTIM = "trace_leak.py"


def _line_of(marker: str) -> int:
    for n, text in enumerate((VICTIMS / VICTIM).read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return n
    raise AssertionError(f"no {marker} line in {VICTIM}")


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the CLI keeps the previous show here


def _trace(*args: str) -> Any:
    run = introspect("trace", *args, "--json")
    assert run.rc == 0, run.stderr
    return run.json()


@pytest.mark.parametrize("interp", interp_params())
def test_leaking_line_first_then_nothing_left(interp: Interp, spawn: Any, tmp_path: Path) -> None:
    # GIVEN a leaking victim that does not trace
    victim = spawn(interp, VICTIM)
    before = victim.ask("state")
    assert not before["tracing"]
    pid = str(victim.pid)

    # WHEN tracing starts with 4 frames, and two shows are taken 2 s apart
    doc = _trace("start", pid, "--frames", "4", "--for", "5m")
    assert doc["status"] == "started" and doc["owner"] == "introspect" and doc["frames"] == 4
    assert 290 < doc["remaining_s"] <= 300
    during = victim.ask("state")
    assert during["tracing"] and during["trace_module"] and during["tasks"] == before["tasks"] + 1
    first = _trace("show", pid, "--traceback", "2")
    assert first["since"] == "tracing began"  # deltas are kept per grouping depth
    time.sleep(2)
    second = _trace("show", pid, "--traceback", "2")

    # THEN the LEAK line comes first by size_delta, named with its function; the CHURN line,
    # which allocates more but frees at once, is below it
    assert second["since"] == "previous show" and second["tracing"] and not second["partial"]
    top = second["sites"][0]
    assert (Path(top["file"]).name, top["line"], top["function"]) == (VICTIM, _line_of("LEAK"), "process_item")
    assert top["size_delta"] > 100_000 and top["count_delta"] > 0
    assert [f["function"] for f in top["traceback"]] == ["process_item", "main"]
    churn = [s for s in second["sites"] if s["line"] == _line_of("CHURN") and s["file"] == top["file"]]
    assert all(s["size_delta"] < top["size_delta"] for s in churn)
    ours = [s for s in second["sites"] if "introspect" in s["file"] or s["file"].startswith("<introspect")]
    assert not ours, ours
    assert second["tracemalloc_memory"] > 0 and second["remaining_s"] > 0
    assert second["collector"]["path"] == "fork" and second["paused_s"] < 2.0

    # WHEN read inside the target instead (no fork) THEN the same line comes first
    time.sleep(1)
    inproc = _trace("show", pid, "--in-process", "--traceback", "2")
    assert inproc["collector"]["path"] == "in-process" and not inproc["partial"]
    assert (inproc["sites"][0]["line"], inproc["sites"][0]["function"]) == (_line_of("LEAK"), "process_item")
    assert inproc["sites"][0]["size_delta"] > 0

    # WHEN tracing stops THEN the last figures come back, tracing is off, the traces freed, and
    # nothing of ours is left: no module, no thread, no pure-Python tracemalloc module
    stop = _trace("stop", pid)
    assert stop["stopped"] and not stop["tracing_after"]
    assert stop["sites"][0]["line"] == _line_of("LEAK")
    after = victim.ask("state")
    assert not after["tracing"] and not after["trace_module"] and not after["tracemalloc_module"]
    assert after["tracemalloc_memory"] < 4096
    assert after["tasks"] == before["tasks"]
    assert after["records"] > during["records"] and victim.alive()
    off = _trace("show", pid, "-o", str(tmp_path / "off"))
    assert not off["tracing"] and off["sites"] == []
    text = (tmp_path / "off" / "trace-show.txt").read_text()  # what it prints without --json
    assert "tracing is off" in text, text


@pytest.mark.parametrize("interp", interp_params())
def test_application_tracing_is_read_never_taken_over(interp: Interp, spawn: Any,
                                                      tmp_path: Path) -> None:
    # GIVEN an application that traces by itself with 3 frames
    victim = spawn(interp, VICTIM)
    assert victim.ask("self_trace 3")["tracing"]
    pid = str(victim.pid)

    # WHEN introspect is asked to start THEN it says the application traces and changes nothing
    doc = _trace("start", pid, "--frames", "1", "--for", "10s", "-o", str(tmp_path / "start"))
    assert doc["status"] == "application" and doc["owner"] == "application" and doc["frames"] == 3
    text = (tmp_path / "start" / "trace-start.txt").read_text()  # what it prints without --json
    assert "already traces" in text, text
    state = victim.ask("state")
    assert state["tracing"] and state["frames"] == 3 and not state["trace_module"]

    # WHEN shown and stopped THEN its traces are read, and its tracing stays on
    time.sleep(1)
    show = _trace("show", pid)
    assert show["owner"] == "application" and show["remaining_s"] is None
    assert show["sites"][0]["line"] == _line_of("LEAK")
    stop = _trace("stop", pid)
    assert not stop["stopped"] and stop["tracing_after"]
    state = victim.ask("state")
    assert state["tracing"] and state["frames"] == 3 and victim.alive()


@pytest.mark.parametrize("interp", interp_params())
def test_trace_ends_by_itself_with_no_cli(interp: Interp, spawn: Any) -> None:
    # GIVEN a trace started for 3 s (the CLI exits at once)
    victim = spawn(interp, VICTIM)
    tasks = victim.ask("state")["tasks"]
    t0 = time.monotonic()
    doc = _trace("start", str(victim.pid), "--for", "3")
    assert doc["status"] == "started"

    # WHEN nothing else is run THEN tracing is off within a few seconds after --for ran out,
    # and the timer thread and the session module are gone
    state = victim.ask("state")
    on_after = time.monotonic() - t0
    if on_after < 2.5:
        assert state["tracing"], "the trace ended before its time"
    deadline = t0 + 30
    while state["tracing"] and time.monotonic() < deadline:
        time.sleep(0.2)
        state = victim.ask("state")
    assert not state["tracing"], f"still tracing {time.monotonic() - t0:.1f} s after a 3 s trace started"
    assert not state["trace_module"] and state["tasks"] == tasks and state["tracemalloc_memory"] < 4096
    text = introspect("trace", "show", str(victim.pid))
    assert text.rc == 0 and "ended by itself" in text.stdout, text.stdout


@pytest.mark.parametrize("interp", interp_params())
def test_growth_backrefs_report_name_the_leaking_line(interp: Interp, spawn: Any, tmp_path: Path) -> None:
    # GIVEN the seeds' leak (records of 1 KiB bytes appended to a module-level list), not traced
    victim = spawn(interp, VICTIM)
    pid = str(victim.pid)

    # WHEN tracing is off THEN backrefs says so and how to turn it on
    run = introspect("backrefs", pid, "bytes", "-o", str(tmp_path / "b0"))
    assert run.rc == 0, run.stderr
    assert f"tracing is off (turn it on with `introspect trace start {pid}`" in run.stdout

    # WHEN tracing is on and the leak grows
    _trace("start", pid, "--for", "5m")
    base = introspect("growth", pid, "--json", "-o", str(tmp_path / "g0"))
    assert base.rc == 0, base.stderr
    time.sleep(2)

    # THEN growth's bytes and dict rows, backrefs bytes and the report name the LEAK line
    leak = (VICTIM, _line_of("LEAK"), "process_item")
    growth = introspect("growth", pid, "--json", "-o", str(tmp_path / "g1"))
    assert growth.rc == 0, growth.stderr
    doc = growth.json()
    assert doc["tracing"] and doc["collector"]["path"] == "fork"
    rows = {r["type"]: r for r in doc["types"]}
    for tname in ("bytes", "dict"):
        top = rows[tname]["allocated_at"][0]
        assert (Path(top["file"]).name, top["line"], top["function"]) == leak, rows[tname]
    backrefs = introspect("backrefs", pid, "bytes", "--json", "-o", str(tmp_path / "b1"))
    assert backrefs.rc == 0, backrefs.stderr
    b = backrefs.json()
    assert b["tracing"] and (Path(b["allocated_at"][0]["file"]).name, b["allocated_at"][0]["line"]) == leak[:2]
    report = introspect("report", pid, "--duration", "2", "--looks", "2", "--backrefs", "1", "-o", str(tmp_path / "r"),
                        timeout=240)
    assert report.rc == 0, report.stderr
    assert f"{VICTIM}:{_line_of('LEAK')} in process_item" in report.stdout
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Where the growing objects were allocated" in html and f"{VICTIM}:{_line_of('LEAK')}" in html
    _trace("stop", pid)
    assert victim.alive() and not victim.ask("state")["tracing"]


SITES = "alloc_sites.py"
KINDS = {"__main__.Plain": "KEEP_PLAIN", "__main__.Slotted": "KEEP_SLOTTED",
         "__main__.Record": "KEEP_RECORD", "dict": "KEEP_DICT", "bytes": "KEEP_BYTES",
         "str": "KEEP_STR"}
CLASSES = ("__main__.Plain", "__main__.Slotted", "__main__.Record")


def _site_line(marker: str) -> int:
    for n, text in enumerate((VICTIMS / SITES).read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return n
    raise AssertionError(f"no {marker} line in {SITES}")


def _first_site(doc: dict[str, Any], what: str) -> dict[str, Any]:
    assert doc.get("allocated_at"), f"{what}: no allocation site: {doc}"
    top: dict[str, Any] = doc["allocated_at"][0]
    assert Path(top["file"]).name == SITES, (what, doc["allocated_at"])
    return top


@pytest.mark.parametrize("interp", interp_params())
def test_allocation_sites_of_every_kind_of_object(interp: Interp, spawn: Any,
                                                  tmp_path: Path) -> None:
    # GIVEN a victim that keeps instances of a plain class, a class with __slots__ and a dataclass,
    # dicts, bytes and str, each made at its own KEEP line, and churns 20x as many at its CHURN line
    victim = spawn(interp, SITES)
    pid = str(victim.pid)
    _trace("start", pid, "--for", "5m")
    base = introspect("growth", pid, "--json", "-o", str(tmp_path / "g0"))
    assert base.rc == 0, base.stderr
    kept = victim.ask("state")["kept"]
    state_beyond(victim, "kept", kept + 100, timeout=30)

    # WHEN growth looks again THEN each kind's row names its KEEP line first, every site read at
    # the object's own address (none "held"), and the copy walked with its own allocations untraced
    growth = introspect("growth", pid, "--json", "-o", str(tmp_path / "g1"))
    assert growth.rc == 0, growth.stderr
    doc = growth.json()
    assert doc["tracing"] and doc["collector"]["path"] == "fork"
    rows = {r["type"]: r for r in doc["types"]}
    for tname, marker in KINDS.items():
        top = _first_site(rows[tname], f"growth {tname}")
        want = (_site_line(marker), "keep", None)
        assert (top["line"], top["function"], top.get("via")) == want, rows[tname]
        assert rows[tname]["allocated_walk"] == "paused", rows[tname]
        churned = [s for s in rows[tname]["allocated_at"] if s["line"] == _site_line("CHURN")]
        assert not churned, rows[tname]

    # WHEN backrefs runs in the forked copy THEN it names the same lines
    for tname, marker in KINDS.items():
        run = introspect("backrefs", pid, tname, "--json", "-o", str(tmp_path / f"b-{tname}"))
        assert run.rc == 0, run.stderr
        b = run.json()
        assert b["collector"]["path"] == "fork" and b["tracing"]
        assert _first_site(b, f"backrefs {tname}")["line"] == _site_line(marker), b["allocated_at"]

    # WHEN backrefs runs inside the target (gc-tracked types only) THEN the class instances are
    # placed too: at their own line, or on 3.11 (managed __dict__: tracemalloc cannot look them up
    # there) at the line that made the float each alone holds, marked "held" and explained
    held = {"__main__.Plain": "PLAIN_INIT", "__main__.Record": "KEEP_RECORD"}
    if interp.version != (3, 11):
        held = {}
    for tname in CLASSES:
        name = "Plain" if tname == "__main__.Plain" else tname  # a short name finds it too
        run = introspect("backrefs", pid, name, "--in-process", "--json",
                         "-o", str(tmp_path / f"i-{tname}"))
        assert run.rc == 0, run.stderr
        b = run.json()
        assert b["collector"]["path"] == "in-process" and b["tracing"]
        top = _first_site(b, f"backrefs --in-process {tname}")
        if tname in held:
            want_held = (_site_line(held[tname]), "held")
            assert (top["line"], top.get("via")) == want_held, b["allocated_at"]
            assert b["allocated_held"] == top["count"]
        else:
            want_own = (_site_line(KINDS[tname]), None)
            assert (top["line"], top.get("via")) == want_own, b["allocated_at"]
    text = (tmp_path / "i-__main__.Plain" / "backrefs.txt").read_text()  # printed without --json
    assert f"{SITES}:{_site_line(held.get('__main__.Plain', 'KEEP_PLAIN'))} in " in text
    note = "cannot look up an instance of a class with a managed __dict__"
    assert (note in text) == bool(held)

    # WHEN a report is made THEN its allocation block names every kind's KEEP line
    report = introspect("report", pid, "--duration", "2", "--looks", "2", "--backrefs", "1",
                        "-o", str(tmp_path / "r"), timeout=240)
    assert report.rc == 0, report.stderr
    rdoc = json.loads((tmp_path / "r" / "report.json").read_text())
    alloc = {a["type"]: a for a in rdoc["snapshot"]["allocation"]["types"]}
    for tname, marker in KINDS.items():
        top = _first_site(alloc.get(tname, {}), f"report {tname}")
        assert top["line"] == _site_line(marker), alloc.get(tname)
    html = (tmp_path / "r" / "index.html").read_text()
    assert f"{SITES}:{_site_line('KEEP_SLOTTED')}" in html
    _trace("stop", pid)
    assert victim.alive() and not victim.ask("state")["tracing"]


PAUSE_PROBE = r'''
import _tracemalloc, json, runpy, sys
agent = runpy.run_path(sys.argv[1])  # definitions only: no REQUEST, nothing runs
_tracemalloc.start(1)


class Plain:
    def __init__(self, n):
        self.value = n * 0.5


def make(n):
    return [Plain(n), {"n": n}, b"%64d" % n]


before = [make(n) for n in range(1000, 1200)]  # BEFORE
status = agent["_trace_pause"]()
tracing_during = _tracemalloc.is_tracing()
memory = _tracemalloc.get_traced_memory()[0]
during = [make(n) for n in range(2000, 2200)]  # DURING
grew = _tracemalloc.get_traced_memory()[0] - memory
agent["_trace_resume"]()
block = agent["_trace_block"]() if agent["_MANAGED_DICT_311"] else None


def lines(objs, lookup):  # [[line, ...], count] for each site, most first
    on, sites = agent["_alloc_sites"](objs, lookup)
    counts = {}
    for s in sites:
        key = tuple(s[1:]) if s else None
        counts[key] = counts.get(key, 0) + 1
    return sorted(([list(k) if k else None, n] for k, n in counts.items()), key=lambda x: -x[1])


out = {"status": status, "tracing_during": tracing_during, "grew": grew,
       "tracing_after": _tracemalloc.is_tracing()}
for k, kind in enumerate(("plain", "dict", "bytes")):
    out[kind] = lines([m[k] for m in before], block)
    out[kind + "_during"] = lines([m[k] for m in during], block)
out["plain_in_process"] = lines([m[0] for m in before], None)
print(json.dumps(out))
'''


@pytest.mark.parametrize("interp", interp_params())
def test_walker_copy_keeps_traces_and_traces_nothing_of_its_own(interp: Interp,
                                                                 tmp_path: Path) -> None:
    # GIVEN objects made while tracing, in a throwaway process that plays the walker's copy
    probe = tmp_path / "probe.py"
    probe.write_text(PAUSE_PROBE)
    src = probe.read_text().splitlines()
    made = next(n for n, t in enumerate(src, 1) if "return [Plain(n)" in t)
    init = next(n for n, t in enumerate(src, 1) if "self.value = n * 0.5" in t)

    # WHEN the walker's pause runs, objects are made, and the walk ends
    proc = subprocess.run([interp.path, str(probe), str(AGENT_PATH)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)

    # THEN tracing looked off while walking and nothing made then was traced; afterwards the
    # objects made before are placed at their line (3.11's managed-dict instances read at their
    # true start; a dict reused from a free list filled before tracing began has no trace), none
    # made during the pause is (a block freed then keeps its stale trace: never asked about, the
    # walker frees no object it records); in-process, 3.11 places them by the float they hold
    assert doc["status"] == "paused", doc
    assert not doc["tracing_during"] and doc["grew"] == 0 and doc["tracing_after"], doc
    for kind in ("plain", "dict", "bytes"):
        assert doc[kind][0][0] == [made] and doc[kind][0][1] >= 100, (kind, doc)
        assert all(site != [made] for site, _ in doc[kind + "_during"]), (kind, doc)
    held = [init, "held"] if interp.version == (3, 11) else [made]
    assert doc["plain_in_process"][0][0] == held and doc["plain_in_process"][0][1] >= 100, doc
