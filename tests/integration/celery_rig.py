"""A real Redis and a real Celery worker for end-to-end tests, started and always reaped.

``RedisServer`` runs Debian's ``redis-server`` on a free loopback port (no persistence, no daemon);
``CeleryWorker(pool, redis_url)`` runs ``python -m celery -A tests.celery_leak.tasks worker`` on its
own queue and knows which process executes tasks (``task_pid()``): the single prefork child for the
prefork pool, the worker process itself for threads, solo, gevent and eventlet.

Every wait has a deadline, every subprocess a timeout; only processes started here (and the
children they forked, identified by parent pid) are ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS_MODULE = "tests.celery_leak.tasks"
POOLS = ("prefork", "threads", "solo", "gevent", "eventlet")
# The worker imports these for the given pool; a missing one is a skip with its name, not a failure.
POOL_MODULES = {"prefork": "billiard", "threads": "concurrent.futures", "solo": "celery",
                "gevent": "gevent", "eventlet": "eventlet"}


class RigError(RuntimeError):
    """A rig process did not come up or go down in time; the message carries its log tail."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
               on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``RigError`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise RigError(f"timed out after {timeout:.0f} s waiting for {what}{on_timeout()}")
        time.sleep(interval)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    """One RESP PING on loopback; True on +PONG. No client library needed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n--- " + str(path) + " (last lines) ---\n" + "\n".join(text.splitlines()[-lines:])


def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL; always wait for the exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


class RedisServer:
    """``redis-server`` on 127.0.0.1 at a free port, no persistence; use as a context manager."""

    def __init__(self, startup_timeout: float = 10.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="introspect-redis-"))
        self.log_path = self.dir / "redis.log"

    @staticmethod
    def executable() -> str | None:
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = self.executable()
        if exe is None:
            raise RigError("redis-server not installed (Debian package redis-server)")
        last = ""
        # The port is free when picked but may be taken before redis binds it: try a few.
        for _ in range(3):
            self.port = free_loopback_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                     "--daemonize", "no", "--protected-mode", "yes", "--dir", str(self.dir), "--logfile", ""],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
            try:
                wait_until(lambda: self.proc is None or self.proc.poll() is not None or redis_ping(self.port),
                           self.startup_timeout, f"redis-server to answer PING on port {self.port}",
                           on_timeout=lambda: _tail(self.log_path))
            except RigError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            last = _tail(self.log_path)
            self.stop()
        raise RigError(f"redis-server exited at startup three times{last}")

    def stop(self) -> None:
        if self.proc is not None:
            _reap(self.proc, grace=5.0)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class CeleryWorker:
    """One ``celery worker --pool=<pool> --concurrency=1`` (or ``concurrency``) on its own queue; a context manager.

    A fresh queue name per worker means a task left over from an earlier (failed) test can never be
    run by this worker and skew its counts.
    """

    def __init__(self, pool: str, redis_url: str, startup_timeout: float = 30.0, stop_timeout: float = 15.0,
                 concurrency: int = 1) -> None:
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; one of {', '.join(POOLS)}")
        self.pool = pool
        # More than one prefork child: task_pid() is then ambiguous (use children()).
        self.concurrency = concurrency
        self.redis_url = redis_url
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        tag = uuid.uuid4().hex[:8]
        self.queue = f"introspect-{pool}-{tag}"
        self.hostname = f"introspect-{pool}-{tag}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix=f"introspect-celery-{pool}-"))
        self.log_path = self.dir / "worker.log"
        self.ready_path = self.dir / "ready"
        self.proc: subprocess.Popen[bytes] | None = None
        self._children: dict[int, Any] = {}  # pid -> psutil.Process

    # -- lifecycle -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env["INTROSPECT_TEST_REDIS_URL"] = self.redis_url
        env["INTROSPECT_TEST_READY_FILE"] = str(self.ready_path)
        env["PYTHONUNBUFFERED"] = "1"
        # Celery refuses nothing as root with JSON only, but says so loudly; keep the log readable.
        env.setdefault("C_FORCE_ROOT", "1")
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", TASKS_MODULE, "worker", f"--pool={self.pool}",
                f"--concurrency={self.concurrency}", "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-Q", self.queue, "-n", self.hostname]

    def start(self) -> CeleryWorker:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.ready_path.exists() or self.proc is None or self.proc.poll() is not None,
                       self.startup_timeout, f"celery worker (pool={self.pool}) to be ready",
                       on_timeout=lambda: _tail(self.log_path))
            if self.proc.poll() is not None:
                raise RigError(f"celery worker (pool={self.pool}) exited with {self.proc.returncode} at startup"
                               f"{_tail(self.log_path)}")
            if self.pool == "prefork":
                wait_until(lambda: self._prefork_child(), 10.0, "the prefork pool's child process",
                           on_timeout=lambda: _tail(self.log_path))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); after ``stop_timeout`` SIGKILL the worker and its children.

        Children are held as ``psutil.Process`` objects, which refuse to signal a pid that was
        reused by another process since (psutil checks the creation time).
        """
        if self.proc is None:
            return
        import psutil

        self._remember_children()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._remember_children()
                for child in self._children.values():
                    try:
                        child.kill()
                    except psutil.NoSuchProcess:
                        pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        # A child outliving its parent is reparented; it is still ours to end.
        _, alive = psutil.wait_procs(list(self._children.values()), timeout=5.0)
        for child in alive:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5.0)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts -----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        """Direct children of the worker process (psutil; by parent pid), remembered for stop()."""
        import psutil

        try:
            kids = psutil.Process(self.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            kids = []
        for kid in kids:
            self._children.setdefault(kid.pid, kid)
        return [kid.pid for kid in kids]

    def _remember_children(self) -> None:
        if self.alive():
            self.children()

    def _prefork_child(self) -> int | None:
        kids = self.children()
        return kids[0] if len(kids) == self.concurrency else None

    def task_pid(self) -> int:
        """The process that executes tasks: the one prefork child, else the worker itself."""
        if self.pool != "prefork":
            return self.pid
        if self.concurrency != 1:
            raise RigError(f"{self.concurrency} prefork children: any of them may run a task (use children())")
        child = self._prefork_child()
        if child is None:
            raise RigError(f"expected exactly one prefork child of worker {self.pid}, found {self.children()}")
        return child

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


def thread_states(pid: int) -> list[dict[str, str]]:
    """Per thread: name, syscall line and wchan from /proc (what each thread is blocked in)."""
    rows = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
        def read(name: str, task: Path = task) -> str:
            try:
                return (task / name).read_text().strip()
            except OSError as exc:
                return f"<{exc.strerror}>"
        rows.append({"tid": task.name, "comm": read("comm"), "syscall": read("syscall"), "wchan": read("wchan")})
    return rows


# What an idle task process's main thread waits in (x86_64 syscall numbers; measured, Celery 5.x):
# the prefork child in read() on its pool pipe (wchan anon_pipe_read), every other pool in the
# event loop's epoll_wait() with a 1 s (kombu hub) or ~2 s (gevent, eventlet hub) timeout.
IDLE_SYSCALL_X86_64 = {"prefork": 0, "threads": 232, "solo": 232, "gevent": 232, "eventlet": 232}


def main_thread_syscall(pid: int) -> int | None:
    """The syscall number the main thread is blocked in, or None when it is running (or unknown)."""
    try:
        first = Path(f"/proc/{pid}/task/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.lstrip("-").isdigit() else None
