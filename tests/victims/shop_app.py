"""A WSGI application that leaks as real ones do; the tests serve it with a real gunicorn.

GET /leak?KIB keeps what each request made: a PageView (with a KIB KiB body, default 1) in a module list or dict,
three weakrefs to it (so the standard library's weakref type grows faster than our class), and a
logger per request (logging's manager keeps every logger forever). A thread, "collector", keeps
Jobs in a local list of its running function. GET /hold-gil and GET /hold-lock block the worker's
main thread in C *with the GIL held* (poll() forever, or sem_wait() on a semaphore nobody posts),
as an idle uWSGI worker without threads does.
"""

import ctypes
import logging
import threading
import time
import weakref


class PageView:
    def __init__(self, path, n, kib):
        self.path = path
        self.n = n
        self.body = b"x" * (1024 * kib)


class Job:
    pass


_views = []  # even requests
_recent = {}  # odd requests
_watchers = []
_served = [0]


def _forget(ref):
    pass


def _collector():
    batch = []
    while True:
        batch.append(Job())
        time.sleep(0.05)


threading.Thread(target=_collector, name="collector", daemon=True).start()


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/leak":
        _served[0] += 1
        n = _served[0]
        query = environ.get("QUERY_STRING", "")
        view = PageView(path, n, int(query) if query.isdigit() else 1)
        if n % 2 == 0:
            _views.append(view)
        else:
            _recent[n] = view
        _watchers.extend(weakref.ref(view, _forget) for _ in range(3))
        logging.getLogger("request-%d" % n)
    elif path == "/hold-gil":
        ctypes.PyDLL(None).poll(None, 0, -1)
    elif path == "/hold-lock":
        sem = ctypes.create_string_buffer(64)
        libc = ctypes.PyDLL(None)
        libc.sem_init(sem, 0, 0)
        libc.sem_wait(sem)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
