"""The on-call workflow on a real Celery prefork worker (2 children) on a real Redis: `introspect ps`
finds the master and its children, `top MASTER` points at the children, `top MASTER --children`
looks inside each child and finds the leak in the one that ran the leaking task.

One worker for the whole module keeps this quick; the test that stops children resumes them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.celery_rig import REPO_ROOT, CeleryWorker, RedisServer, wait_until

celery = pytest.importorskip("celery", reason="celery not installed: run scripts/setup (or pip install -e '.[test]')")

pytestmark = pytest.mark.slow

LEAK_MODULE = "tests.celery_leak.tasks"
CUSTOM = f"{LEAK_MODULE}.MyCustomObject"
CACHE_N = 250
TASK_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 30.0
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[CeleryWorker]:
    if importlib.util.find_spec("billiard") is None:
        pytest.skip("billiard not installed (needed by the prefork pool): run scripts/setup (or pip install -e '.[test]')")
    if sys.version_info < (3, 14) and shutil.which("gdb") is None:
        pytest.skip("gdb not installed (introspect needs it below Python 3.14): run scripts/setup (or apt-get install gdb)")
    with CeleryWorker("prefork", redis_server.url, concurrency=2) as w:
        yield w


def run_task(client: Any, worker: CeleryWorker, name: str, *args: Any) -> Any:
    result = client.send_task(f"{LEAK_MODULE}.{name}", args=args, queue=worker.queue)
    try:
        return result.get(timeout=TASK_TIMEOUT_S)
    except celery.exceptions.TimeoutError:
        pytest.fail(f"task {name}{args} got no result within {TASK_TIMEOUT_S:g} s{worker.log_tail()}")


def introspect(tmp_path: Path, *args: str, json_out: bool = True) -> tuple[int, Any, str]:
    """The real CLI in a subprocess: (exit code, parsed JSON or text on stdout, stderr)."""
    out_dir = tmp_path / f"out-{len(list(tmp_path.iterdir()))}-{args[0]}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "introspect", *args, "-o", str(out_dir), *(["--json"] if json_out else [])]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd[2:])} did not finish within {exc.timeout:g} s")
    assert "Traceback" not in proc.stderr, proc.stderr
    out: Any = json.loads(proc.stdout) if json_out and proc.stdout.strip() else proc.stdout
    return proc.returncode, out, proc.stderr


def counts(doc: dict[str, Any]) -> dict[str, int]:
    return {row["type"]: row["count"] for row in doc["types"]}


def test_ps_shows_master_and_children(worker: CeleryWorker, tmp_path: Path) -> None:
    # GIVEN a prefork worker with two children
    kids = sorted(worker.children())
    assert len(kids) == 2, kids

    # WHEN ps lists the Python processes
    code, doc, err = introspect(tmp_path, "ps")

    # THEN the master is a prefork celery-master, its children celery-child under it, all with a
    # Python version, memory figures and inspectable (we started them, as root or as their user)
    assert code == 0, err
    by_pid = {p["pid"]: p for p in doc["processes"]}
    master = by_pid[worker.pid]
    assert (master["role"], master["pool"], master["python"]) == ("celery-master", "prefork", PYTHON), master
    assert sorted(master["children"]) == kids
    assert master["rss"] > 0 and master["inspectable"] is True and master["reason"] is None, master
    assert master["cmdline"][-4:] == worker.command()[-4:]
    for kid in kids:
        child = by_pid[kid]
        assert (child["role"], child["pool"], child["ppid"], child["python"]) == ("celery-child", "prefork", worker.pid, PYTHON)
        assert child["rss"] > 0 and child["age_s"] >= 0 and child["inspectable"] is True, child
        if os.geteuid() == 0:
            assert child["uss"] > 0, child
    # The tree order puts each child right after its master (children by RSS, largest first).
    order = [p["pid"] for p in doc["processes"]]
    at = order.index(worker.pid)
    assert sorted(order[at + 1:at + 3]) == kids
    rss = [by_pid[k]["rss"] for k in order[at + 1:at + 3]]
    assert rss == sorted(rss, reverse=True)
    # ps never lists itself (nor a gdb of its own)
    assert not any("introspect" in " ".join(p["cmdline"]) and " ps " in f" {' '.join(p['cmdline'])} " for p in doc["processes"])

    # WHEN filtered by role, and shown as text
    code, only, err = introspect(tmp_path, "ps", "--role", "celery-child", worker.queue)
    code_text, text, _ = introspect(tmp_path, "ps", "--role", "celery", worker.queue, json_out=False)

    # THEN only this worker's children; the text tree indents them under the master
    assert code == 0 and sorted(p["pid"] for p in only["processes"]) == kids, (only, err)
    assert all(p["children"] == [] for p in only["processes"])
    assert code_text == 0
    lines = text.splitlines()
    master_line = next(i for i, line in enumerate(lines) if line.startswith(f"{worker.pid} "))
    assert "celery-master (prefork)" in lines[master_line]
    assert {lines[master_line + 1].split()[1], lines[master_line + 2].split()[1]} == {str(k) for k in kids}
    assert all(lines[master_line + n].startswith(" \\_ ") for n in (1, 2))


def test_top_children_finds_the_leak_in_the_child_that_ran_it(worker: CeleryWorker, client: Any, tmp_path: Path) -> None:
    # GIVEN one leaking task, run by one of the two children
    kids = sorted(worker.children())
    leaked = run_task(client, worker, "leak_cache", CACHE_N)
    leaker, total = leaked["pid"], leaked["total"]
    assert leaker in kids, (leaked, kids)
    other = next(k for k in kids if k != leaker)

    # WHEN top is pointed at the master without --children
    code, master_doc, err = introspect(tmp_path, "top", str(worker.pid), "-n", "5", "--timeout", f"{CLI_TIMEOUT_S:g}")

    # THEN it answers for the master, and says on stderr where the leak lives
    assert code == 0, err
    assert master_doc["pid"] == worker.pid
    note = next((line for line in err.splitlines() if "note:" in line), "")
    assert "celery-master (prefork)" in note and "--children" in note, err
    assert all(str(k) in note for k in kids), note

    # WHEN top runs on every child
    code, doc, err = introspect(tmp_path, "top", str(worker.pid), "--children", "-n", "0", "--timeout", f"{CLI_TIMEOUT_S:g}")

    # THEN one result per child; the leak is counted exactly in the child that ran the task only
    assert code == 0, err
    assert (doc["pid"], doc["role"], doc["pool"], doc["failed"]) == (worker.pid, "celery-master", "prefork", 0)
    results = {c["pid"]: c for c in doc["children"]}
    assert sorted(results) == kids
    assert all(c["ok"] and c["objects"] > 0 and c["python"].startswith(PYTHON) for c in results.values()), doc
    assert counts(results[leaker]).get(CUSTOM) == total
    assert CUSTOM not in counts(results[other])
    assert worker.alive() and sorted(worker.children()) == kids


def test_children_failures_are_reported_per_child(worker: CeleryWorker, tmp_path: Path) -> None:
    # GIVEN one of the two children stopped (SIGSTOP: introspect refuses a stopped process)
    kids = sorted(worker.children())
    stopped = [psutil.Process(kids[0])]
    try:
        stopped[0].send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped[0].status() == psutil.STATUS_STOPPED, 5.0, f"{kids[0]} to stop")

        # WHEN top runs on every child
        code, doc, err = introspect(tmp_path, "top", str(worker.pid), "--children", "-n", "3", "--timeout", "20")

        # THEN the stopped child's error is in its entry, the other child answered, exit 0
        assert code == 0, err
        results = {c["pid"]: c for c in doc["children"]}
        assert doc["failed"] == 1
        assert results[kids[0]]["ok"] is False and results[kids[0]]["error"]["exit_code"] == 6, results[kids[0]]
        assert "stopped" in results[kids[0]]["error"]["message"]
        assert results[kids[1]]["ok"] is True and results[kids[1]]["types"], results[kids[1]]
        assert f"child {kids[0]} failed" in err
        # and ps, which never touches a process, says why that child cannot be looked into now
        code, listing, err = introspect(tmp_path, "ps", "--role", "celery-child", worker.queue)
        reasons = {p["pid"]: (p["inspectable"], p["reason"]) for p in listing["processes"]}
        assert reasons[kids[0]][0] is False and reasons[kids[0]][1].startswith("stopped"), reasons
        assert reasons[kids[1]] == (True, None), reasons

        # WHEN both children are stopped
        stopped.append(psutil.Process(kids[1]))
        stopped[1].send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped[1].status() == psutil.STATUS_STOPPED, 5.0, f"{kids[1]} to stop")
        code, doc, err = introspect(tmp_path, "top", str(worker.pid), "--children", "--timeout", "20")

        # THEN every child failed: the exit status is the children's (6: a state we refuse)
        assert code == 6, err
        assert doc["failed"] == 2 and not any(c["ok"] for c in doc["children"])
    finally:
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)
    wait_until(lambda: all(p.status() != psutil.STATUS_STOPPED for p in stopped), 5.0, "the children to resume")
    assert worker.alive() and sorted(worker.children()) == kids


WSGI_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@pytest.fixture
def gunicorn_master(tmp_path: Path) -> Iterator[psutil.Process]:
    """`python -m gunicorn -w 2` on a free loopback port; TERM, then KILL it and its workers."""
    if importlib.util.find_spec("gunicorn") is None:
        pytest.skip("gunicorn not installed: run scripts/setup (or pip install -e '.[test]')")
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    log = open(tmp_path / "gunicorn.log", "wb")  # closed below, after the process is reaped
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:0", "--chdir", str(tmp_path),
                             "wsgi_app:app"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    master = psutil.Process(proc.pid)
    workers: list[psutil.Process] = []
    try:
        workers = wait_until(lambda: proc.poll() is None and len(master.children()) == 2 and master.children(), 20.0,
                             "gunicorn's two workers", on_timeout=lambda: (tmp_path / "gunicorn.log").read_text())
        yield master
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # gunicorn's quick shutdown: idle workers need no grace
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=5)
        for w in alive:
            w.kill()
        psutil.wait_procs(alive, timeout=5)
        log.close()


def test_ps_shows_gunicorn_master_and_workers(gunicorn_master: psutil.Process, tmp_path: Path) -> None:
    # GIVEN a real gunicorn master with two sync workers (no setproctitle: they share its command line)
    workers = sorted(c.pid for c in gunicorn_master.children())

    # WHEN ps lists gunicorn processes
    code, doc, err = introspect(tmp_path, "ps", "--role", "gunicorn")

    # THEN the master and its workers are told apart by their parent link
    assert code == 0, err
    by_pid = {p["pid"]: p for p in doc["processes"]}
    assert (by_pid[gunicorn_master.pid]["role"], by_pid[gunicorn_master.pid]["children"]) == ("gunicorn-master", workers)
    for w in workers:
        assert (by_pid[w]["role"], by_pid[w]["ppid"], by_pid[w]["python"]) == ("gunicorn-worker", gunicorn_master.pid, PYTHON)

