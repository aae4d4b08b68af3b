"""Forked snapshots on real interpreters: the seeds' leak in a report, and the guard rails
(headroom, a killed CLI, zombies, the fork warning under -W error). The seeds' leak seen whole by
live growth and backrefs on every kind (untracked dicts and bytes, the holder and its retained
bytes, no walker or zombie left) is checked by test_dumps.py's live looks, whose answers the files
must then give again."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import INTERPS, REPO, Interp, interp_params, introspect
from tests.conftest import no_walker_left as _no_walker_left
from tests.conftest import zombies_of as _zombies_of

HOLDER = "module __main__ .global_data_store"


def test_report_names_the_seeds_holder_and_traces_untracked_types(spawn, tmp_path: Path) -> None:
    interp = next((i for i in INTERPS if i.version[:2] == (3, 12)), INTERPS[0])
    # GIVEN the seeds' leak growing while report watches: only untracked dicts and bytes rise
    v = spawn(interp, "seeds_leak.py")
    v.ask("leak 500")
    stop = threading.Event()

    def leak() -> None:
        while not stop.wait(0.4):
            v.ask("leak 300")

    th = threading.Thread(target=leak, daemon=True)
    th.start()
    try:
        run = introspect("report", str(v.pid), "--duration", "4", "--interval", "0.5", "--looks", "2", "--backrefs", "2",
                         "--json", "-o", str(tmp_path / "r"), timeout=120)
    finally:
        stop.set()
        th.join(10)
    assert run.rc == 0, run.stderr
    doc = run.json()
    # THEN the holder and its retained growth are named, from the forked snapshots
    holder = doc["snapshot"]["holders"][0]
    assert holder["path"] == HOLDER and holder["items_delta"] >= 300 and holder["retained_delta"] >= 300 * 1024, holder
    assert "held by: " + HOLDER in (tmp_path / "r" / "report.txt").read_text()
    # AND the types traced are those that grew in the snapshots (untracked dicts and bytes), found in the
    # last look's frozen copy: no extra stop of the target for them
    traced = {b["type"]: b for b in doc["backrefs"]}
    assert {"dict", "bytes"} & set(traced), [(b["type"], b["why"]) for b in doc["backrefs"]]
    for ref in traced.values():
        if ref["type"] in ("dict", "bytes"):
            top = ref["chains"][0]
            assert top["root"] == "module __main__" and top["path"][0]["via"] == ".global_data_store", top
            assert ref["sampling"].startswith("every instance grouped"), ref["sampling"]
    assert len(doc["looks"]) == 2 and doc["complete"], doc["problem"]
    assert v.stderr() == ""
    assert _no_walker_left(v.pid, os.path.realpath(interp.path)) == []


@pytest.mark.parametrize("interp", [i for i in interp_params() if i.values[0].version >= (3, 12)])
def test_fork_warning_silent_under_w_error(spawn, interp: Interp, tmp_path: Path) -> None:
    # GIVEN a multi-threaded target run with warnings as errors (3.15 raises the fork
    # DeprecationWarning in the parent after the child exists)
    v = spawn(interp, "seeds_leak.py", env={"PYTHONWARNINGS": "error"})
    v.ask("threads 3")
    v.ask("leak 10")
    # WHEN a forked snapshot is taken
    run = introspect("top", str(v.pid), "--json", "-o", str(tmp_path / "t"))
    # THEN it forked, and the target printed nothing and still runs
    assert run.rc == 0, run.stderr
    assert run.json()["collector"]["path"] == "fork"
    assert v.ask("leak 1")["count"] == 11
    assert v.stderr() == ""


@pytest.mark.parametrize("env", [{"IGNORE_SIGCHLD": "1"}, {}], ids=["sigchld-ignored", "never-waits"])
def test_no_zombie_and_no_stray(spawn, env: dict[str, str], tmp_path: Path) -> None:
    interp = next(i for i in INTERPS if i.id == "debian-3.11") if any(i.id == "debian-3.11" for i in INTERPS) else INTERPS[0]
    v = spawn(interp, "seeds_leak.py", env=env)
    v.ask("leak 100")
    for k in range(3):
        run = introspect("top", str(v.pid), "-o", str(tmp_path / f"t{k}"))
        assert run.rc == 0, run.stderr
    assert _zombies_of(v.pid) == []
    assert _no_walker_left(v.pid, os.path.realpath(interp.path)) == []
    assert v.ask("count")["count"] == 100


@pytest.mark.parametrize("interp", [INTERPS[0], INTERPS[-1]], ids=[INTERPS[0].id, INTERPS[-1].id])
def test_walker_gives_way_and_volunteers_to_the_oom_killer(spawn, interp: Interp) -> None:
    # The walker's priority and OOM score, read while it still answers (the analysis runs then).
    from introspect.snapshot import collect

    v = spawn(interp, "seeds_leak.py")
    v.ask("leak 100")
    seen: dict[str, object] = {}

    def analyse(snap: object, walker: collect.Walker) -> None:
        with open(f"/proc/{walker.pid}/stat") as f:
            seen["nice"] = int(f.read().rsplit(")", 1)[1].split()[16])  # field 19: nice
        with open(f"/proc/{walker.pid}/oom_score_adj") as f:
            seen["oom"] = int(f.read())
        seen["walker"] = walker.pid

    outcome, _, stats = collect.snapshot(v.pid, analyse, timeout=60)
    assert outcome.result.get("forked"), outcome.result
    assert seen["walker"] != v.pid and seen["nice"] == 10 and seen["oom"] == 1000, seen
    # the target itself untouched: as it was started (by us, so as we are)
    assert os.getpriority(os.PRIO_PROCESS, v.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    with open(f"/proc/{v.pid}/oom_score_adj") as f, open("/proc/self/oom_score_adj") as mine:
        assert int(f.read()) == int(mine.read())
    assert v.ask("count")["count"] == 100


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_killed_cli_leaves_no_walker(spawn, how: int, tmp_path: Path) -> None:
    # GIVEN a heap big enough that the walker is still walking when the CLI is stopped
    interp = next((i for i in INTERPS if i.id == "pyenv-3.12"), INTERPS[0])
    v = spawn(interp, "seeds_leak.py")
    v.ask("ballast 2000000", timeout=120)
    exe = os.path.realpath(interp.path)
    cli = subprocess.Popen([sys.executable, "-m", "introspect", "top", str(v.pid), "-v", "-o", str(tmp_path / "t")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines: queue.Queue[str] = queue.Queue()
    assert cli.stderr is not None
    threading.Thread(target=lambda: [lines.put(x) for x in cli.stderr], daemon=True).start()
    try:
        # WHEN the CLI is interrupted once it says the walker streams (-v): a fast walk of a
        # loaded machine could come and go between two scans of the process table
        deadline = time.monotonic() + 60
        said: list[str] = []
        while not any("walker pid" in x for x in said) and time.monotonic() < deadline:
            try:
                said.append(lines.get(timeout=0.5))
            except queue.Empty:
                if cli.poll() is not None:
                    break
        if not any("walker pid" in x for x in said):
            running = cli.poll() is None
            if running:
                cli.kill()
            cli.wait(10)
            pytest.fail(f"the CLI never said its walker streams within 60 s (CLI "
                        f"{'still running' if running else 'ended'}, rc={cli.returncode}): {said[-20:]}")
        cli.send_signal(how)
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    # THEN no walker is left, and the target goes on
    assert _no_walker_left(v.pid, exe) == []
    assert _zombies_of(v.pid) == []
    assert v.ask("count")["count"] == 0


def _memory_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _h, ctl, path = line.strip().split(":", 2)
                if "memory" in ctl.split(","):
                    base = f"/sys/fs/cgroup/memory{path}"
                    return base if os.access(base, os.W_OK) else None
    except OSError:
        pass
    return None


@pytest.mark.skipif(_memory_cgroup() is None, reason="no writable cgroup v1 memory controller to put the victim in a tight limit")
def test_low_headroom_takes_in_process_path(spawn, tmp_path: Path) -> None:
    # GIVEN a victim in a memory cgroup whose limit leaves less room than a fork would copy
    base = _memory_cgroup()
    assert base is not None
    interp = next((i for i in INTERPS if i.id == "debian-3.11"), INTERPS[0])
    v = spawn(interp, "seeds_leak.py")
    v.ask("leak 40000")
    group = f"{base}/introspect-test-{v.pid}"
    os.mkdir(group)
    try:
        Path(f"{group}/cgroup.procs").write_text(str(v.pid))
        usage = int(Path(f"{group}/memory.usage_in_bytes").read_text())
        Path(f"{group}/memory.limit_in_bytes").write_text(str(usage + 16 * 2**20))
        # WHEN top runs without --fork
        run = introspect("top", str(v.pid), "-v", "--json", "-o", str(tmp_path / "t"))
        # THEN the in-process path ran and said why
        assert run.rc == 0, run.stderr
        col = run.json()["collector"]
        assert col["path"] == "in-process" and "not enough memory to fork" in col["why"] and "cgroup" in col["why"], col
        assert "collecting in-process: not enough memory to fork" in run.stderr
        run = introspect("growth", str(v.pid), "--json", "-o", str(tmp_path / "g"))
        assert run.rc == 0 and "not enough memory to fork" in run.json()["collector"]["why"], run.stderr
        assert v.ask("count")["count"] == 40000
    finally:
        Path(f"{base}/cgroup.procs").write_text(str(v.pid))
        os.rmdir(group)


def test_walk_past_its_budget_answers_partial(spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a heap of about 2M objects and a walk budget of 1 s (the walker's floor)
    from introspect.commands import collector_line
    from introspect.snapshot import collect, heap

    interp = next((i for i in INTERPS if i.id == "pyenv-3.12"), INTERPS[0])
    v = spawn(interp, "seeds_leak.py")
    v.ask("leak 100")
    v.ask("ballast 2000000", timeout=120)
    monkeypatch.setattr(collect, "WALK_BASE_S", 0.0)
    monkeypatch.setattr(collect, "WALK_PER_OBJECT_S", 0.0)
    # The compiled walk step walks these 3M objects within the 1 s floor (0.7-0.9 s): the Python
    # step takes 2-4 s. Both check the budget in the same loop, between batches (agent/walk.py).
    monkeypatch.setenv("INTROSPECT_WALKER", "python")
    seen: dict[str, object] = {}

    def analyse(snap: object, walker: collect.Walker) -> dict[str, object]:
        from introspect.snapshot.records import Snapshot

        assert isinstance(snap, Snapshot)
        seen["n"], seen["edges"] = snap.n, int(snap.refs.shape[0])
        seen["holders"] = len(heap.holders(heap.analyse(snap), walker.labels, 5))
        return {"partial": False, "reason": None}

    # WHEN the walk runs past it
    outcome, value, stats = collect.snapshot(v.pid, analyse, timeout=60)
    # THEN the answer is what was walked, every object found listed, marked partial with the reason
    assert outcome.result.get("forked"), outcome.result
    assert stats["partial"] and "budget ran out" in stats["partial"], stats
    assert value == {"partial": True, "reason": stats["partial"]}
    assert seen["n"] == stats["objects"] and int(seen["n"]) > 100_000, (seen, stats)
    line = collector_line({"path": "fork", "fork_pause_s": 0.001, **stats})
    assert "\nPARTIAL: the walk's budget ran out" in line, line
    assert v.ask("count")["count"] == 100  # the target goes on
