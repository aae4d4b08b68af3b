"""A victim for `introspect trace`: every tick (20 ms) it leaks 10 records at the LEAK line (the
seeds' shape: a dict of atomic values holding 1 KiB of bytes) and allocates 64 KiB at the CHURN
line that it frees at once. The main thread polls stdin, so it reaches safe points often.
Commands (one JSON line back): state | self_trace N (the application starts tracemalloc itself) | quit
Uses only _tracemalloc (builtin) to look, so the pure-Python tracemalloc module is never imported
unless self_trace asks for it.
"""

import _tracemalloc
import json
import os
import select
import sys

global_data_store = []


def process_item(item_id):
    global_data_store.append({"id": item_id, "data": os.urandom(1024)})  # LEAK


def churn():
    scratch = [os.urandom(4096) for _ in range(16)]  # CHURN
    return len(scratch)


def state():
    return {"tracing": _tracemalloc.is_tracing(), "frames": _tracemalloc.get_traceback_limit(),
            "trace_module": "__introspect_trace__" in sys.modules, "tracemalloc_module": "tracemalloc" in sys.modules,
            "tasks": len(os.listdir("/proc/self/task")), "records": len(global_data_store),
            "tracemalloc_memory": _tracemalloc.get_tracemalloc_memory()}


def main():
    print("ready %d" % os.getpid(), flush=True)
    next_id = 0
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.02)
        for _ in range(10):
            process_item(next_id)
            next_id += 1
        churn()
        if not ready:
            continue
        cmd = sys.stdin.readline().split()
        if not cmd or cmd[0] == "quit":
            return
        if cmd[0] == "self_trace":
            import tracemalloc

            tracemalloc.start(int(cmd[1]))
        out = state()
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


main()
