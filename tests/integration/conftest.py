"""Fixtures shared by the Celery test modules: one real redis-server and one Celery client per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.celery_rig import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if RedisServer.executable() is None:
        pytest.skip("redis-server not installed: run scripts/setup (or apt-get install redis-server)")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[Any]:
    """A Celery client of our own: the test process never imports the leaking module's app."""
    celery = pytest.importorskip("celery", reason="celery not installed: run scripts/setup (or pip install -e '.[test]')")
    app = celery.Celery("introspect-tests", broker=redis_server.url, backend=redis_server.url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True, broker_connection_timeout=5)
    try:
        yield app
    finally:
        app.close()
