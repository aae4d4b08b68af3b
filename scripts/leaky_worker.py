"""A small leaky worker for scripts/demo: every 50 ms it 'handles a job' and forgets to let go.

Two leaks, as in the classic Celery case: dicts holding 64 KiB of bytes appended to a module-level
list (about 1.3 MB/s: gc tracks neither the dicts nor the bytes, so only `top --by size` and the
memory trend see them), and MyCustomObject instances kept in an unbounded module-level cache.
"""

import os
import time


class MyCustomObject:
    def __init__(self, n):
        self.n = n
        self.tags = ["job", str(n)]


global_data_store = []
_object_cache = {}


def handle(n):
    global_data_store.append({"job": n, "payload": os.urandom(64 * 1024)})
    _object_cache["job-%d" % n] = MyCustomObject(n)


def main():
    print("leaky worker pid %d" % os.getpid(), flush=True)
    n = 0
    while True:
        handle(n)
        n += 1
        time.sleep(0.05)


if __name__ == "__main__":
    main()
