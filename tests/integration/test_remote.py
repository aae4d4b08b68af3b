"""Our own PEP 768 client against the 3.14+ interpreters: driven from the CLI's own Python (another
minor version, no gdb, no python3.X on PATH), refusing unknown layouts, withdrawing what it queued."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from introspect import errors
from introspect.inject import remote
from introspect.target import inspect_target
from tests.conftest import INTERPS, REPO, Run, interp_params

NEW = [p for p in interp_params() if p.values[0].version >= (3, 14)]
pytestmark = pytest.mark.skipif(not NEW, reason="no CPython 3.14+ here: run scripts/setup to provision it")


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """PATH with nothing on it: no gdb, no python3.14/3.15 to drive sys.remote_exec."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": str(REPO)}
    assert all(shutil.which(x, path=env["PATH"]) is None for x in ("gdb", "python3.14", "python3.15"))
    return env


def _cli(args: list[str], env: dict[str, str], timeout: float = 60) -> Run:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "introspect", *args], capture_output=True, text=True, timeout=timeout,
                          cwd="/", env=env)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


@pytest.mark.parametrize("interp", NEW)
def test_driven_from_another_python_version(interp, spawn, tmp_path: Path, bare_env: dict[str, str]) -> None:
    # GIVEN a 3.14+ worker, and a CLI running on another minor version with no gdb or python3.X on PATH
    assert sys.version_info[:2] != interp.version
    victim = spawn(interp)
    # WHEN top runs with our PEP 768 client
    run = _cli(["top", str(victim.pid), "--json", "-v", "-n", "0", "--method", "pep768", "-o", str(tmp_path)], bare_env)
    # THEN our own client made the request (nothing stopped), and the answer is right
    assert run.rc == 0, run.stderr
    assert "our own PEP 768 client" in run.stderr, run.stderr
    doc = run.json()
    assert doc["method"] == "pep768" and doc["attach_pause_s"] == 0
    assert {t["type"]: t["count"] for t in doc["types"]}["__main__.Widget"] == 1239
    assert victim.ask("state")["errors"] == [] and victim.stderr() == ""


@pytest.mark.parametrize("interp", NEW)
def test_unknown_layout_is_refused_not_written(interp, spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = spawn(interp)
    target = inspect_target(victim.pid)
    runtime = remote.runtime_address(target)
    assert remote.read_offsets(target, runtime).path_size == 512
    # GIVEN a layout that puts debugger_support one field off (a build we would not know)
    wrong = {k: dict(v) for k, v in remote.LAYOUTS.items()}
    wrong[interp.version]["debugger_support"] += 1
    monkeypatch.setattr(remote, "LAYOUTS", wrong)
    with pytest.raises(errors.InjectionFailed, match="expected layout"):
        remote.read_offsets(target, runtime)
    # AND a version we have no layout for
    with pytest.raises(errors.InjectionFailed, match="knows the debug-offsets layout of"):
        remote.read_offsets(dataclasses.replace(target, version=(3, 99)), runtime)
    assert victim.ask("state")["errors"] == [] and victim.stderr() == ""


@pytest.mark.parametrize("interp", NEW)
def test_untaken_request_is_withdrawn(interp, spawn, tmp_path: Path, bare_env: dict[str, str]) -> None:
    # GIVEN an idle worker (main thread parked in read()) and --method pep768 only (no ptrace path)
    victim = spawn(interp, "idle.py")
    run = _cli(["top", str(victim.pid), "--method", "pep768", "--timeout", "3", "-v", "-o", str(tmp_path)], bare_env)
    # THEN it gives up, and takes its request back
    assert run.rc == errors.TimeoutExpired.exit_code, run.stderr
    assert "withdrew the request" in run.stderr, run.stderr
    # AND when the worker next runs Python, nothing of ours runs (a left request would fail loudly
    # on its removed script, on the worker's stderr)
    assert victim.ask("job") == {"jobs": 77}
    time.sleep(0.3)
    assert victim.ask("job") == {"jobs": 77}
    assert victim.stderr() == ""


def test_interpreters_cover_both_layouts() -> None:
    versions = {i.version for i in INTERPS if i.version >= (3, 14)}
    assert versions <= set(remote.LAYOUTS)


@pytest.mark.parametrize("mode", ["busy", "parked"])
@pytest.mark.parametrize("interp", NEW)
def test_auto_never_trips_on_restricted_builtins(interp, mode: str, spawn, tmp_path: Path, bare_env: dict[str, str]) -> None:
    # GIVEN a worker creating namedtuples without pause (their __new__ runs with __builtins__ {}),
    # on its main thread, or on another thread while the main one is parked: a PEP 768 request taken
    # inside that frame fails in CPython itself, which prints on the worker's stderr (with --method
    # pep768 this test fails on every 3.14+ kind: 4 of 6 requests on the busy main thread)
    victim = spawn(interp, "namedtuple_threads.py", env={"NT_MODE": mode})
    # WHEN auto runs again and again
    for k in range(4):
        run = _cli(["top", str(victim.pid), "--json", "--in-process", "-o", str(tmp_path / str(k))], bare_env)
        # THEN every run answers, and nothing was printed in the worker
        assert run.rc == 0, run.stderr
        assert {t["type"]: t["count"] for t in run.json()["types"]}["__main__.Job"] == 55
    assert victim.ask("state")["jobs"] == 55
    assert victim.stderr() == ""
