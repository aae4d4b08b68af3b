"""A victim for the safety test: a real asyncio, gevent or C-extension program that checks itself.

SAFETY_MODE picks the program:
  asyncio  an event loop awaiting bursts of short-lived futures in concurrent tasks (the FutureIter
           free list of CPython gh-122695 is never empty between bursts);
  gevent   greenlets sleeping, spawning and allocating under gevent's hub (monkey-patched);
  cext     threads computing with objects of C extension types: _decimal, _elementtree, array, mmap.
SAFETY_AS_HEADROOM (bytes, default 1.5 GiB): the address-space cap (RLIMIT_AS) set above the size at
start, so a runaway allocation ends in MemoryError instead of swapping the test machine.

Protocol as busy.py: "ready <pid>" on stdout, then one command per stdin line, one JSON line back.
  state    progress counter, RSS, errors seen by the program's own checks
  collect  a full gc.collect() inside the program, timed
"""

import gc
import json
import os
import resource
import sys
import time

MODE = os.environ.get("SAFETY_MODE", "asyncio")
progress = [0]
errors = []


class AppRecord:
    def __init__(self, i):
        self.i = i
        self.name = "record-%d" % i
        self.payload = b"p" * 64


records = [AppRecord(i) for i in range(500)]


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_size():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def handle(line):
    cmd = line.strip()
    if cmd == "state":
        return {"progress": progress[0], "rss": rss(), "errors": errors[-5:], "n_errors": len(errors)}
    if cmd == "collect":
        t0 = time.perf_counter()
        n = gc.collect()
        return {"collected": n, "s": time.perf_counter() - t0}
    if cmd:
        return {"unknown": cmd}
    return None


class Lines:
    def __init__(self):
        self.buf = b""

    def feed(self, chunk):
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            answer = handle(line.decode())
            if answer is not None:
                sys.stdout.write(json.dumps(answer) + "\n")
                sys.stdout.flush()


def cap_address_space():
    cap = vm_size() + int(os.environ.get("SAFETY_AS_HEADROOM", str(3 << 29)))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


# --- asyncio -----------------------------------------------------------------------------------

def run_asyncio():
    import asyncio

    async def one(loop, i):
        f = loop.create_future()
        loop.call_soon(f.set_result, i)
        return await f  # a FutureIter from _asyncio's free list, back to it when done

    async def churn():
        # Bursts of concurrent awaits keep ~20 dead FutureIters on the free list between bursts:
        # what gh-122695's traverse hands out, and where a corrupted list shows (the same object
        # given to two awaits at once) when the next burst runs.
        loop = asyncio.get_running_loop()
        while True:
            try:
                got = await asyncio.gather(*(one(loop, i) for i in range(20)))
                if got != list(range(20)):
                    errors.append("futures returned wrong values: %r" % (got,))
                progress[0] += 1
                await asyncio.sleep(0.005)
            except Exception as exc:
                errors.append("%s: %s" % (type(exc).__name__, exc))

    async def main():
        loop = asyncio.get_running_loop()
        lines = Lines()

        def on_stdin():
            chunk = os.read(0, 4096)
            if not chunk:
                loop.stop()
                return
            lines.feed(chunk)

        loop.add_reader(0, on_stdin)
        task = asyncio.ensure_future(churn())
        print("ready %d" % os.getpid(), flush=True)
        await asyncio.sleep(10 ** 6)
        task.cancel()

    asyncio.run(main())


# --- gevent ------------------------------------------------------------------------------------

def run_gevent():
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.socket

    kept = []

    def worker(k):
        while True:
            try:
                g = gevent.spawn(lambda x: x * 2, k)
                if g.get(timeout=5) != k * 2:
                    errors.append("greenlet returned a wrong value")
                kept.append({"k": k, "blob": b"g" * 32})
                del kept[:-200]
                progress[0] += 1
                gevent.sleep(0.001)
            except Exception as exc:
                errors.append("%s: %s" % (type(exc).__name__, exc))

    def control():
        lines = Lines()
        while True:
            gevent.socket.wait_read(0)
            chunk = os.read(0, 4096)
            if not chunk:
                return
            lines.feed(chunk)

    workers = [gevent.spawn(worker, k) for k in range(3)]
    ctl = gevent.spawn(control)
    print("ready %d" % os.getpid(), flush=True)
    ctl.join()
    gevent.killall(workers)


# --- C extension objects -----------------------------------------------------------------------

def run_cext():
    import array
    import decimal
    import mmap
    import select
    import threading
    import xml.etree.ElementTree as ET

    ctx = decimal.Context(prec=30)
    decs = [ctx.divide(decimal.Decimal(i), decimal.Decimal(7)) for i in range(1, 2000)]
    arr = array.array("d", (float(i) for i in range(20000)))
    mm = mmap.mmap(-1, 1 << 20)
    mm[:8] = b"introspe"
    root = ET.Element("root")
    for i in range(300):
        ET.SubElement(root, "item", {"i": str(i)}).text = "x" * 20
    expected = (sum(decs[:100], decimal.Decimal(0)), sum(arr), len(root.findall("item")))

    def check():
        got = (sum(decs[:100], decimal.Decimal(0)), sum(arr), len(root.findall("item")))
        if got != expected or mm[:8] != b"introspe":
            errors.append("C extension objects changed: %r" % (got,))

    def spin():
        while True:
            check()
            progress[0] += 1
            time.sleep(0.002)

    for _ in range(2):
        threading.Thread(target=spin, daemon=True).start()
    lines = Lines()
    print("ready %d" % os.getpid(), flush=True)
    while True:
        ready, _, _ = select.select([0], [], [], 0.01)
        if ready:
            chunk = os.read(0, 4096)
            if not chunk:
                return
            lines.feed(chunk)
        check()


if __name__ == "__main__":
    cap_address_space()
    {"asyncio": run_asyncio, "gevent": run_gevent, "cext": run_cext}[MODE]()
