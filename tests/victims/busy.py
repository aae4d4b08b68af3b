"""A victim process for integration tests: 4 busy threads, known objects, a command loop.

Protocol: prints "ready <pid>" on stdout once set up; then reads one command per line on stdin
and answers one JSON line on stdout. The main thread polls stdin every 10 ms, so it reaches the
interpreter's safe points often (the idle case has its own victim, idle.py).
Commands: state | objgraph | grow N | shrink N | payloads N SIZE | tuples N K | rss | quit
"""

import gc
import json
import os
import select
import sys
import threading
import time

import objgraph


class Widget:
    pass


class Outer:
    class Inner:
        pass


class Leaky:
    pass


class Registry:
    items = []


class Cached:
    pass


class Closured:
    pass


class FrameHeld:
    pass


widgets = [Widget() for _ in range(1234)]
inners = [Outer.Inner() for _ in range(321)]
leaks = []
chains = []  # lists of untracked tuples (the budget tests)
payloads = []  # {"payload": bytes}: dicts of atomic values only, so gc tracks neither dict nor bytes
_cache = {}
errors = []


def _make_closure():
    held = [Closured() for _ in range(3)]

    def closure():
        return held

    return closure


closure = _make_closure()
for i in range(7):
    _cache["key%d" % i] = Cached()
for _ in range(5):
    Registry.items.append(Widget())

stop = threading.Event()
still = threading.Event()  # set while objgraph counts: threads stop allocating


def spin(n):
    # Busy, allocating thread: lists are created and dropped all the time.
    while not stop.is_set():
        if still.is_set():
            time.sleep(0.001)
            continue
        scratch = [i * n for i in range(200)]
        sum(scratch)
        time.sleep(0.0002)  # busy, but leave the test machine's 2 cores some air


def keeper():
    mine = FrameHeld()
    while not stop.is_set():
        time.sleep(0.01)
    return mine


threads = [threading.Thread(target=spin, args=(k,), name="spin-%d" % k, daemon=True) for k in range(4)]
threads.append(threading.Thread(target=keeper, name="keeper", daemon=True))
for t in threads:
    t.start()


def state():
    return {
        "main_names": sorted(k for k in vars(sys.modules["__main__"])),
        "sys_path": list(sys.path),
        "modules": sorted(sys.modules),
        "threads": sorted(t.name for t in threading.enumerate()),
        "fds": sorted(os.listdir("/proc/self/fd")),
        "errors": errors,
        "threads_alive": all(t.is_alive() for t in threads),
    }


def handle(line):
    words = line.split()
    if not words:
        return None
    cmd = words[0]
    if cmd == "state":
        return state()
    if cmd == "objgraph":
        still.set()
        try:
            time.sleep(0.05)
            return objgraph.typestats(shortnames=False)
        finally:
            still.clear()
    if cmd == "grow":
        leaks.extend(Leaky() for _ in range(int(words[1])))
        return {"leaks": len(leaks)}
    if cmd == "shrink":
        del leaks[: int(words[1])]
        return {"leaks": len(leaks)}
    if cmd == "payloads":
        n, size = int(words[1]), int(words[2])
        payloads.extend({"payload": os.urandom(size)} for _ in range(n))
        return {"tracked": gc.is_tracked(payloads[-1]), "bytes_each": sys.getsizeof(payloads[-1]["payload"])}
    if cmd == "tuples":
        # N tuples of K small ints: untracked after their first collection, walked K referents each
        n, k = int(words[1]), int(words[2])
        chains.append([tuple(range(i % 7, i % 7 + k)) for i in range(n)])
        gc.collect()
        return {"tracked": gc.is_tracked(chains[-1][-1])}
    if cmd == "rss":
        with open("/proc/self/statm") as f:
            return {"rss": int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")}
    if cmd == "quit":
        stop.set()
        return {"bye": True}
    return {"unknown": cmd}


def main():
    print("ready %d" % os.getpid(), flush=True)
    buf = b""
    while not stop.is_set():
        try:
            ready, _, _ = select.select([sys.stdin], [], [], 0.01)
            if ready:
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    answer = handle(line.decode())
                    if answer is not None:
                        sys.stdout.write(json.dumps(answer) + "\n")
                        sys.stdout.flush()
            sum(range(100))  # keep executing bytecode between polls
        except Exception as exc:  # any error our injection causes in the target's own code
            errors.append("%s: %s" % (type(exc).__name__, exc))


if __name__ == "__main__":
    gc.collect()
    main()
