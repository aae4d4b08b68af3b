"""Benchmark target for scripts/bench: a process with a big heap that measures its own pauses.

Usage: python bench_target.py N_OBJECTS      (driven by scripts/bench through stdin/stdout)

It builds about N_OBJECTS gc-tracked objects, then serves line commands on stdin and answers each
with one JSON line on stdout:

  mark                 start a measurement window (resets the gap statistics below)
  report               the statistics of the window since the last mark
  objgraph_top         objgraph.most_common_types()
  objgraph_growth      objgraph.growth() (the first call is the baseline)
  objgraph_chain [S]   objgraph.find_backref_chain(HOLDER, objgraph.is_proper_module), S s limit
  guppy_census         guppy3's hpy().heap() (BENCH_MIXED=1 builds a heap half not tracked by gc)
  fork_time            one os.fork() of this heap (the child exits at once)
  quit

Two clocks watch the pauses, because with the GIL there are two different ones:
  - the main loop wakes at least every MAIN_PERIOD_S (select timeout) and records its gaps. Both
    introspect's agent (a pending call) and objgraph (a command) run on this thread, so the gaps
    are how long the process's main thread was taken away, gdb's stop included;
  - a ticker thread sleeps TICK_S in a loop and records its gaps: how long *other* threads were
    stalled. That is only the longest stretch the GIL was held without a switch (a C call such as
    gc.get_objects() or gc.get_referrers()) or everything was stopped (gdb attached); pure-Python
    work on the main thread lets it run every switch interval (5 ms).

Python 3.8+; objgraph must be importable (the driver puts a copy on PYTHONPATH).
"""

import gc
import json
import os
import select
import signal
import sys
import threading
import time

import objgraph

MAIN_PERIOD_S = 0.005  # the brief: the main thread must reach a safe point every <= 10 ms
TICK_S = 0.001
mono = time.monotonic


# ------------------------------------------------------------------------------------------------
# the heap

class Rec:
    def __init__(self, i):
        self.i = i
        self.name = "rec"


class Holder:
    """One instance, 100 referrers (Ref), a few steps below a module: objgraph's slow case."""


class Ref:
    def __init__(self, holder):
        self.holder = holder


class BenchLeaf:
    """A unique type with a few instances, reachable from a module global through a few levels."""

    def __init__(self, i):
        self.i = i


class Node:
    def __init__(self, child):
        self.child = child


DATA = []  # the bulk of the heap
STATE = {}  # __main__ -> STATE -> "refs" -> [Ref x100] -> Holder
REGISTRY = {}  # __main__ -> REGISTRY -> "caches" -> "tier2" -> [Node] -> Node -> BenchLeaf


def build_mixed(n_objects):
    """About n_objects objects, half not tracked by gc: per group two lists (tracked) holding a dict
    of atomic values (untracked before 3.14) holding fresh bytes (never tracked). Returns the count
    gc tracks."""
    build(0)
    for _ in range(n_objects // 4):
        DATA.append([[{"b": bytes(16)}]])
    gc.collect()
    return len(gc.get_objects())


def cmd_fork_time(arg):
    """One plain os.fork() of this heap, the child exiting at once: the floor of a forked snapshot."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    took = time.perf_counter() - t0
    os.waitpid(pid, 0)
    return {"fork_s": round(took, 6)}


def cmd_guppy_census(arg):
    from guppy import hpy  # the bench's comparison; imported on first use, like a user would

    heap = hpy().heap()
    return {"count": heap.count, "size": heap.size}


def build(n_objects):
    """Grow the heap until gc tracks about n_objects objects; return the exact count."""
    holder = Holder()
    STATE["refs"] = [Ref(holder) for _ in range(100)]
    REGISTRY["caches"] = {"tier2": {"leaves": [Node(Node(BenchLeaf(i))) for i in range(5)]}}
    del holder
    gc.collect()
    base = len(gc.get_objects())
    # 4 tracked objects per group: an instance, a dict holding it, a tuple, a list.
    for i in range(max(0, n_objects - base) // 4):
        r = Rec(i)
        d = {"id": i, "rec": r}
        DATA.append([(r, d)])
    gc.collect()  # untrack what the collector untracks anyway, so counts stay put during the run
    missing = n_objects - len(gc.get_objects())
    DATA.extend(Rec(i) for i in range(max(0, missing)))
    gc.collect()
    return len(gc.get_objects())


# ------------------------------------------------------------------------------------------------
# gap statistics

class Gaps:
    """Gaps between wake-ups of one loop; ``lost`` sums what exceeds the loop's own period."""

    def __init__(self, period, slack):
        self.period = period
        self.slack = slack  # a gap longer than period + slack is a stall
        self.max = 0.0
        self.lost = 0.0
        self.n = 0
        self.stalls = []  # the longest few, newest window only

    def add(self, gap):
        self.n += 1
        if gap > self.max:
            self.max = gap
        if gap > self.period + self.slack:
            self.lost += gap - self.period
            self.stalls.append(round(gap, 6))
            if len(self.stalls) > 64:
                self.stalls.sort(reverse=True)
                del self.stalls[16:]

    def summary(self):
        return {"max_s": round(self.max, 6), "lost_s": round(self.lost, 6), "n": self.n,
                "stalls_s": sorted(self.stalls, reverse=True)[:8]}


WINDOW = {"main": Gaps(MAIN_PERIOD_S, 0.002), "ticker": Gaps(TICK_S, 0.002), "t0": mono(), "gc": []}
GC_START = [0.0]


def _gc_watch(phase, info):
    """The target's own collections in the window (generation, ms): a collection that an
    operation's allocations trigger is part of the pause the target sees."""
    if phase == "start":
        GC_START[0] = mono()
    elif mono() - GC_START[0] > 0.001:
        WINDOW["gc"].append((info["generation"], round((mono() - GC_START[0]) * 1000, 1)))


def ticker():
    last = mono()
    while True:
        time.sleep(TICK_S)
        now = mono()
        WINDOW["ticker"].add(now - last)  # a new window may be swapped in meanwhile: harmless
        last = now


# ------------------------------------------------------------------------------------------------
# commands

class ChainTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise ChainTimeout()


def cmd_objgraph_top(arg):
    return {"rows": [list(r) for r in objgraph.most_common_types(limit=10)]}


def cmd_objgraph_growth(arg):
    return {"rows": [list(r) for r in objgraph.growth(limit=10)]}


def cmd_objgraph_chain(arg):
    limit = float(arg) if arg else 0.0
    old = signal.signal(signal.SIGALRM, _alarm)
    if limit:
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        chain = objgraph.find_backref_chain(STATE["refs"][0].holder, objgraph.is_proper_module)
        return {"chain_len": len(chain), "chain_types": [type(o).__name__ for o in chain]}
    except ChainTimeout:
        return {"timeout": True}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        chain = None


def handle(line):
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "mark":
        WINDOW.update(main=Gaps(MAIN_PERIOD_S, 0.002), ticker=Gaps(TICK_S, 0.002), t0=mono(), gc=[])
        return {"ok": True}
    if cmd == "report":
        return {"ok": True, "window_s": round(mono() - WINDOW["t0"], 6),
                "main": WINDOW["main"].summary(), "ticker": WINDOW["ticker"].summary(), "gc_ms": WINDOW["gc"],
                "objects": len(gc.get_objects()) if arg == "count" else None}
    fn = globals().get("cmd_" + cmd)
    if fn is None:
        return {"ok": False, "error": f"unknown command {cmd!r}"}
    t0 = time.perf_counter()
    result = fn(arg)
    result.update(ok=True, elapsed_s=round(time.perf_counter() - t0, 6))
    return result


def reply(doc):
    os.write(1, (json.dumps(doc) + "\n").encode())


def serve():
    fd = sys.stdin.fileno()
    buf = b""
    last = mono()
    while True:
        ready, _, _ = select.select([fd], [], [], MAIN_PERIOD_S)
        now = mono()
        WINDOW["main"].add(now - last)
        last = now
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip() == b"quit":
                return
            try:
                reply(handle(line.decode()))
            except Exception as exc:  # report, keep serving
                reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        # No reset of `last` here: objgraph's run on this thread is a stall, measured like the agent's.


def main(argv):
    if len(argv) != 2 or not argv[1].isdigit():
        print(__doc__.strip(), file=sys.stderr if len(argv) != 2 or argv[1] not in ("-h", "--help") else sys.stdout)
        return 0 if len(argv) == 2 and argv[1] in ("-h", "--help") else 2
    t0 = time.perf_counter()
    objects = build_mixed(int(argv[1])) if os.environ.get("BENCH_MIXED") else build(int(argv[1]))
    gc.callbacks.append(_gc_watch)
    threading.Thread(target=ticker, name="ticker", daemon=True).start()
    reply({"ready": True, "pid": os.getpid(), "objects": objects, "build_s": round(time.perf_counter() - t0, 3),
           "python": ".".join(map(str, sys.version_info[:3]))})
    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
