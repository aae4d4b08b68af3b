"""Victims started through a wrapper (unshare, runuser) and the checks every hostile test ends with.

The wrapper's own process is not the target: the Python below it is, found by its host pid (in its
own pid namespace it calls itself 1). Everything started here is killed by pid and reaped.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil

BOXED = Path(__file__).resolve().parents[1] / "victims" / "boxed.py"


def proc_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat (R, S, D, T, t, Z...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1].split()[0]


class WrappedVictim:
    """``argv`` ends by running tests/victims/boxed.py (a file or its text with -c) under a wrapper."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.errlog = tempfile.NamedTemporaryFile(prefix="victim-err-", suffix=".log", delete=False)
        self.wrapper = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errlog,
                                        env=env, cwd="/")
        self.pid = -1
        try:
            line = self._readline(20)
            assert line.startswith("ready"), f"victim did not start: {line!r} {self.stderr()}"
            leaves = [p for p in psutil.Process(self.wrapper.pid).children(recursive=True) if not p.children()]
            assert len(leaves) == 1, f"expected one Python under {argv[0]}, found {leaves}"
            self.pid = leaves[0].pid
            self.start_report = self.ask()
        except BaseException:
            self.close()
            raise

    def _readline(self, timeout: float) -> str:
        assert self.wrapper.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.wrapper.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"victim did not answer within {timeout} s; stderr: {self.stderr()}")
        return self.wrapper.stdout.readline().decode()

    def ask(self) -> Any:
        """The victim's own report: how many Boxed objects it holds, what its /tmp contains."""
        assert self.wrapper.stdin is not None
        self.wrapper.stdin.write(b"report\n")
        self.wrapper.stdin.flush()
        return json.loads(self._readline(20))

    def stderr(self) -> str:
        return Path(self.errlog.name).read_text(errors="replace")

    def assert_unharmed(self) -> None:
        """Still running, not stopped, still answering, nothing written on its stderr."""
        state = proc_state(self.pid)
        assert state in "RSD", f"victim {self.pid} is in state {state}"
        assert self.ask()["boxed"] == self.start_report["boxed"]
        assert self.stderr() == ""

    def close(self) -> None:
        if self.wrapper.poll() is None:
            if self.pid > 0:
                try:
                    os.kill(self.pid, signal.SIGKILL)  # the wrapper (unshare, runuser) then exits
                except ProcessLookupError:
                    pass
            else:
                self.wrapper.kill()  # never got as far as the victim's pid
        try:
            self.wrapper.wait(10)
        except subprocess.TimeoutExpired:
            self.wrapper.kill()
            self.wrapper.wait(5)
        self.errlog.close()
        os.unlink(self.errlog.name)
