"""`introspect trace` in a real Celery prefork child (the process that runs the tasks), on a real
Redis: the seeds' leaking line comes first, and stop leaves the worker serving, tracing off."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.celery_rig import REPO_ROOT, CeleryWorker
from tests.integration.test_celery_e2e import (  # noqa: F401
    Cli,
    assert_unharmed,
    cli,
    run_task,
    traffic,
    warm_up,
    worker,
)

celery = pytest.importorskip("celery", reason="celery not installed: run scripts/setup (or pip install -e '.[test]')")
pytestmark = pytest.mark.slow
TASKS = REPO_ROOT / "tests" / "celery_leak" / "tasks.py"
STORE_N = 2000


def _leak_line() -> int:
    for n, text in enumerate(TASKS.read_text().splitlines(), 1):
        if "global_data_store.append(" in text:
            return n
    raise AssertionError("no global_data_store.append line in tasks.py")


@pytest.mark.parametrize("pool", ["prefork"])
def test_trace_in_prefork_child(pool: str, worker: CeleryWorker, client: Any, cli: Cli) -> None:  # noqa: F811
    # GIVEN the prefork child that runs the tasks, tracing started in it
    task_pid = warm_up(client, worker)
    with traffic(client, worker):
        start = cli("trace", "start", str(task_pid), "--for", "5m")
    assert start["status"] == "started"

    # WHEN the seeds' leak runs
    assert run_task(client, worker, "leak_store", STORE_N)["stored"] == STORE_N
    with traffic(client, worker):
        show = cli("trace", "show", str(task_pid), timeout=90)

    # THEN its append line comes first by size_delta, named with its function
    top = show["sites"][0]
    assert (top["file"], top["line"], top["function"]) == (str(TASKS), _leak_line(), "leak_store"), show["sites"][:3]
    assert top["size_delta"] >= STORE_N * 1024 and top["count_delta"] >= STORE_N

    # WHEN stopped THEN tracing is off and the worker still serves from the same child
    with traffic(client, worker):
        stop = cli("trace", "stop", str(task_pid), timeout=90)
    assert stop["stopped"] and not stop["tracing_after"]
    assert_unharmed(client, worker, task_pid)
