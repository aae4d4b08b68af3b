"""runner._ParkWatch on real processes: a main thread parked in read() is seen parked soon after
PARKED_AFTER_S + PARKED_SEEN_S; one that sleeps a few milliseconds at a time, or runs Python
without a system call, never is (the request would reach it by itself)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from introspect import runner

READER = "import os, sys; print('ready', flush=True); os.read(sys.stdin.fileno(), 1)"
NAPPER = "import time; print('ready', flush=True)\nwhile True: time.sleep(0.003)"
SPINNER = "print('ready', flush=True)\nwhile True: pass"


@contextmanager
def running(code: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _seen_parked_after(pid: int, within: float) -> float | None:
    """Drive the watch as wait_for_result does (every POLL_S); when it said parked, or None."""
    watch = runner._ParkWatch(pid)
    t0 = time.monotonic()
    while (waited := time.monotonic() - t0) < within:
        if watch(waited):
            return waited
        time.sleep(0.02)
    return None


def test_a_main_thread_parked_in_read_is_seen_soon() -> None:
    with running(READER) as proc:
        time.sleep(0.05)  # in read() now
        seen = _seen_parked_after(proc.pid, within=5.0)
    assert seen is not None
    assert seen >= runner.PARKED_AFTER_S + runner.PARKED_SEEN_S
    # the detector itself answers within a few polls (2 cores shared with other work: leeway)
    assert seen < 1.0, seen


@pytest.mark.parametrize("code", [NAPPER, SPINNER], ids=["napping", "spinning"])
def test_a_main_thread_that_runs_is_never_seen_parked(code: str) -> None:
    with running(code) as proc:
        assert _seen_parked_after(proc.pid, within=1.5) is None
