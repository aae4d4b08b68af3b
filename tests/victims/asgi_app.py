"""A real ASGI application for the safety test, served by uvicorn: JSON rows kept per request.

GET /health   {"ok": true, "progress": N}   (N: bursts of awaited futures done by a background task)
GET /state    progress, RSS, errors of the application's own checks
GET /collect  a full gc.collect(), timed
GET /row      keeps one parsed JSON row (a dict of atomic values: untracked by the collector)
"""

import asyncio
import gc
import json
import os
import time

progress = [0]
errors = []
rows = []


class AppRecord:
    def __init__(self, i):
        self.i = i
        self.name = "record-%d" % i


records = [AppRecord(i) for i in range(500)]


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def one(loop, i):
    f = loop.create_future()
    loop.call_soon(f.set_result, i)
    return await f


async def churn():
    # As safety.py's asyncio program: bursts keep dead FutureIters on _asyncio's free list.
    loop = asyncio.get_running_loop()
    while True:
        try:
            got = await asyncio.gather(*(one(loop, i) for i in range(20)))
            if got != list(range(20)):
                errors.append("futures returned wrong values")
            progress[0] += 1
            await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            errors.append("%s: %s" % (type(exc).__name__, exc))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                app.task = asyncio.ensure_future(churn())
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                app.task.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/health":
        body = {"ok": True, "progress": progress[0]}
    elif path == "/state":
        body = {"progress": progress[0], "rss": rss(), "errors": errors[-5:], "n_errors": len(errors)}
    elif path == "/collect":
        t0 = time.perf_counter()
        n = gc.collect()
        body = {"collected": n, "s": time.perf_counter() - t0}
    elif path == "/row":
        rows.append(json.loads('{"id": %d, "user": "u%d", "total": %d.5}' % (len(rows), len(rows), len(rows))))
        body = {"rows": len(rows)}
    else:
        body = {"unknown": path}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})
