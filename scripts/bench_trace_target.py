"""Benchmark target for scripts/bench-trace: a worker whose throughput and memory we watch.

Usage: python bench_trace_target.py        (driven by scripts/bench_trace.py through stdin/stdout)

The main thread works without pause, like a busy worker: each operation builds a record (a dict,
a formatted string, a list of 5 short strings) and stores it in a bounded cache of CACHE entries,
replacing the oldest; so after CACHE operations every cached record was allocated while tracing
was on, and tracemalloc holds a trace for each of its ~8 blocks. Between operations it looks at
stdin without waiting (select with timeout 0), so the agent's pending call runs within microseconds.

Commands (one JSON line back): window S  (operations per second over the next S seconds, RSS)
| quit. Python 3.8+, standard library only.

With the argument "heap" (scripts/bench-trace --walk) it is an idle process instead, whose heap the
forked walk goes through: `build N` makes about N objects (units of a BenchRecord instance, its dict
of atomic values, a str and a bytes: half gc-tracked, half not, allocated while tracing is on if it
is) and answers {"objects": gc objects, "rss_kib"}; it wakes every 5 ms otherwise.
"""

import json
import os
import select
import sys
import time

CACHE = 50000


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    cache = {}
    i = 0
    window_end = None
    window_ops = 0
    window_t0 = 0.0
    print(f"ready {os.getpid()}", flush=True)
    while True:
        for _ in range(200):
            rec = {"id": i, "name": f"user-{i}", "tags": [str(i + j) for j in range(5)]}
            cache[i % CACHE] = rec
            i += 1
        if window_end is not None:
            window_ops += 200
            now = time.perf_counter()
            if now >= window_end:
                out = {"ops_per_s": window_ops / (now - window_t0), "rss_kib": rss_kib()}
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()
                window_end = None
        if select.select([sys.stdin], [], [], 0)[0]:
            cmd = sys.stdin.readline().split()
            if not cmd or cmd[0] == "quit":
                return
            if cmd[0] == "window":
                window_t0 = time.perf_counter()
                window_end = window_t0 + float(cmd[1])
                window_ops = 0


class BenchRecord:
    def __init__(self, i):
        self.meta = {"id": i, "name": f"record-{i}"}
        self.payload = b"%032d" % i


def heap():
    kept = []
    print(f"ready {os.getpid()}", flush=True)
    while True:
        if not select.select([sys.stdin], [], [], 0.005)[0]:
            continue
        cmd = sys.stdin.readline().split()
        if not cmd or cmd[0] == "quit":
            return
        if cmd[0] == "build":
            kept.extend(BenchRecord(i) for i in range(len(kept), len(kept) + int(cmd[1]) // 5))
            out = {"objects": len(gc.get_objects()), "rss_kib": rss_kib()}
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()


if sys.argv[1:2] == ["heap"]:
    import gc

    heap()
else:
    main()
