"""The seeds' leak as a real Celery app: two tasks that leak into module-level holders.

Started by the integration rig (``tests/integration/celery_rig.py``) as
``python -m celery -A tests.celery_leak.tasks worker --pool=...``; broker and result backend are the
Redis URL in ``INTROSPECT_TEST_REDIS_URL`` (a loopback redis-server the test fixture started).

- ``leak_store(n)`` appends ``n`` dicts holding 1 KiB of bytes to the module-level list
  ``global_data_store``;
- ``leak_cache(n)`` keeps ``n`` ``MyCustomObject`` instances in the unbounded module-level dict
  ``_object_cache``.

Both return facts the tests check against what ``introspect`` reports from the outside:

>>> sorted(leak_store.run(0))
['pid', 'stored', 'total']
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, signals

# Importing this module (pytest's doctest collection does) must not need a server: nothing
# connects before a task is sent or a worker starts. Port 1 on loopback fails fast if misused.
REDIS_URL = os.environ.get("INTROSPECT_TEST_REDIS_URL", "redis://127.0.0.1:1/0")

app = Celery("tests.celery_leak.tasks")
app.conf.update(
    broker_url=REDIS_URL,
    result_backend=REDIS_URL,
    broker_connection_retry_on_startup=True,
    # Leave the test's and the user's logging alone; the rig learns readiness from a signal below.
    worker_hijack_root_logger=False,
    # No pidbox/broadcast queue: fewer connections and threads, nothing anyone else could drive.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
)


class MyCustomObject:
    """What the cache leaks: a plain user class, so its count is exact (nothing else creates one)."""

    def __init__(self, key: int) -> None:
        self.key = key
        self.blob = b"c" * 256


# The leaks live here on purpose; the tests look for these names in backrefs chains.
global_data_store: list[dict[str, Any]] = []
_object_cache: dict[int, MyCustomObject] = {}
_next_key = 0
_lock = threading.Lock()  # the threads pool runs tasks on several threads


@app.task(name="tests.celery_leak.tasks.leak_store")
def leak_store(n: int) -> dict[str, int]:
    """Append ``n`` records holding 1 KiB of bytes each to ``global_data_store``: the seeds' leak as
    written there. Dicts of atomic values are not tracked by gc before 3.14 (nor are the bytes ever):
    only a forked snapshot (or guppy3) counts them."""
    with _lock:
        for _ in range(n):
            item_id = len(global_data_store)
            global_data_store.append({"id": item_id, "data": os.urandom(1024)})
        return {"pid": os.getpid(), "stored": n, "total": len(global_data_store)}


@app.task(name="tests.celery_leak.tasks.leak_cache")
def leak_cache(n: int) -> dict[str, int]:
    """Keep ``n`` new ``MyCustomObject`` instances in ``_object_cache``, forever."""
    global _next_key
    with _lock:
        for _ in range(n):
            _object_cache[_next_key] = MyCustomObject(_next_key)
            _next_key += 1
        return {"pid": os.getpid(), "cached": n, "total": len(_object_cache)}


@app.task(name="tests.celery_leak.tasks.leak_heavy", ignore_result=True)
def leak_heavy(kib: int) -> None:
    """Keep one ``MyCustomObject`` holding ``kib`` KiB in ``_object_cache``: enough per call that
    RSS visibly climbs (``introspect monitor`` / ``report`` tests), while gc still sees the holder."""
    global _next_key
    with _lock:
        obj = MyCustomObject(_next_key)
        obj.blob = b"h" * (kib * 1024)
        _object_cache[_next_key] = obj
        _next_key += 1


@app.task(name="tests.celery_leak.tasks.whoami")
def whoami() -> dict[str, Any]:
    """The pid and thread that run tasks: the process ``introspect`` must be pointed at."""
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@app.task(name="tests.celery_leak.tasks.tick", ignore_result=True)
def tick() -> None:
    """Cheap work to keep a worker busy while the tests look inside it."""


@signals.worker_ready.connect
def _announce_ready(**_: Any) -> None:
    # worker_hijack_root_logger=False leaves "ready" log lines unprinted: the rig watches this file.
    path = os.environ.get("INTROSPECT_TEST_READY_FILE")
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
