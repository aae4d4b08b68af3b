"""A Celery 5.3.6 app whose task fails, run on the prefork pool and watched by Flower 2.2.0.

Used by tests/integration/test_real_programs.py with the pinned packages that
scripts/provision-victim-deps installs (celery 5.3.6 and flower 2.2.0 with the kombu, billiard and
redis of their time), never with the test venv's own Celery.

Celery before 5.6 keeps every failure's ``billiard.einfo.ExceptionInfo`` in a reference cycle
(celery #8882) with copies of the failing frames' code positions; it lasts until the collector's
next full collection. Flower keeps the task events it sees in ``celery.events.state.State``,
capped by ``--max_tasks``: memory climbs until the cap is reached, then stays level.

``python -m tests.real_programs.einfo_app send N`` sends N failing tasks and exits.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery, signals

REDIS_URL = os.environ.get("INTROSPECT_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
QUEUE = os.environ.get("INTROSPECT_TEST_QUEUE", "einfo")

app = Celery("tests.real_programs.einfo_app")
app.conf.update(
    broker_url=REDIS_URL,
    result_backend=REDIS_URL,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=True,  # Flower's input
    task_send_sent_event=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    task_default_queue=QUEUE,
)


def _deep(n: int, payload: list[int]) -> None:
    # A few frames with locals, as a real task's failure has: each lands in the einfo's copied traceback.
    if n:
        _deep(n - 1, payload)
        return
    raise ValueError(f"order {len(payload)} rejected")


@app.task(name="einfo.fail")
def fail(i: int) -> None:
    _deep(8, list(range(64)) + [i])


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    path = os.environ.get("INTROSPECT_TEST_READY_FILE")
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


def send(n: int) -> None:
    for i in range(n):
        fail.apply_async((i,), queue=QUEUE, ignore_result=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "send":
        send(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m tests.real_programs.einfo_app send N")
