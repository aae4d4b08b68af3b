"""A real gunicorn serving a leaking application (tests/victims/shop_app.py), as an on-call engineer
meets it: is memory growing (a slow leak on a short window), what does report trace first, how
are roots named, and how does `--children` wait on workers that cannot run our code.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import VICTIMS, introspect

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gunicorn") is None,
                       reason="gunicorn not installed: run scripts/setup (or pip install -e '.[test]')"),
    pytest.mark.skipif(shutil.which("gdb") is None and sys.version_info < (3, 14),
                       reason="gdb not installed (introspect needs it below Python 3.14): run scripts/setup"),
]

APP = "shop_app"
PAGEVIEW = f"{APP}.PageView"
# 20 requests a second keeping 2 KiB each: about 3.5 GB a day, yet well under 1 MiB in 12 s.
REQUEST_EVERY_S = 0.05
LEAK_KIB = 2


@dataclass
class Gunicorn:
    master: psutil.Process
    port: int
    log: Path

    def workers(self) -> list[int]:
        return sorted(c.pid for c in self.master.children())

    def get(self, path: str, timeout: float = 10.0) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    def hang(self, path: str) -> socket.socket:
        """Send a request that never gets an answer (it blocks the worker that takes it)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return sock


@contextmanager
def gunicorn(tmp_path: Path, workers: int) -> Iterator[Gunicorn]:
    """`python -m gunicorn -w N` serving shop_app on a free loopback port; stopped and reaped after."""
    log_path = tmp_path / "gunicorn.log"
    log = open(log_path, "wb")  # closed below, after the process is reaped
    # --timeout 300: the workers the tests block on purpose must not be restarted by the arbiter.
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", "127.0.0.1:0", "--timeout", "300",
                             "--chdir", str(VICTIMS), f"{APP}:app"], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    master = psutil.Process(proc.pid)
    kids: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        port = None
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(rb"Listening at: http://127\.0\.0\.1:(\d+)", log_path.read_bytes())
            kids = master.children()
            if m and len(kids) == workers:
                port = int(m.group(1))
                break
            time.sleep(0.1)
        assert port is not None, f"gunicorn did not start:\n{log_path.read_text(errors='replace')}"
        server = Gunicorn(master, port, log_path)
        assert server.get("/") == 200
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        _, alive = psutil.wait_procs(kids, timeout=5)
        for k in alive:
            k.kill()
        psutil.wait_procs(alive, timeout=5)
        log.close()


@contextmanager
def traffic(server: Gunicorn, path: str) -> Iterator[list[int]]:
    """GET path every REQUEST_EVERY_S while the block runs; yields [requests answered]."""
    stop = threading.Event()
    done = [0]
    failures: list[BaseException] = []

    def client() -> None:
        try:
            while not stop.is_set():
                assert server.get(path) == 200
                done[0] += 1
                stop.wait(REQUEST_EVERY_S)
        except BaseException as exc:  # reported below, never lost in a thread
            failures.append(exc)

    thread = threading.Thread(target=client, name="test-traffic", daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive(), "the client thread did not stop"
    assert not failures, f"requests failed: {failures[0]!r}"


def test_a_slow_leak_on_a_short_window_is_growth(tmp_path: Path) -> None:
    with gunicorn(tmp_path, 1) as server:
        (worker,) = server.workers()
        # GIVEN a worker keeping ~2 KiB per request, 20 requests a second
        with traffic(server, f"/leak?{LEAK_KIB}") as done:
            server.get("/leak")
            time.sleep(2.0)  # past the first requests' allocator warm-up
            # WHEN monitor watches it for 12 s
            run = introspect("monitor", str(worker), "--interval", "0.5", "--duration", "12", "-o", str(tmp_path / "m"))
        assert run.rc == 0, run.stderr
        doc = json.loads((tmp_path / "m" / "monitor.json").read_text())
        print(f"monitor: {doc['slope_bytes_per_s']:.0f} B/s, r2 {doc['r2']}, change {doc['change_bytes']} B, "
              f"{doc['verdict']}; {done[0]} requests")
        # THEN it rose by less than 1 MiB, yet the clean slope is called growth, with its projection
        assert doc["change_bytes"] < 2**20, doc["change_bytes"]
        assert doc["verdict"] == "steady growth", run.stdout
        assert doc["slope_mb_per_day"] == pytest.approx(doc["slope_bytes_per_s"] * 86400 / 2**20, rel=1e-3)
        assert re.search(r"steady growth, \+[\d,.]+ [MG]B/day at this rate", run.stdout), run.stdout
        # AND it says when the worker reaches the limit that applies (this machine's: no cgroup
        # memory limit, so MemAvailable) and gunicorn's stopgap, from the worker's own role
        assert doc["limit"]["bytes"] > doc["limit"]["used"] > 0 and doc["seconds_to_limit"] > 0, doc["limit"]
        assert doc["stopgap"]["setting"] == "max_requests", doc["stopgap"]
        assert "limit" in run.stdout and "stopgap: gunicorn --max-requests N --max-requests-jitter" in run.stdout


def test_report_traces_the_application_first_and_counts_every_sample(tmp_path: Path) -> None:
    with gunicorn(tmp_path, 1) as server:
        (worker,) = server.workers()
        # GIVEN the worker leaking PageViews, three weakrefs to each, and a logger per request
        with traffic(server, "/leak"):
            time.sleep(1.0)
            # WHEN report traces two grown types
            run = introspect("report", str(worker), "--duration", "6", "--interval", "0.5", "--backrefs", "2",
                             "-o", str(tmp_path / "r"), timeout=120)
        assert run.rc == 0, run.stderr
        doc = json.loads((tmp_path / "r" / "report.json").read_text())
        growing = {g["type"]: g["since_baseline"] for g in doc["growing"]}
        print(f"growing: {growing}; traced: {[(b['type'], b['why']) for b in doc['backrefs']]}")
        # THEN weakref.ReferenceType grew faster, but the application's classes are what was traced, and why
        assert growing["weakref.ReferenceType"] > growing[PAGEVIEW] > 0
        assert sorted(b["type"] for b in doc["backrefs"]) == [f"{APP}.Job", PAGEVIEW], doc["backrefs"]
        for ref in doc["backrefs"]:
            assert ref["why"].startswith(f"the application's class (module {APP}), grew in every interval"), ref["why"]
        assert "Traced because it is the application&#x27;s class" in (tmp_path / "r" / "index.html").read_text()
        # THEN the summary accounts for every traced instance, not only the first root's share
        ref = next(b for b in doc["backrefs"] if b["type"] == PAGEVIEW)
        summary = next(ln for ln in run.stdout.splitlines() if ln.startswith(f"{PAGEVIEW}:"))
        shares = [int(n) for n in re.findall(r"(\d+) of " + str(ref["sampled"]), summary)]
        assert sum(shares) == ref["sampled"], summary
        assert "via ._views" in summary and "via ._recent" in summary, summary


def test_roots_name_the_owner_and_the_file(tmp_path: Path) -> None:
    with gunicorn(tmp_path, 1) as server:
        (worker,) = server.workers()
        for _ in range(30):
            assert server.get("/leak") == 200
        # WHEN backrefs traces the per-request loggers and the collector thread's jobs
        loggers = introspect("backrefs", str(worker), "logging.Logger", "--json", "-o", str(tmp_path / "l"))
        jobs = introspect("backrefs", str(worker), f"{APP}.Job", "--json", "-o", str(tmp_path / "j"))
    # THEN the loggers are held by the module that owns their manager, logging, not by the first
    # module that happens to hold a logger (gunicorn.http.wsgi's `log`)
    assert loggers.rc == 0, loggers.stderr
    chains = loggers.json()["chains"]
    # every logger is grouped: the 30 per-request ones (and gunicorn's, in loggerDict too) under module
    # logging, the biggest group; a module's own `log = getLogger(__name__)` stays its own root
    assert chains and chains[0]["root"] == "module logging" and chains[0]["count"] >= 30, [(c["root"], c["count"]) for c in chains]
    text = (tmp_path / "l" / "backrefs.txt").read_text()
    assert re.search(r"module logging --\.Logger\.manager--> logging\.Manager --\.loggerDict--> dict --\['[\w.-]+'\]--> logging\.Logger", text), text
    # THEN a thread root names the file of its function
    assert jobs.rc == 0, jobs.stderr
    roots = {c["root"] for c in jobs.json()["chains"]}
    assert any(re.fullmatch(r"thread collector, _collector\(\) in shop_app\.py line \d+, local batch", r) for r in roots), roots


def test_children_run_in_parallel_and_name_the_pending_one(tmp_path: Path) -> None:
    with gunicorn(tmp_path, 2) as server:
        # GIVEN two workers whose main threads wait on a lock while holding the GIL: only waiting can help
        socks = [server.hang("/hold-lock"), server.hang("/hold-lock")]
        try:
            workers = server.workers()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(_main_syscall(w) == "202" for w in workers):
                time.sleep(0.1)
            assert all(_main_syscall(w) == "202" for w in workers), "both workers should be blocked in futex"
            # WHEN top looks into each child with a 10 s timeout
            t0 = time.monotonic()
            run = introspect("top", str(server.master.pid), "--children", "--timeout", "10", "--json",
                             "-o", str(tmp_path / "c"), timeout=120)
            took = time.monotonic() - t0
        finally:
            for s in socks:
                s.close()
    # THEN both timed out together, once (not one after the other), and stderr named them while pending
    print(f"--children took {took:.1f} s; stderr:\n{run.stderr}")
    assert run.rc == 7, run.stderr
    doc = run.json()
    assert {c["pid"] for c in doc["children"]} == set(workers) and doc["failed"] == 2
    for c in doc["children"]:
        assert c["error"]["exit_code"] == 7 and "futex" in c["error"]["message"], c
    for w in workers:
        assert f"still waiting for child {w}" in run.stderr
    assert took < 18, f"took {took:.1f} s: the children did not wait side by side"
    assert "Traceback" not in run.stderr


def test_children_fail_fast_when_waiting_cannot_help(tmp_path: Path) -> None:
    with gunicorn(tmp_path, 2) as server:
        # GIVEN one worker blocked in poll() holding the GIL (an idle uWSGI worker without threads), one idle
        sock = server.hang("/hold-gil")
        try:
            workers = server.workers()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(_main_syscall(w) == "7" for w in workers):
                time.sleep(0.1)
            (held,) = [w for w in workers if _main_syscall(w) == "7"]
            # WHEN top looks into each child with the default --timeout (30 s)
            t0 = time.monotonic()
            run = introspect("top", str(server.master.pid), "--children", "--json", "-o", str(tmp_path / "c"), timeout=120)
            took = time.monotonic() - t0
        finally:
            sock.close()
    # THEN the idle worker answered, and the blocked one failed at once with the cause
    assert run.rc == 0, run.stderr
    by_pid = {c["pid"]: c for c in run.json()["children"]}
    assert by_pid[held]["ok"] is False and by_pid[held]["error"]["exit_code"] == 6, by_pid[held]
    assert "holding the GIL" in by_pid[held]["error"]["message"]
    (other,) = [w for w in workers if w != held]
    assert by_pid[other]["ok"] is True and by_pid[other]["types"], by_pid[other]
    assert took < 20, f"took {took:.1f} s"


def _main_syscall(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return ""


def test_gunicorn_rig_cleans_up(tmp_path: Path) -> None:
    # The fixture's own promise: no gunicorn process of ours is left behind.
    with gunicorn(tmp_path, 1) as server:
        pids = [server.master.pid, *server.workers()]
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


