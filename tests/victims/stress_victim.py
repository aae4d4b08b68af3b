"""A victim for scripts/stress: threads that allocate all the time, a main thread that checks itself.

The main thread never reads stdin: it runs a deterministic computation in a loop (a table of user
objects, a checksum, an exception raised and inspected inside its handler) and compares each
result with the one computed before anything was injected, so an injection that corrupts state,
leaks an exception into the target's code or clobbers the handled exception is counted. It runs
bytecode nearly all the time, where pending calls and sys.remote_exec requests are served.
Three threads create and drop dicts, lists and StressItem objects and re-check the items they
keep; a control thread serves the line protocol, so asking for the state never stops the checks.

Protocol (as busy.py): prints "ready <pid>" on stdout once set up; then one command per line on
stdin, one JSON line back on stdout. Commands: health | state | quit
Python 3.8 syntax; imports nothing of introspect.
"""

import json
import os
import sys
import threading
import time

POOL_SIZE = 400
SEEDS = 16
ERROR_SAMPLES = 5


class StressItem:
    """The user type the stress run walks with backrefs: pools hold some, threads churn many."""

    def __init__(self, i, seed):
        self.i = i
        self.seed = seed
        self.value = StressItem.expected(i, seed)

    @staticmethod
    def expected(i, seed):
        return (i * 2654435761 + seed * 40503) % 1000003


class CheckFailed(Exception):
    pass


stats = {"checks": 0, "allocs": 0, "errors": 0}
samples = []
stats_lock = threading.Lock()
pools = {k: [None] * POOL_SIZE for k in range(3)}
stop = threading.Event()


def record_error(where, exc):
    with stats_lock:
        stats["errors"] += 1
        if len(samples) < ERROR_SAMPLES:
            samples.append("%s: %s: %s" % (where, type(exc).__name__, exc))


def checksum(seed):
    """A deterministic result that touches dicts, lists, tuples, strings, sorting and our class."""
    table = {}
    for i in range(150):
        item = StressItem(i, seed)
        table[("k", i % 37, i)] = [item, i * i, str(i)]
    total = 0
    for key in sorted(table):
        item, square, text = table[key]
        total = (total * 31 + item.value + square + len(text) + key[1]) % 1000000007
    return total


def exception_check(seed):
    """Raise, then look at the handled exception: an injection between these bytecodes must not
    replace or clear it (sys.exc_info is per thread state; a careless pending call could clobber it)."""
    try:
        raise CheckFailed(seed)
    except CheckFailed as exc:
        expected = exc
        scratch = [seed * j for j in range(50)]
        current = sys.exc_info()[1]
        if current is not expected or current.args != (seed,) or sum(scratch) != seed * 1225:
            raise AssertionError("handled exception changed under us: %r" % (current,))
    if sys.exc_info()[1] is not None:
        raise AssertionError("exception still set after its handler: %r" % (sys.exc_info()[1],))


def self_check(expected):
    """The main thread's loop: check, count, repeat, until told to stop."""
    seed = 0
    while not stop.is_set():
        try:
            got = checksum(seed)
            if got != expected[seed]:
                raise CheckFailed("checksum(%d) = %d, expected %d" % (seed, got, expected[seed]))
            exception_check(seed)
            with stats_lock:
                stats["checks"] += 1
        except Exception as exc:  # anything an injection leaks into our own code
            record_error("main", exc)
        seed = (seed + 1) % SEEDS
        time.sleep(0.001)  # leave the shared test machine's cores some air


def allocate(k):
    """Churn: replace pool slots with fresh objects, build and drop temporaries, re-check items."""
    pool = pools[k]
    i = 0
    while not stop.is_set():
        try:
            for _ in range(40):
                i += 1
                slot = (i * 7919) % POOL_SIZE
                kind = i % 3
                if kind == 0:
                    pool[slot] = StressItem(i, k)
                elif kind == 1:
                    pool[slot] = {"i": i, "k": k, "tag": "d%d" % i}
                else:
                    pool[slot] = [i, k, "l%d" % i]
                junk = [{"j": j, "sq": j * j} for j in range(15)]
                if len(junk) != 15 or junk[7]["sq"] != 49:
                    raise CheckFailed("temporary list corrupted")
                other = pool[(slot * 31 + 5) % POOL_SIZE]
                if isinstance(other, StressItem) and other.value != StressItem.expected(other.i, other.seed):
                    raise CheckFailed("StressItem %d/%d holds %d" % (other.i, other.seed, other.value))
            with stats_lock:
                stats["allocs"] += 40
            time.sleep(0.001)
        except Exception as exc:
            record_error("allocator-%d" % k, exc)


def state():
    with stats_lock:
        health = dict(stats, samples=list(samples))
    health.update(
        main_names=sorted(vars(sys.modules["__main__"])),
        sys_path=list(sys.path),
        modules=sorted(sys.modules),
        threads=sorted(t.name for t in threading.enumerate()),
        fds=sorted(os.listdir("/proc/self/fd"), key=int),
        threads_alive=all(t.is_alive() for t in workers),
    )
    return health


def handle(line):
    cmd = line.strip()
    if cmd == "health":
        with stats_lock:
            return dict(stats, samples=list(samples), threads_alive=all(t.is_alive() for t in workers))
    if cmd == "state":
        return state()
    if cmd == "quit":
        stop.set()
        return {"bye": True}
    return {"unknown": cmd}


def control():
    """Serve the line protocol off the main thread; end the process's work when stdin closes."""
    for line in sys.stdin:
        answer = handle(line)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if stop.is_set():
            break
    stop.set()


workers = [threading.Thread(target=allocate, args=(k,), name="alloc-%d" % k, daemon=True) for k in range(3)]
controller = threading.Thread(target=control, name="control", daemon=True)


def main():
    expected = [checksum(seed) for seed in range(SEEDS)]
    for t in workers:
        t.start()
    print("ready %d" % os.getpid(), flush=True)
    controller.start()
    self_check(expected)


if __name__ == "__main__":
    main()
