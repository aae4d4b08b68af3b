"""What each step of the walk costs per object (issue 23's per-step table), the Python step's
C-level map passes against the compiled step (introspect/agent/_cwalk.c), in one interpreter over
the big-heap bench's heap (half gc-tracked lists, half untracked dicts and bytes).

    .venv/bin/python scripts/bench_walkstep.py [--objects 1000000] [--python PY]

Runs the measurement in a child of ``--python`` (any 3.8+; the build is one stable-ABI file) and
prints a Markdown table, ns per object (best of three passes over the heap).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AGENT_PATH = REPO / "introspect" / "agent" / "whole.py"  # the agent, every file, for tools

CHILD = r"""
import gc, runpy, sys, time, _imp
from importlib.machinery import ModuleSpec
so, n = sys.argv[1], int(sys.argv[2])
agent = runpy.run_path(sys.argv[3])  # the agent's sizes rule (cwalk.py _cw_sizer), nothing run
data = [[[{"b": bytes(16)}]] for _ in range(n // 4)]
gc.collect()
gc.disable()
spec = ModuleSpec("_cwalk", None, origin=so)
m = _imp.create_dynamic(spec)
_imp.exec_dynamic(m)
keep = gc.get_objects()
tracked = len(keep)
index = {}
B = 32768
def best(fn):
    out = []
    for _ in range(3):
        t = time.perf_counter()
        for p in range(0, len(keep), B):
            fn(p, min(len(keep), p + B))
        out.append(time.perf_counter() - t)
    return min(out) / len(keep) * 1e9
# the compiled step finds the untracked half first (appended to keep), then every pass is over
# the whole heap: each object's type index, size, address and references
m.mark(keep, 0)
m.setsizeof(sys.getsizeof)
pos = 0
while pos < len(keep):
    stop = min(len(keep), pos + B)
    for t, o in m.newtypes(keep, pos, stop):
        m.settype(t, len(index), *agent["_cw_sizer"](m, t, o, agent["_gc_head"]()))
        index[t] = len(index)
    m.walk(keep, pos, stop, None)
    pos = stop
rows = [
    ("objects walked (gc-tracked at the start)", "%d (%d)" % (len(keep), tracked)),
    ("a batch's slice `keep[a:b]`", "%.0f" % best(lambda p, q: keep[p:q])),
    ("`list(map(type, batch))`", "%.0f" % best(lambda p, q: list(map(type, keep[p:q])))),
    ("type indices (`map(index.__getitem__, map(type, ...))`)",
     "%.0f" % best(lambda p, q: list(map(index.__getitem__, map(type, keep[p:q]))))),
    ("`list(map(sys.getsizeof, batch))`",
     "%.0f" % best(lambda p, q: list(map(sys.getsizeof, keep[p:q])))),
    ("`list(map(gc.is_tracked, batch))`",
     "%.0f" % best(lambda p, q: list(map(gc.is_tracked, keep[p:q])))),
    ("`list(map(gc.get_referents, batch))`",
     "%.0f" % best(lambda p, q: list(map(gc.get_referents, keep[p:q])))),
    ("`list(map(id, batch))`", "%.0f" % best(lambda p, q: list(map(id, keep[p:q])))),
    ("compiled step: `walk()` (addresses, type indices, sizes, references, the seen test)",
     "%.0f" % best(lambda p, q: m.walk(keep, p, q, None))),
]
for a, b in rows:
    print("| %s | %s |" % (a, b))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=1000000)
    ap.add_argument("--python", default=sys.executable)
    opts = ap.parse_args()
    found = sorted((REPO / "introspect" / "agent").glob("_cwalk*.so"))
    if not found:
        print("bench_walkstep: the compiled walk step is not built: run scripts/setup",
              file=sys.stderr)
        return 1
    print(f"Python: {opts.python}; {opts.objects:,} objects; ns per object, best of 3")
    print("| step | ns per object |\n|---|---|")
    return subprocess.call(
        [opts.python, "-c", CHILD, str(found[0]), str(opts.objects), str(AGENT_PATH)]
    )


if __name__ == "__main__":
    sys.exit(main())
