"""A victim for the container and permission tests: some Boxed objects and a busy main loop.

Runs in places where the other victims cannot: in its own mount/pid namespace (its /tmp private,
maybe the repo out of sight, so it is often passed with -c) and as another user. Imports nothing
but the stdlib. How many Boxed objects it holds depends on its pid: tests compare what introspect
counts with what the victim itself reports, never with a constant.

Protocol: prints "ready <pid as the victim sees it>" once set up; then answers each stdin line
with one JSON line: {"boxed": <live Boxed objects, counted by gc>, "tmp": <its /tmp listing>}.
argv[1] == "nodump": make itself non-dumpable first (prctl(PR_SET_DUMPABLE, 0)), as some daemons
do after dropping privileges. Python 3.8 syntax.
"""

import ctypes
import gc
import json
import os
import select
import sys


class Boxed:
    pass


boxed = [Boxed() for _ in range(200 + os.getpid() % 97)]
if sys.argv[1:] == ["nodump"]:
    PR_SET_DUMPABLE = 4
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def report():
    count = sum(1 for o in gc.get_objects() if type(o) is Boxed)
    return {"boxed": count, "tmp": sorted(os.listdir("/tmp"))}


print("ready %d" % os.getpid(), flush=True)
while True:
    # A 10 ms poll: the main thread returns to the interpreter often, so a pending call or a
    # sys.remote_exec request runs at once (the idle case has its own victim, idle.py).
    ready, _, _ = select.select([sys.stdin], [], [], 0.01)
    if ready:
        line = sys.stdin.readline()
        if not line:
            break
        sys.stdout.write(json.dumps(report()) + "\n")
        sys.stdout.flush()
    sum(range(100))
