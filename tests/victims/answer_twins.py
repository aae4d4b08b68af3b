"""The walker's answers to a dump's questions, compiled (introspect/agent/_cwalk.c counts and
labels) against Python (labels.py _snap_counts, _snap_label_pairs), in one interpreter over a heap
of every kind of holder: plain dicts small and big, dict subclasses, keys of every type (long,
quoted, unprintable, not str), a child held twice or as a key, instances, slots, lists, tuples,
sets. Prints one JSON line: the number of questions and every answer that differs.

    python answer_twins.py AGENT_PATH CWALK_SO
"""

import _imp
import collections
import gc
import json
import random
import runpy
import sys
from importlib.machinery import ModuleSpec

agent = runpy.run_path(sys.argv[1])
m = _imp.create_dynamic(ModuleSpec("_cwalk", None, origin=sys.argv[2]))
_imp.exec_dynamic(m)


class Slotted:
    __slots__ = ("a", "b")


class Plain:
    pass


class MyDict(dict):
    pass


class Key:
    def __hash__(self):
        return 7

    def __eq__(self, other):
        return self is other


rng = random.Random(5)
shared = [b"shared"]
heap = []
for i in range(3000):
    size = rng.choice([0, 1, 2, 3, 8, 40, 64, 65, 200])
    d = {}
    for j in range(size):
        kind = rng.randrange(7)
        key = ("k%d" % j if kind == 0 else j if kind == 1 else "x" * (30 + j) if kind == 2
               else 'q"\\\n\x00%d' % j if kind == 3 else (j, "t") if kind == 4 else Key()
               if kind == 5 else "é%d" % j)
        d[key] = shared if rng.random() < 0.2 else (key if rng.random() < 0.1 else [j])
    heap.append(d)
    heap.append(MyDict(a=[i], b=shared))
    heap.append(collections.OrderedDict(a=[i], b=shared))
    heap.append(collections.defaultdict(list, {i: shared}))
    p = Plain()
    p.x, p.y = [i], shared
    heap.append(p)
    s = Slotted()
    s.a, s.b = shared, [i]
    heap.append(s)
    heap.append([shared, [i], shared])
    heap.append(tuple([shared, i, "s"]))
    heap.append({shared[0], i})
    heap.append(frozenset([i, "f"]))
bigs = [[shared] * 3 + [[i] for i in range(6000)] + [shared], tuple([i] for i in range(7000))]
heap.extend(bigs)
gc.collect()
keep = list(heap)
seen = set(map(id, keep))
for h in list(keep):
    for r in gc.get_referents(h):
        if id(r) not in seen:
            seen.add(id(r))
            keep.append(r)
where = {id(o): p for p, o in enumerate(keep)}

# pairs: each holder's references, in runs (a big dict's come together), and strangers
pairs = []
for p, h in enumerate(keep[:len(heap)]):
    kids = [where[id(r)] for r in gc.get_referents(h) if id(r) in where]
    pairs += [(p, c) for c in kids]
    pairs.append((p, rng.randrange(len(keep))))
rng.shuffle(pairs)  # short runs everywhere; then a few long runs of one big dict
big = next(p for p, h in enumerate(keep) if type(h) is dict and len(h) >= 200)
pairs += [(big, where[id(r)]) for r in gc.get_referents(keep[big]) if id(r) in where]

# a few items of a big list or tuple asked together (a probe: one pass over its items)
for b in bigs:
    p = where[id(b)]
    kids = [where[id(r)] for r in gc.get_referents(b)][::-1][:3000:97] + [0, where[id(shared)]]
    pairs += [(p, c) for c in kids]

differ = []
array = __import__("array").array
CH = 2000
for k in range(0, len(pairs), CH):
    flat = [x for pair in pairs[k:k + CH] for x in pair]
    raw = array("i", flat).tobytes()
    c = agent["_snap_label_raw"](m, keep, raw, [])
    py = agent["_snap_label_pairs"](keep, flat, [])
    mixed = agent["_snap_label_pairs"](keep, flat, [], m)  # a question in decimal
    differ += [[flat[2 * i], flat[2 * i + 1], a, b, "decimal"]
               for i, (a, b) in enumerate(zip(mixed, py)) if a != b]
    differ += [[flat[2 * i], flat[2 * i + 1], a, b] for i, (a, b) in enumerate(zip(c, py))
               if a != b]
    if len(c) != len(py):
        differ.append(["lengths", len(c), len(py)])
positions = list(range(len(keep))) + [-1, -len(keep)]
c = array("q", m.counts(keep, array("i", positions).tobytes())).tolist()
py = agent["_snap_counts"](keep, positions)
counts_differ = [[p, a, b] for p, a, b in zip(positions, c, py) if a != b]
errors = []
for bad in ([len(keep)], [-len(keep) - 1]):
    try:
        m.counts(keep, array("i", bad).tobytes())
        errors.append("counts took %r" % bad)
    except IndexError:
        pass
    try:
        m.labels(keep, array("i", [0] + bad).tobytes(), {}, agent["_snap_key_label"], 64)
        errors.append("labels took %r" % bad)
    except IndexError:
        pass
print(json.dumps({"pairs": len(pairs), "labels_differ": differ[:20], "counts": len(positions),
                  "counts_differ": counts_differ[:20], "errors": errors,
                  "kinds": sorted(collections.Counter(
                      type(keep[p]).__name__ for p, _ in pairs).items())}))
