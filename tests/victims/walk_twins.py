"""Two walks of one heap: the compiled walk step's and the Python one's (tests/integration/
test_cwalk.py). argv: AGENT CWALK_SO FREEZE STREAM1 CONTROL1 STREAM2 CONTROL2. Builds a heap with
what the walk's rules are about (untracked dicts and tuples, closures, code objects, slots,
__dict__s, bytes held twice, objects only C holds, gc.freeze()'s permanent generation when
FREEZE is 1), loads the agent, then forks a copy that forks again: each takes a forked snapshot,
the first with the compiled step (CWALK_SO), the second without. Prints the two agents' results."""

import gc
import json
import os
import sys
import time

agent, so, freeze = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
early = [{"n": i, "t": (i, str(i))} for i in range(500)]  # before a freeze: frozen with it
if freeze:
    gc.freeze()


class Slotted(object):
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b


class Plain(object):
    def __init__(self, payload):
        self.payload = payload
        self.kids = []


def make(n):
    hidden = [os.urandom(8) for _ in range(3)]

    def inner(k=n):
        return hidden, k
    return inner


shared = os.urandom(300)
records = [{"id": i, "blob": shared if i % 7 == 0 else os.urandom(16), "pair": (i, "x%d" % i)}
           for i in range(20000)]
tree = Plain([Plain(os.urandom(32)) for _ in range(50)])
slots = [Slotted(i, (i, i + 1)) for i in range(2000)]
closures = [make(i) for i in range(300)]
codes = [compile("x = %d + y" % i, "<twin %d>" % i, "exec") for i in range(100)]
nested = ((("deep", 1), ("deeper", (2, (3, b"bytes")))), frozenset(["a", "b"]))
it = iter(range(10))
# the modules the walk imports, imported before the forks: neither copy's walk makes them
for _name in ("_bisect", "_collections", "_operator", "array", "itertools"):
    __import__(_name)
ns = {"__name__": "__introspect_agent__", "__file__": agent}
with open(agent, "rb") as f:
    exec(compile(f.read(), agent, "exec"), ns)
snap = ns["cmd_snapshot"]
if os.fork() == 0:  # A, then A and B: two copies that differ in b alone (a pid against 0)
    b = os.fork()
    out = snap(dict({"cwalk": so} if b else {"cwalk_why": "this test's Python walk"},
                    stream=sys.argv[4 if b else 6], control=sys.argv[5 if b else 7],
                    child_deadline=time.time() + 60))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    if b:
        os.waitpid(b, 0)
    os._exit(0)
os.wait()
