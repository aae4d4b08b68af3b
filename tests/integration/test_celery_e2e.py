"""The seeds' leak, end to end: a real Celery worker on a real Redis, on every pool type.

For each pool the leak lives in the process that executes tasks (the prefork *child*; the worker
itself for threads, solo, gevent and eventlet). ``introspect`` runs as a subprocess against it, as
an on-call engineer would run it, and must report exactly what the tasks leaked, name the holder,
and leave the worker running and serving tasks.

The rig is in ``celery_rig.py``; the Celery app and its leaking tasks in ``tests/celery_leak``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.celery_rig import (
    IDLE_SYSCALL_X86_64,
    POOL_MODULES,
    POOLS,
    REPO_ROOT,
    CeleryWorker,
    RedisServer,
    main_thread_syscall,
    wait_until,
)

celery = pytest.importorskip("celery", reason="celery not installed: run scripts/setup (or pip install -e '.[test]')")

pytestmark = pytest.mark.slow

LEAK_MODULE = "tests.celery_leak.tasks"
CUSTOM = f"{LEAK_MODULE}.MyCustomObject"
STORE_N = 500
CACHE_N = 300
TASK_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 30.0
# An idle prefork child sits in read() on its pool pipe, so a pending call never runs and introspect
# falls back to PyGILState_Ensure on the parked main thread. Both paths are real: the top/growth
# tests keep a prefork child busy with cheap tasks (pending-call path, a task may start mid-look),
# test_idle_task_process_answers leaves every pool idle (fallback path for prefork).
TICK_INTERVAL_S = 0.05


@pytest.fixture
def worker(pool: str, redis_server: RedisServer) -> Iterator[CeleryWorker]:
    module = POOL_MODULES[pool]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed (needed by the {pool} pool): run scripts/setup (or pip install -e '.[test]')")
    if sys.version_info < (3, 14) and shutil.which("gdb") is None:
        pytest.skip("gdb not installed (introspect needs it below Python 3.14): run scripts/setup (or apt-get install gdb)")
    with CeleryWorker(pool, redis_server.url) as w:
        yield w


def run_task(client: Any, worker: CeleryWorker, name: str, *args: Any) -> Any:
    result = client.send_task(f"{LEAK_MODULE}.{name}", args=args, queue=worker.queue)
    try:
        return result.get(timeout=TASK_TIMEOUT_S)
    except celery.exceptions.TimeoutError:
        pytest.fail(f"task {name}{args} got no result within {TASK_TIMEOUT_S:g} s{worker.log_tail()}")


def warm_up(client: Any, worker: CeleryWorker) -> int:
    """One round trip; returns the task pid and checks the rig found the right process."""
    who = run_task(client, worker, "whoami")
    assert who["pid"] == worker.task_pid(), f"tasks run in {who}, rig says {worker.task_pid()}"
    return int(who["pid"])


@contextmanager
def traffic(client: Any, worker: CeleryWorker) -> Iterator[None]:
    """Send a ``tick`` task every TICK_INTERVAL_S while the block runs (prefork only)."""
    if worker.pool != "prefork":
        yield
        return
    stop = threading.Event()
    errors: list[BaseException] = []

    def ticker() -> None:
        try:
            while not stop.is_set():
                client.send_task(f"{LEAK_MODULE}.tick", queue=worker.queue, ignore_result=True)
                stop.wait(TICK_INTERVAL_S)
        except BaseException as exc:  # reported below, never lost in a thread
            errors.append(exc)

    thread = threading.Thread(target=ticker, name="introspect-test-ticker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the ticker thread did not stop within 10 s"
    assert not errors, f"sending ticks failed: {errors[0]!r}"


class Cli:
    """``python -m introspect`` as a subprocess, each run writing into its own fresh directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.runs = 0

    def __call__(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> dict[str, Any]:
        self.runs += 1
        out_dir = self.tmp_path / f"introspect-{self.runs}-{args[0]}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        cmd = [sys.executable, "-m", "introspect", *args, "--json", "--timeout", f"{timeout:g}", "-o", str(out_dir)]
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout + 60)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{' '.join(cmd[2:])} did not finish within {exc.timeout:g} s")
        assert proc.returncode == 0, f"{' '.join(cmd[2:])} exited {proc.returncode}:\n{proc.stderr}"
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def counts(doc: dict[str, Any]) -> dict[str, int]:
    return {row["type"]: row["count"] for row in doc["types"]}


def rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["type"]: row for row in doc["types"]}


def first_via(chain: dict[str, Any]) -> str:
    """How the root holds the first object: a global's name (an attribute may be spelt ``.name``)."""
    via = chain["path"][0]["via"] if chain["path"] else None
    return (via or "").lstrip(".")


def assert_unharmed(client: Any, worker: CeleryWorker, task_pid: int) -> None:
    """Still running, same task process (a crashed prefork child would be replaced), still serving."""
    assert worker.alive(), f"worker exited with {worker.proc and worker.proc.returncode}{worker.log_tail()}"
    assert run_task(client, worker, "whoami")["pid"] == task_pid
    assert worker.task_pid() == task_pid
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "SystemError" not in log, f"the worker logged an error{worker.log_tail()}"


@pytest.mark.parametrize("pool", POOLS)
def test_top_counts_leak(pool: str, worker: CeleryWorker, client: Any, cli: Cli) -> None:
    # GIVEN a warm worker whose task process has leaked CACHE_N objects into the module cache
    task_pid = warm_up(client, worker)
    assert run_task(client, worker, "leak_cache", CACHE_N) == {"pid": task_pid, "cached": CACHE_N, "total": CACHE_N}

    # WHEN introspect counts the task process's heap
    with traffic(client, worker):
        doc = cli("top", str(task_pid), "-n", "0")

    # THEN it counts exactly what was leaked, in the right process, and the worker carries on
    assert doc["pid"] == task_pid
    assert counts(doc).get(CUSTOM) == CACHE_N
    assert_unharmed(client, worker, task_pid)


@pytest.mark.parametrize("pool", POOLS)
def test_growth_and_backrefs_find_leaks(pool: str, worker: CeleryWorker, client: Any, cli: Cli) -> None:
    # GIVEN a warm worker and a growth baseline recorded in its task process
    task_pid = warm_up(client, worker)
    with traffic(client, worker):
        first = cli("growth", str(task_pid), "-n", "0")
    assert first["baseline_recorded"] is True

    # WHEN both leaking tasks run
    assert run_task(client, worker, "leak_store", STORE_N)["stored"] == STORE_N
    assert run_task(client, worker, "leak_cache", CACHE_N)["cached"] == CACHE_N
    with traffic(client, worker):
        second = cli("growth", str(task_pid), "-n", "0")

    # THEN growth shows both leaking types rising: MyCustomObject exactly (nothing else makes one),
    # dict by at least the stored records (other dicts come and go with each task)
    assert second["baseline_recorded"] is False
    grown = rows(second)
    assert grown[CUSTOM]["count"] == CACHE_N
    assert grown[CUSTOM]["delta"] == CACHE_N
    assert grown[CUSTOM]["since_baseline"] == CACHE_N
    # Net dict change is the STORE_N records plus the worker's own churn, measured within +-50.
    assert grown["dict"]["delta"] >= STORE_N * 0.9, grown["dict"]
    assert grown["dict"]["since_baseline"] >= STORE_N * 0.9, grown["dict"]
    # An engineer reading the table sees the records first: their dicts, bytes (and ints) all rose by STORE_N,
    # untracked by gc as they are; MyCustomObject rose by CACHE_N
    assert {"dict", "bytes"} <= {row["type"] for row in second["types"][:4]}, second["types"][:5]
    assert grown["bytes"]["delta"] >= STORE_N * 0.9 and grown["bytes"]["bytes_delta"] >= STORE_N * 1024, grown["bytes"]
    # AND the holder is named, its retained bytes risen by the records'
    named = [h for h in second["holders"] if h["path"] == f"module {LEAK_MODULE} .global_data_store"]
    assert named, second["holders"]
    holder = named[0]
    assert holder["items"] == STORE_N and holder["retained_bytes"] >= STORE_N * 1024, holder
    # Empty at the baseline, the store was too small to be listed then: it is said to be new
    # (no change figures), never guessed to have grown by all it holds; matched, its change is exact
    assert holder["matched"] is False or holder["items_delta"] == STORE_N, holder
    assert holder["matched"] is not False or (holder["items_delta"] is None and holder["retained_delta"] is None), holder

    # WHEN the cache leaks some more
    assert run_task(client, worker, "leak_cache", 100)["total"] == CACHE_N + 100
    with traffic(client, worker):
        third = cli("growth", str(task_pid), "-n", "0")

    # THEN delta is the change since the previous look, since_baseline the change since the first
    assert rows(third)[CUSTOM]["delta"] == 100
    assert rows(third)[CUSTOM]["since_baseline"] == CACHE_N + 100

    # WHEN backrefs asks who keeps MyCustomObject alive
    with traffic(client, worker):
        refs = cli("backrefs", str(task_pid), CUSTOM, "--samples", "5", "--max-depth", "6")

    # THEN the chains start at the tasks module and go through its _object_cache global
    assert refs["type"] == CUSTOM
    assert refs["found"] == CACHE_N + 100
    assert refs["chains"], refs
    holders = [c for c in refs["chains"] if c["root"] == f"module {LEAK_MODULE}"]
    assert holders, [c["root"] for c in refs["chains"]]
    assert any(first_via(c) == "_object_cache" for c in holders), holders
    # a forked snapshot groups every instance by its path (--samples caps the groups shown)
    assert sum(c["count"] for c in holders) == CACHE_N + 100, refs["chains"]
    assert_unharmed(client, worker, task_pid)


@pytest.mark.parametrize("pool", POOLS)
def test_idle_task_process_answers(pool: str, worker: CeleryWorker, client: Any, cli: Cli) -> None:
    # GIVEN a worker that has done one task and now waits for work (no traffic at all), its task
    # process's main thread parked in a system call
    task_pid = warm_up(client, worker)
    run_task(client, worker, "leak_cache", 10)
    if platform.machine() == "x86_64":
        idle = IDLE_SYSCALL_X86_64[pool]
        wait_until(lambda: main_thread_syscall(task_pid) == idle, 5.0,
                   f"the main thread of {task_pid} to block in syscall {idle}",
                   on_timeout=lambda: f" (it is in {main_thread_syscall(task_pid)})")

    # WHEN introspect looks inside the idle task process
    doc = cli("top", str(task_pid), "-n", "0", timeout=10)

    # THEN it answers anyway (prefork: the child never wakes by itself, so only introspect's
    # blocked-main-thread fallback gets in) and counts exactly
    assert counts(doc).get(CUSTOM) == 10
    assert_unharmed(client, worker, task_pid)
