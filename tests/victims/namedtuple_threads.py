"""A worker whose main thread creates namedtuples all the time (as gRPC's threads do), with
another thread answering on stdin. A namedtuple's __new__ is a lambda whose globals' __builtins__
is {}: CPython 3.14/3.15 open a PEP 768 script with the builtins of the frame that takes the
request, so a request taken there fails and CPython prints "Can't open debugger script" on this
process's stderr. NT_MODE=parked: the main thread parks in os.read instead, and a second
thread creates the namedtuples."""

import collections
import os
import sys
import threading

Point = collections.namedtuple("Point", "x y")


class Job:
    pass


jobs = [Job() for _ in range(55)]
made = [0]


def spin():
    while True:
        Point(1, 2)
        made[0] += 1


def answer():
    while True:
        data = os.read(sys.stdin.fileno(), 4096)  # parked here, GIL released
        if not data:
            os._exit(0)
        sys.stdout.write('{"jobs": %d, "made": %d}\n' % (len(jobs), made[0]))
        sys.stdout.flush()


print("ready %d" % os.getpid(), flush=True)
if os.environ.get("NT_MODE") == "parked":
    threading.Thread(target=spin, daemon=True).start()
    answer()
else:
    threading.Thread(target=answer, daemon=True).start()
    spin()
