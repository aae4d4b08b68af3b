"""Five common leak shapes, each grown on request (stdin commands, one JSON line back):
  grow N   N more of each: the seeds' records, a class registry's instances, an lru_cache on a
           method, a logger per request, duplicate strings held by a cache
  repr     how many times a user __repr__ ran (it also writes REPR_LOG when set)
Nothing grows until asked: the heap at start has no leak.
"""

import functools
import json
import logging
import os
import sys

global_data_store = []
name_cache = {}
REPR_LOG = os.environ.get("REPR_LOG")
repr_calls = [0]


class Plugin(object):
    registry = {}

    def __init__(self, name):
        self.name = name
        self.options = {"enabled": True, "weight": len(name)}
        Plugin.registry[name] = self

    def __repr__(self):  # a user __repr__: introspect must never call it
        repr_calls[0] += 1
        if REPR_LOG:
            with open(REPR_LOG, "a") as f:
                f.write("repr called\n")
        return "<Plugin %s>" % self.name


class Service(object):
    @functools.lru_cache(maxsize=None)  # noqa: B019 - the leak this victim is for
    def lookup(self, key):
        return [key] * 20


service = Service()
n = [0]


def grow(count):
    for _ in range(count):
        i = n[0]
        n[0] += 1
        global_data_store.append({"id": i, "data": os.urandom(1024)})
        Plugin("plugin-%d" % i)
        service.lookup("key-%d" % i)
        logging.getLogger("request.%d" % i)
        name_cache[i] = "".join(["customer-name-"] * 40)  # equal values, a new string each time


print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "grow":
        grow(int(cmd[1]))
        out = {"n": n[0]}
    elif cmd[0] == "repr":
        out = {"repr_calls": repr_calls[0]}
    else:
        out = {"n": n[0]}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
