"""A victim that keeps every piece of cyclic garbage (gc.DEBUG_SAVEALL): what the agent leaves in
the target's collector shows up in gc.garbage. VICTIM_GC=off starts with the collector disabled.

Protocol: prints "ready <pid>"; then one command per line on stdin, one JSON line back:
  state    collect, then {"enabled", "garbage": [type and name of each garbage object]}, and
           gc.garbage emptied
"""

import gc
import json
import os
import select
import sys


class Widget:
    pass


widgets = [Widget() for _ in range(500)]
if os.environ.get("VICTIM_GC") == "off":
    gc.disable()
gc.set_debug(gc.DEBUG_SAVEALL)


def describe(obj):
    code = getattr(obj, "f_code", None) or getattr(obj, "__code__", None)
    if code is not None:
        return "%s %s in %s" % (type(obj).__name__, code.co_name, code.co_filename)
    if isinstance(obj, type):
        return "type %s" % obj.__name__
    if os.environ.get("VICTIM_DETAIL") and type(obj) in (list, tuple, dict):
        return "%s %d %s" % (type(obj).__name__, len(obj), sorted(set(type(x).__name__ for x in obj))[:4])
    return type(obj).__name__


def state():
    enabled = gc.isenabled()
    gc.collect()
    garbage = [describe(o) for o in gc.garbage]
    del gc.garbage[:]
    gc.set_debug(0)  # really free what was found (dropped from gc.garbage it is garbage again)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    return {"enabled": enabled, "garbage": garbage}


state()  # whatever start-up left
print("ready %d" % os.getpid(), flush=True)
fd = sys.stdin.fileno()
buf = b""
while True:
    ready, _, _ = select.select([fd], [], [], 0.01)  # a safe point every 10 ms
    if not ready:
        continue
    chunk = os.read(fd, 4096)
    if not chunk:
        break
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if line.strip() == b"state":
            sys.stdout.write(json.dumps(state()) + "\n")
            sys.stdout.flush()
