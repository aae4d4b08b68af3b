"""An idle worker, like a Celery prefork child between tasks: its only thread blocks in os.read."""

import os
import sys


class Job:
    pass


jobs = [Job() for _ in range(77)]
print("ready %d" % os.getpid(), flush=True)
while True:
    data = os.read(sys.stdin.fileno(), 4096)  # parked here, GIL released, until a job arrives
    if not data:
        break
    sys.stdout.write('{"jobs": %d}\n' % len(jobs))
    sys.stdout.flush()
