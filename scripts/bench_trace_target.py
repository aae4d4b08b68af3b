"""Benchmark target for scripts/bench-trace: a worker whose throughput and memory we watch.

Usage: python bench_trace_target.py        (driven by scripts/bench_trace.py through stdin/stdout)

The main thread works without pause, like a busy worker: each operation builds a record (a dict,
a formatted string, a list of 5 short strings) and stores it in a bounded cache of CACHE entries,
replacing the oldest; so after CACHE operations every cached record was allocated while tracing
was on, and tracemalloc holds a trace for each of its ~8 blocks. Between operations it looks at
stdin without waiting (select with timeout 0), so the agent's pending call runs within microseconds.

Commands (one JSON line back): window S  (operations per second over the next S seconds, RSS)
| quit. Python 3.8+, standard library only.
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


main()
