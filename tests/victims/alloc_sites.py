"""A victim for allocation sites (`backrefs`, `growth`, `report` while `introspect trace` is on):
every tick (20 ms) it keeps objects of six kinds, each kind made at its own KEEP_* line (instances
of a plain class, of a class with __slots__ and of a dataclass; dicts of atomic values, bytes,
str), and makes 20 times as many of each at its CHURN line, dropped at once. So every live
instance of these kinds was made at its KEEP_* line; the churned ones' memory is reused by the
kept ones (a stale trace would show the CHURN line). The constructors of Plain and Slotted make
one float each (their *_INIT lines): the only object a Plain instance alone holds.
Commands (one JSON line back): state | quit. Standard library only.
"""

import _tracemalloc
import dataclasses
import json
import os
import select
import sys


class Plain:
    def __init__(self, n):
        self.n = n
        self.value = n * 0.5  # PLAIN_INIT


class Slotted:
    __slots__ = ("n", "value")

    def __init__(self, n):
        self.n = n
        self.value = n * 0.5  # SLOTTED_INIT


@dataclasses.dataclass
class Record:
    n: int
    value: float


plains, slotteds, records, dicts, blobs, texts = [], [], [], [], [], []


def keep(n):
    plains.append(Plain(n))  # KEEP_PLAIN
    slotteds.append(Slotted(n))  # KEEP_SLOTTED
    records.append(Record(n, n * 0.25))  # KEEP_RECORD
    dicts.extend([{"n": n, "i": i} for i in range(10)])  # KEEP_DICT
    blobs.extend([os.urandom(48) for _ in range(10)])  # KEEP_BYTES
    texts.extend(["text-%d-%d" % (n, i) for i in range(10)])  # KEEP_STR


def churn(n):
    for i in range(20):
        scratch = [Plain(n), Slotted(n), Record(n, i), {"i": i}, os.urandom(48), "c-%d" % i]  # CHURN
        del scratch


def state():
    return {"tracing": _tracemalloc.is_tracing(), "kept": len(plains)}


def main():
    print("ready %d" % os.getpid(), flush=True)
    n = 1000
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.02)
        keep(n)
        churn(n)
        n += 1
        if not ready:
            continue
        cmd = sys.stdin.readline().split()
        if not cmd or cmd[0] == "quit":
            return
        sys.stdout.write(json.dumps(state()) + "\n")
        sys.stdout.flush()


main()
