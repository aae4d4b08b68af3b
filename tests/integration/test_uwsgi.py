"""An idle uWSGI worker as Debian configures it (no enable-threads): its main thread sits in
epoll_wait in uWSGI's C loop *holding* the GIL, outside any Python frame. No pending call can run
there; the ptrace injector's parked path runs the agent on that thread."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, Run

PLUGIN = Path("/usr/lib/uwsgi/plugins/python3_plugin.so")
pytestmark = pytest.mark.skipif(shutil.which("uwsgi") is None or not PLUGIN.exists(),
                                reason="uwsgi-core and uwsgi-plugin-python3 are not installed (scripts/setup installs them)")

APP = """\
class Job:
    pass


jobs = [Job() for _ in range(77)]


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"jobs %d" % len(jobs)]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _syscall(pid: int) -> str:
    with open(f"/proc/{pid}/task/{pid}/syscall") as f:
        return f.read().split()[0]


@pytest.fixture
def uwsgi_worker(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """(worker pid, port, log) of a uWSGI master with one idle worker; killed and reaped after."""
    (tmp_path / "app.py").write_text(APP)
    port = _free_port()
    log = tmp_path / "uwsgi.log"
    with open(log, "wb") as out:
        master = subprocess.Popen(["uwsgi", "--plugin", "python3", "--http-socket", f"127.0.0.1:{port}", "--wsgi-file",
                                   "app.py", "--master", "--processes", "1", "--die-on-term"],
                                  cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        worker = None
        while time.monotonic() < deadline:
            kids = psutil.Process(master.pid).children()
            if kids and _syscall(kids[0].pid) == "232":  # epoll_wait: idle, waiting for a request
                worker = kids[0].pid
                break
            time.sleep(0.1)
        assert worker is not None, log.read_text()
        yield worker, port, log
    finally:
        master.send_signal(signal.SIGTERM)
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait(10)


def test_idle_uwsgi_worker_answers(uwsgi_worker: tuple[int, int, Path], tmp_path: Path) -> None:
    worker, port, log = uwsgi_worker
    # GIVEN an idle worker, and no gdb on PATH
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": str(REPO)}
    # WHEN introspect counts its objects
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "introspect", "top", str(worker), "--json", "-v", "-n", "0", "-o",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=60, env=env, cwd="/")
    run = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
    # THEN it answers through the parked path on the GIL-holding main thread, within seconds
    assert run.rc == 0, run.stderr
    assert "parked in epoll_wait() holding the GIL outside any Python frame" in run.stderr, run.stderr
    assert "--timeout" not in run.stderr
    assert run.seconds < 10
    counts = {t["type"]: t["count"] for t in run.json()["types"]}
    assert [c for name, c in counts.items() if name.endswith(".Job")] == [77], counts
    # AND the worker still serves requests, with nothing on its log but the requests
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        assert resp.read() == b"jobs 77"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        assert resp.read() == b"jobs 77"
    text = log.read_text()
    assert "Traceback" not in text and "Error" not in text, text
