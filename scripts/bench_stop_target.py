"""Target for `scripts/bench --injection`: one Python thread spinning, timing its own gaps.

Usage: python bench_stop_target.py     (driven by scripts/bench through stdin/stdout)

The main (and only) thread runs Python code without pause and records every gap longer than
GAP_S between two of its clock reads: whatever stops it (an injector's stop, the bootstrap's run
as a pending call, the scheduler) shows up there. Commands, one per line on stdin, each answered
with one JSON line:

  mark     start a window (reset the statistics); answers {"ok": true}
  report   {"lost_s": sum of gaps in the window, "max_s": the longest, "n": how many,
            "gaps": [[start, end], ...] (time.monotonic() clock, the first MAX_GAPS)}
  quit

Python 3.8+, stdlib only.
"""

import json
import os
import select
import sys
import time

GAP_S = 0.0001
MAX_GAPS = 2000
CHECK_EVERY = 2000  # loop turns between looks at stdin (a select() costs a few microseconds)


def main():
    clock = time.monotonic  # the driver's clock too (CLOCK_MONOTONIC), to place gaps around its calls
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    print(json.dumps({"ready": os.getpid(), "python": sys.version.split()[0]}), flush=True)
    lost = 0.0
    longest = 0.0
    n = 0
    gaps = []
    buf = b""
    last = clock()
    turn = 0
    while True:
        now = clock()
        gap = now - last
        if gap > GAP_S:
            lost += gap
            n += 1
            if len(gaps) < MAX_GAPS:
                gaps.append((last, now))
            if gap > longest:
                longest = gap
        last = now
        turn += 1
        if turn % CHECK_EVERY:
            continue
        if not select.select([fd], [], [], 0)[0]:
            last = clock()
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = line.decode().strip()
            if cmd == "mark":
                lost, longest, n = 0.0, 0.0, 0
                gaps = []
                sys.stdout.write('{"ok": true}\n')
                sys.stdout.flush()
            elif cmd == "report":
                sys.stdout.write(json.dumps({"lost_s": lost, "max_s": longest, "n": n, "gaps": gaps}) + "\n")
                sys.stdout.flush()
            elif cmd == "quit":
                return
        last = clock()


if __name__ == "__main__":
    main()
