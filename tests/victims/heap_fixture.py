"""A known heap for unit tests of snapshot analysis. argv: STREAM CONTROL (FIFOs). Prints one JSON
line: guppy3's dominated-set sizes (domisize) of a few globals, then takes a forked snapshot with
the agent (loaded as the CLI ships it) and exits; the walker streams to STREAM and answers on CONTROL."""

import json
import logging
import os
import sys
import time

store = [{"id": 100000 + i, "data": os.urandom(1024)} for i in range(300)]  # the seeds' records: untracked dicts
shared = os.urandom(5000)
left = [shared, os.urandom(100)]
right = [shared]  # shared is held twice: neither list dominates it


class Node(object):
    def __init__(self, payload):
        self.payload = payload
        self.children = []


tree = Node(os.urandom(2000))
tree.children = [Node(os.urandom(300)) for _ in range(20)]


def make_closure():
    chunks = [os.urandom(512) for _ in range(8)]

    def read():
        return chunks

    return read


reader = make_closure()

# Per-request loggers, also reachable in fewer steps through __main__'s alias of their manager:
# their owner is module logging (the owner-root rule), not __main__.
log_manager = logging.Logger.manager
request_loggers = [logging.getLogger("fixture-request-%d" % i) for i in range(3)]
del request_loggers

if __name__ == "__main__":
    from guppy import hpy

    hp = hpy()
    sizes = {name: hp.iso(globals()[name]).domisize for name in ("store", "left", "right", "tree")}
    sys.stdout.write(json.dumps(sizes) + "\n")
    sys.stdout.flush()
    del hp
    agent = sys.argv[3]
    ns = {"__name__": "__introspect_agent__", "__file__": agent}
    with open(agent, "rb") as f:
        exec(compile(f.read(), agent, "exec"), ns)
    result = ns["cmd_snapshot"]({"stream": sys.argv[1], "control": sys.argv[2], "child_deadline": time.time() + 60})
    sys.stdout.write(json.dumps(result) + "\n")
