"""The on-call workflow end to end: `monitor` sees RSS climb, `report` names the leak and its holder.

Against a real Celery prefork worker on a real Redis: a background thread keeps sending a task that
leaks ~100 KiB per call (one ``MyCustomObject`` holding the bytes, cached forever), so the prefork
child's RSS rises steadily above its noise. Plain-Python victims cover a target that exits midway.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import INTERPS, REPO, introspect
from tests.integration.celery_rig import CeleryWorker, RedisServer

pytest.importorskip("celery", reason="celery not installed: run scripts/setup (or pip install -e '.[test]')")

LEAK_MODULE = "tests.celery_leak.tasks"
CUSTOM = f"{LEAK_MODULE}.MyCustomObject"
LEAK_KIB = 100
SEND_EVERY_S = 0.05
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PY = next((i for i in INTERPS if i.id == "debian-3.11"), INTERPS[0] if INTERPS else None)


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, client: Any) -> Iterator[tuple[CeleryWorker, int]]:
    """One prefork worker for the module (start-up is the slow part); yields it and its task pid."""
    if importlib.util.find_spec("billiard") is None:
        pytest.skip("billiard not installed (needed by the prefork pool): run scripts/setup")
    if sys.version_info < (3, 14) and shutil.which("gdb") is None:
        pytest.skip("gdb not installed (introspect needs it below Python 3.14): run scripts/setup (or apt-get install gdb)")
    with CeleryWorker("prefork", redis_server.url) as w:
        who = client.send_task(f"{LEAK_MODULE}.whoami", queue=w.queue).get(timeout=30)
        assert who["pid"] == w.task_pid(), (who, w.task_pid())
        yield w, int(who["pid"])


@contextmanager
def leaking(client: Any, worker: CeleryWorker) -> Iterator[list[int]]:
    """Send ``leak_heavy(LEAK_KIB)`` every SEND_EVERY_S while the block runs; yields [tasks sent]."""
    stop = threading.Event()
    sent = [0]
    failures: list[BaseException] = []

    def sender() -> None:
        try:
            while not stop.is_set():
                client.send_task(f"{LEAK_MODULE}.leak_heavy", args=(LEAK_KIB,), queue=worker.queue, ignore_result=True)
                sent[0] += 1
                stop.wait(SEND_EVERY_S)
        except BaseException as exc:  # reported below, never lost in a thread
            failures.append(exc)

    thread = threading.Thread(target=sender, name="introspect-test-leaker", daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the sender thread did not stop within 10 s"
    assert not failures, f"sending tasks failed: {failures[0]!r}"


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "introspect", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{proc.args} did not finish within {timeout} s")
    return proc.returncode, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_unharmed(client: Any, worker: CeleryWorker, task_pid: int) -> None:
    assert worker.alive(), f"worker exited{worker.log_tail()}"
    assert client.send_task(f"{LEAK_MODULE}.whoami", queue=worker.queue).get(timeout=30)["pid"] == task_pid
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "SystemError" not in log, f"the worker logged an error{worker.log_tail()}"


@pytest.mark.slow
def test_monitor_sees_steady_growth(worker: tuple[CeleryWorker, int], client: Any, tmp_path: Path) -> None:
    w, task_pid = worker
    # GIVEN a prefork child leaking LEAK_KIB per task, tasks arriving every SEND_EVERY_S
    with leaking(client, w) as sent:
        time.sleep(0.5)  # the leak is under way before the first sample
        # WHEN monitor watches the child, and (at the same time: nothing is injected) the master
        # with its children
        child = start_cli("monitor", str(task_pid), "--interval", "0.2", "--duration", "4", "--json", "-o", str(tmp_path / "child"))
        master = start_cli("monitor", str(w.pid), "--children", "--interval", "0.5", "--duration", "4", "--json",
                           "-o", str(tmp_path / "master"))
        rc, out, err = finish(child)
        m_rc, m_out, m_err = finish(master)
        sent_during = sent[0]

    # THEN the child's RSS rises like a line, at a rate the traffic explains
    assert rc == 0, err
    doc = json.loads(out)
    print(f"monitor child: slope {doc['slope_bytes_per_s']:.0f} B/s = {doc['slope_mb_per_hour']:.1f} MB/h, "
          f"r2 {doc['r2']}, verdict {doc['verdict']}, {len(doc['samples'])} samples, {sent_during} tasks sent")
    assert doc["pid"] == task_pid and doc["verdict"] == "steady growth", doc
    assert doc["r2"] >= 0.8
    sent_rate = LEAK_KIB * 1024 / SEND_EVERY_S  # an upper bound: the sender also spends time sending
    assert 0.2 * sent_rate < doc["slope_bytes_per_s"] < 2.0 * sent_rate, (doc["slope_bytes_per_s"], sent_rate)
    assert abs(doc["slope_mb_per_hour"] - doc["slope_bytes_per_s"] * 3600 / 2**20) < 0.01
    # ... says when it reaches its limit, and Celery's stopgap with the value to set, in KiB
    assert doc["seconds_to_limit"] > 0 and doc["limit"]["source"], doc["limit"]
    gap = doc["stopgap"]
    assert gap["setting"] == "--max-memory-per-child" and gap["value"] * 1024 > doc["samples"][-1]["rss"], gap
    assert f"--max-memory-per-child={gap['value']}" in (Path(doc["csv"]).parent / "monitor.txt").read_text()
    # ... and writes a CSV with one row per sample, and a real PNG
    rows = read_csv(Path(doc["csv"]))
    assert list(rows[0]) == ["t", "rss", "vms", "uss"]
    assert len(rows) == len(doc["samples"]) >= 15
    assert [float(r["t"]) for r in rows] == sorted(float(r["t"]) for r in rows)
    assert 3.9 <= float(rows[-1]["t"]) <= 4.5
    assert int(rows[-1]["rss"]) > int(rows[0]["rss"]) and all(r["uss"] for r in rows)
    assert Path(doc["png"]).read_bytes()[:8] == PNG_MAGIC
    svg = Path(doc["svg"]).read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "trend" in svg  # RSS and USS
    assert "RSS over time: " in (Path(doc["csv"]).parent / "monitor.txt").read_text()
    assert (Path(doc["csv"]).parent / "monitor.json").exists()

    # THEN with --children the master's CSV has a column for its prefork child, summed into rss
    assert m_rc == 0, m_err
    m_doc = json.loads(m_out)
    m_rows = read_csv(Path(m_doc["csv"]))
    assert f"rss_{task_pid}" in m_rows[0], list(m_rows[0])
    assert all(int(r["rss"]) > int(r[f"rss_{task_pid}"]) > 0 for r in m_rows)
    assert m_doc["verdict"] == "steady growth", m_doc
    assert_unharmed(client, w, task_pid)


@pytest.mark.slow
def test_report_names_the_leak_and_its_holder(worker: tuple[CeleryWorker, int], client: Any, tmp_path: Path) -> None:
    w, task_pid = worker
    out_dir = tmp_path / "report"
    # GIVEN the same leaking child; WHEN report watches it for a few seconds
    with leaking(client, w):
        run = introspect("report", str(task_pid), "--duration", "5", "--interval", "0.25", "--looks", "3",
                         "--backrefs", "1", "--budget", "3", "--json", "-o", str(out_dir), timeout=90)

    # THEN it completes and names MyCustomObject as grown and traced, held by the tasks module
    assert run.rc == 0, run.stderr
    doc = run.json()
    print(f"report: slope {doc['memory']['slope_bytes_per_s']:.0f} B/s, r2 {doc['memory']['r2']}, "
          f"verdict {doc['memory']['verdict']}; growing {[(g['type'], g['since_baseline']) for g in doc['growing'][:5]]}; "
          f"{run.seconds:.1f} s")
    assert doc["complete"] is True and doc["problem"] is None
    assert doc["memory"]["verdict"] == "steady growth", doc["memory"]
    growing = {g["type"]: g for g in doc["growing"]}
    assert growing[CUSTOM]["since_baseline"] > 0
    assert [b["type"] for b in doc["backrefs"]] == [CUSTOM], doc["backrefs"]
    ref = doc["backrefs"][0]
    assert any(c["root"] == f"module {LEAK_MODULE}" and c["path"][0]["via"].lstrip(".") == "_object_cache"
               for c in ref["chains"]), ref["chains"]

    # THEN index.html names the type, embeds its graph and links the SVG file next to it
    index = Path(doc["files"]["index"])
    html = index.read_text()
    assert index.parent == out_dir and "MyCustomObject" in html and "steady growth" in html
    # the reference graph and the memory chart, both SVG (no plotting library needed)
    assert html.count('<img src="data:image/svg+xml;base64,') >= 2 and 'alt="RSS over time"' in html
    svgs = re.findall(r'href="([^"]+\.svg)"', html)
    assert svgs and all((out_dir / s).read_bytes().lstrip().startswith((b"<?xml", b"<svg")) for s in svgs), svgs
    for name in ("monitor.csv", "monitor.svg", "monitor.png", "growth.json", "report.json", Path(ref["json"]).name):
        assert (out_dir / name).exists(), name
    assert (out_dir / "monitor.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out_dir / "growth.json").read_text())["looks"][0]["baseline_recorded"] is True
    assert_unharmed(client, w, task_pid)


@pytest.mark.skipif(PY is None, reason="no Python interpreter found to victimise")
def test_monitor_target_exits(spawn: Any, tmp_path: Path) -> None:
    # GIVEN a plain Python victim watched until Ctrl-C
    assert PY is not None
    victim = spawn(PY)
    cli = start_cli("monitor", str(victim.pid), "--interval", "0.1", "-o", str(tmp_path / "m"))
    time.sleep(2.0)  # the CLI starts (imports, /proc) before its first sample: slower on a busy machine
    # WHEN the victim dies mid-monitor
    victim.proc.kill()
    victim.proc.wait(5)
    t0 = time.monotonic()
    rc, out, err = finish(cli, timeout=20)
    # THEN monitor stops at once, keeps what it sampled, and says so plainly
    assert time.monotonic() - t0 < 5
    assert rc == 8, err
    assert "Traceback" not in err and "exited" in err, err
    rows = read_csv(tmp_path / "m" / "monitor.csv")
    assert len(rows) >= 5 and all(int(r["rss"]) > 0 for r in rows)
    assert "stopped: target exited" in out


@pytest.mark.skipif(PY is None, reason="no Python interpreter found to victimise")
@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed (report injects below Python 3.14): run scripts/setup")
def test_report_target_exits(spawn: Any, tmp_path: Path) -> None:
    # GIVEN a report under way on a plain Python victim (baseline taken, memory sampled)
    assert PY is not None
    victim = spawn(PY)
    cli = start_cli("report", str(victim.pid), "--duration", "8", "--interval", "0.2", "--looks", "2", "-o", str(tmp_path / "r"))
    deadline = time.monotonic() + 20
    while not (tmp_path / "r").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)
    # WHEN the victim dies before the report is done
    victim.proc.kill()
    victim.proc.wait(5)
    rc, out, err = finish(cli, timeout=30)
    # THEN what was collected is written, index.html says it is incomplete, and the exit is non-zero
    assert rc == 8, err
    assert "Traceback" not in err and "exited" in err, err
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Incomplete report" in html and "exited" in html
    assert len(read_csv(tmp_path / "r" / "monitor.csv")) >= 5
    assert "INCOMPLETE" in out
