"""On-call polish, on real processes: what introspect leaves on disk, how it words gc.freeze, how
fast it gives up when waiting cannot help.

- `ps` only looks: it writes no file unless `-o` is given;
- lock files go with the run that made them, and those of dead pids (an introspect killed with
  SIGKILL) are removed by the next run, unless someone holds them;
- a run directory left in the target's /tmp by a killed introspect is removed by the next run;
- the permanent generation is not blamed on the application (3.12.1 starts with 375 objects there);
- a main thread blocked in C while holding the GIL fails at once with the cause, not after --timeout;
- a main thread idle in poll() (resumed as restart_syscall after a ptrace stop) is reached at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    INTERPS,
    REPO,
    Interp,
    interp_method_params,
    interp_params,
    introspect,
    run_dirs_of,
)

PY = next((i for i in INTERPS if i.id == "pyenv-3.11"), INTERPS[0] if INTERPS else None)
LOCK_DIR = Path("/tmp/introspect-locks" if os.geteuid() == 0 else f"/tmp/introspect-locks-{os.geteuid()}")
needs_py = pytest.mark.skipif(PY is None, reason="no Python interpreter found to victimise")


def dead_pid() -> int:
    """The pid of a process we started and reaped: nothing runs under it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def test_ps_writes_nothing_unless_asked(tmp_path: Path) -> None:
    # GIVEN an empty working directory
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # WHEN ps runs twice without -o
    for _ in range(2):
        run = introspect("ps", cwd=str(cwd))
        assert run.rc == 0, run.stderr
    # THEN nothing was written, and nothing claims it was
    assert list(cwd.iterdir()) == []
    assert "written" not in run.stderr
    # WHEN -o is given THEN ps.json and ps.txt are there
    run = introspect("ps", "--json", "-o", str(tmp_path / "out"), cwd=str(cwd))
    assert run.rc == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ps.json", "ps.txt"]
    assert list(cwd.iterdir()) == []


@needs_py
def test_lock_files_do_not_pile_up(spawn: Any, tmp_path: Path) -> None:
    assert PY is not None
    victim = spawn(PY)
    # GIVEN the lock file of a dead pid (an introspect killed mid-run), and another dead pid's
    # lock file that someone holds right now
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    stale, held = LOCK_DIR / f"{dead_pid()}.lock", LOCK_DIR / f"{dead_pid()}.lock"
    stale.write_bytes(b"")
    fd = os.open(held, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # WHEN introspect runs on a live process
        run = introspect("top", str(victim.pid), "-n", "3", "-o", str(tmp_path / "top"))
        assert run.rc == 0, run.stderr
        # THEN its own lock file is gone with it, the dead pid's is removed, the held one is kept
        assert not (LOCK_DIR / f"{victim.pid}.lock").exists()
        assert not stale.exists()
        assert held.exists()
    finally:
        os.close(fd)
        held.unlink(missing_ok=True)
    assert victim.alive()


@needs_py
def test_run_dir_of_a_killed_introspect_is_removed(spawn: Any, tmp_path: Path) -> None:
    assert PY is not None
    # GIVEN an introspect killed (SIGKILL) while it waited on a process that cannot run our code
    blocked = spawn(PY, "gil_blocked.py", env={"VICTIM_BLOCK": "futex"})
    cli = subprocess.Popen([sys.executable, "-m", "introspect", "top", str(blocked.pid), "--timeout", "60", "-o",
                            str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not run_dirs_of(blocked.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3.0)  # injected (gdb has detached), now only waiting for the main thread
        assert cli.poll() is None, "introspect ended before it could be killed"
        # The suite's other introspects sweep /tmp too: this test takes the killed CLI's lock the
        # moment it is released (a thread blocked on it), so that no other sweep removes the
        # directory before it is looked at below; it lets go before its own next run.
        dirs = run_dirs_of(blocked.pid)
        assert len(dirs) == 1, dirs
        lock = os.open(str(dirs[0] / "cli.lock"), os.O_RDWR)
        taken = threading.Thread(target=fcntl.flock, args=(lock, fcntl.LOCK_EX))
        taken.start()
        cli.send_signal(signal.SIGKILL)
    finally:
        cli.kill()
        cli.wait(10)
    taken.join(10)
    assert not taken.is_alive(), "the killed introspect's lock was never released"
    left = run_dirs_of(blocked.pid)
    os.close(lock)
    assert len(left) == 1, left
    # WHEN introspect next runs on any process with the same /tmp
    victim = spawn(PY)
    run = introspect("top", str(victim.pid), "-n", "3", "-o", str(tmp_path / "next"))
    # THEN the killed run's directory is gone, and nothing of the new run stays either
    assert run.rc == 0, run.stderr
    assert not left[0].exists()
    assert not run_dirs_of(victim.pid)


@pytest.mark.parametrize("interp", interp_params())
def test_permanent_generation_is_not_blamed_on_the_application(interp: Interp, spawn: Any, tmp_path: Path) -> None:
    # GIVEN a process that never called gc.freeze() (3.12.1 starts with 375 objects frozen anyway)
    victim = spawn(interp)
    # WHEN top counts its gc-tracked objects in-process (the forked snapshot walks from the roots,
    # frozen objects included, so it has no such note to make)
    run = introspect("top", str(victim.pid), "-n", "3", "--in-process", "-o", str(tmp_path / "top"))
    assert run.rc == 0, run.stderr
    frozen = json.loads((tmp_path / "top" / "top.json").read_text())["gc"]["frozen"]
    # THEN the permanent generation, if not empty, is named without saying the application froze it
    assert "frozen by gc.freeze()" not in run.stdout
    if frozen:
        assert "objects in gc's permanent generation (put there by gc.freeze() or by the interpreter itself)" in run.stdout
    else:
        assert "permanent generation" not in run.stdout


@pytest.mark.parametrize(("interp", "method"), interp_method_params())
def test_gil_held_while_blocked_fails_fast(interp: Interp, method: str, spawn: Any, tmp_path: Path) -> None:
    # GIVEN a main thread blocked in poll() while holding the GIL (an idle uWSGI worker without threads)
    victim = spawn(interp, "gil_blocked.py", env={"VICTIM_BLOCK": "poll"})
    # WHEN top is asked with a generous --timeout
    t0 = time.monotonic()
    run = introspect("top", str(victim.pid), "--method", method, "--timeout", "60", "-o", str(tmp_path / "top"))
    took = time.monotonic() - t0
    # THEN it gives up long before the timeout, naming the cause and the fix, never "a larger --timeout"
    assert run.rc == 6, run.stderr
    assert "Traceback" not in run.stderr and "larger --timeout" not in run.stderr
    if method == "pep768":
        assert "--method auto (or ptrace)" in run.stderr, run.stderr
    else:
        assert "holding the GIL" in run.stderr and "traffic" in run.stderr, run.stderr
    assert took < 30, f"took {took:.1f} s"
    assert victim.alive()
    assert not run_dirs_of(victim.pid)


@pytest.mark.parametrize("interp", interp_params())
def test_idle_in_poll_is_reached_at_once(interp: Interp, spawn: Any, tmp_path: Path) -> None:
    # GIVEN a main thread idle in poll() with the GIL released (resumed as restart_syscall once
    # gdb has stopped it)
    victim = spawn(interp, "poll_idle.py")
    # WHEN top is asked
    t0 = time.monotonic()
    run = introspect("top", str(victim.pid), "-n", "3", "--timeout", "30", "-v", "-o", str(tmp_path / "top"))
    took = time.monotonic() - t0
    # THEN the parked-thread path answers, without waiting out the timeout
    assert run.rc == 0, run.stderr
    assert "ran via PyGILState_Ensure" in run.stderr, run.stderr
    assert took < 15, f"took {took:.1f} s"
    assert victim.alive()
