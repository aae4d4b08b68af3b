"""What a snapshot says: types (tracked and untracked), the dominator tree and retained sizes,
holders named by their path from a root, chains for backrefs. Pure functions over records; the
only outside call is ``Labeler`` (edge labels and names asked of the frozen walker, or a stub in
tests).

Roots: modules (by name), the locals of running thread frames, and objects "held from C": their
refcount exceeds the references the walk found (C extension state, interpreter internals,
values on a running frame's stack; on 3.12+ also immortal objects).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from introspect.snapshot import graph
from introspect.snapshot.records import IMMORTAL, Snapshot
from introspect.snapshot.views import Holder, TypeRow

# Types whose instances hold items: the candidates for "holder".
CONTAINERS = frozenset(
    {
        "list",
        "dict",
        "set",
        "frozenset",
        "tuple",
        "collections.deque",
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.Counter",
        "weakref.WeakValueDictionary",
        "weakref.WeakKeyDictionary",
        "queue.Queue",
        "asyncio.queues.Queue",
    }
)

# Objects that hold what they hold only for a moment: a callback queued on an event loop's ready
# queue or timer heap. A chain through one names where a reference happened to pass, not the owner
# that keeps the object alive: such paths are replaced by one avoiding them when one exists.
TRANSIENT = frozenset({"asyncio.events.Handle", "asyncio.events.TimerHandle"})

# (holder position, child position) pairs -> how the holder holds the child ("['k']", "[3]",
# ".attr").
Labeler = Callable[[Sequence[tuple[int, int]]], list[str]]
# positions -> names of modules, classes and functions ("" for anything else).
Namer = Callable[[Sequence[int]], list[str]]


def type_rows(snap: Snapshot, among: np.ndarray | None = None) -> dict[str, TypeRow]:
    """Count, gc-tracked/untracked split and shallow bytes per type name (of the objects where
    ``among`` is true, when given: the reachable ones, say)."""
    k = len(snap.types)
    count = np.zeros(k, np.int64)
    tracked = np.zeros(k, np.int64)
    nbytes = np.zeros(k, np.float64)
    step = graph.BLOCK  # in blocks: bincount's float weights would copy a whole column
    for a in range(0, snap.n, step):
        t, tr, sz = snap.type_of[a : a + step], snap.tracked[a : a + step], snap.size[a : a + step]
        if among is not None:
            m = among[a : a + step]
            t, tr, sz = t[m], tr[m], sz[m]
        count += np.bincount(t, minlength=k)
        tracked += np.bincount(t[tr], minlength=k)
        nbytes += np.bincount(t, weights=sz, minlength=k)
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(snap.types):
        if count[i]:
            row = rows.setdefault(name, [0, 0, 0])
            row[0] += int(count[i])
            row[1] += int(tracked[i])
            row[2] += int(nbytes[i])
    return {name: TypeRow(name, c, t, c - t, b) for name, (c, t, b) in rows.items()}


@dataclass
class Heap:
    """A snapshot with its graph analysed. ``root_name[pos]`` names each root object."""

    snap: Snapshot
    retained: np.ndarray  # int64 bytes per object (0 where unreachable from every root)
    # int32 immediate dominator position; -1 for roots (dominated by the virtual root) and
    # unreachable objects
    idom: np.ndarray
    parent: (
        np.ndarray
    )  # int32 BFS parent position (shortest path from a root); -1 for roots and unreachable
    reachable: np.ndarray  # bool
    root_name: dict[int, str]
    held_from_c: int
    graph: Any = None  # unused since issue 23 (searches from one root run over snap's arrays)

    def path_from(self, root: int, targets: set[int]) -> dict[int, list[int]]:
        """Shortest paths from the object ``root`` to those of ``targets`` it reaches."""
        snap = self.snap
        par = graph.bfs(snap.offsets, snap.refs, snap.n, np.array([root], np.int32), order=False)[2]
        out: dict[int, list[int]] = {}
        for t in targets:
            if par[t] == -2:
                continue
            p = [t]
            while p[-1] != root:
                p.append(int(par[p[-1]]))
            p.reverse()
            out[t] = p
        return out

    def path(self, pos: int) -> list[int]:
        """Positions from a root down to ``pos`` (shortest path)."""
        out = [pos]
        while self.parent[out[-1]] >= 0:
            out.append(int(self.parent[out[-1]]))
        out.reverse()
        return out

    def dominated_by(self, pos: int, anc: set[int]) -> bool:
        p = int(self.idom[pos])
        while p >= 0:
            if p in anc:
                return True
            p = int(self.idom[p])
        return False


def _roots(
    snap: Snapshot, indeg: np.ndarray | None = None
) -> tuple[dict[int, str], int, np.ndarray]:
    """Root names by position, how many are held from C (immortal ones aside), and the roots'
    positions (int32): modules and frame locals, then among the objects they do not reach those
    whose refcount exceeds the references found (``indeg``: counted here when not given)."""
    n = snap.n
    root_name: dict[int, str] = {}
    for r in snap.roots:
        if r.pos not in root_name:
            root_name[r.pos] = ("module " + r.name) if r.kind == "module" else r.name
    first = np.fromiter(root_name.keys(), dtype=np.int64, count=len(root_name))
    reached = graph.bfs(snap.offsets, snap.refs, n, first, order=False, parents=False)[2]
    if indeg is None:
        indeg = graph.indegree(snap.refs, n)
    over = snap.excess > indeg
    over &= ~reached
    del reached
    c_held = np.flatnonzero(over)
    del over
    held = 0
    for p in c_held.tolist():
        immortal = snap.excess[p] >= IMMORTAL
        root_name[p] = f"{'immortal' if immortal else 'held from C'} ({snap.type_name(p)})"
        held += 0 if immortal else 1
    return root_name, held, np.concatenate([first, c_held]).astype(np.int32)


def _long_lived_roots(snap: Snapshot) -> np.ndarray:
    """Positions of the module roots and of the locals of each thread's outermost function frame
    (the walker lists a thread's frames innermost first: the last frame named for a thread)."""
    outermost: dict[str, str] = {}
    for r in snap.roots:
        if r.kind != "module":
            frame = r.name.rsplit(", local ", 1)[0]
            outermost[frame.split(", ", 1)[0]] = frame
    keep = {f for f in outermost.values()}
    pos = [
        r.pos for r in snap.roots if r.kind == "module" or r.name.rsplit(", local ", 1)[0] in keep
    ]
    return np.asarray(sorted(set(pos)), dtype=np.int64)


def reachable_of(snap: Snapshot) -> np.ndarray:
    """Which objects some root reaches (no dominator tree: for counts that need only this)."""
    _names, _held, roots = _roots(snap)
    reached: np.ndarray = graph.bfs(
        snap.offsets, snap.refs, snap.n, roots, order=False, parents=False
    )[2]
    return reached


def garbage(snap: Snapshot, reachable: np.ndarray, limit: int = 10) -> dict[str, Any]:
    """What no root reaches: objects kept alive only by reference cycles among themselves, which
    the cyclic collector frees at its next collection of their generation (usually a full one:
    cycles that outlive a few young collections sit in the oldest). Objects, bytes, and the types
    it consists of (most bytes first)."""
    dead = ~reachable
    k = len(snap.types)
    count = np.bincount(snap.type_of[dead], minlength=k)
    nbytes = np.bincount(snap.type_of[dead], weights=snap.size[dead], minlength=k)
    per: dict[str, list[int]] = {}
    for i in np.nonzero(count)[0].tolist():
        row = per.setdefault(snap.types[i], [0, 0])
        row[0] += int(count[i])
        row[1] += int(nbytes[i])
    ranked = sorted(per.items(), key=lambda kv: (-kv[1][1], kv[0]))
    by_type = [{"type": t, "count": c, "bytes": b} for t, (c, b) in ranked]
    # The classes in it name the cycle (billiard.einfo.ExceptionInfo, not the tuples it copied):
    # module-qualified types, most instances first.
    classes = sorted(
        (t for t in per if "." in t and t not in CONTAINERS), key=lambda t: (-per[t][0], t)
    )
    return {
        "objects": int(dead.sum()),
        "bytes": int(snap.size[dead].sum()),
        "by_type": by_type[:limit] if limit > 0 else by_type,
        "classes": [{"type": t, "count": per[t][0], "bytes": per[t][1]} for t in classes[:5]],
    }


def analyse(snap: Snapshot) -> Heap:
    """Roots, dominator tree (of what peeling leaves: plain Python up to graph.SMALL_DOMINATORS
    vertices, else python-igraph's Lengauer-Tarjan, in C), retained sizes, BFS paths.

    Modules and frame locals are roots; then, among the objects they do not reach, those whose
    refcount exceeds the references found are roots "held from C". (An object both reachable and
    also held by C code is attributed to its Python path: the graph cannot see C's references.)

    Lean for big heaps (issue 23, graph.py): BFS in numpy over the snapshot's CSR arrays; the
    hanging trees (most of a heap: the items of containers) are peeled off first, and the
    dominators are computed for what is left only; int32 arrays, each step's temporaries freed
    before the next. What stays: parent and idom (int32), retained (int64), reachable (bool):
    17 bytes per object.
    """
    n = snap.n
    off, refs = snap.offsets, snap.refs
    indeg = graph.indegree(refs, n)
    root_name, held, roots = _roots(snap, indeg)
    order, bounds, reachable = graph.bfs(off, refs, n, roots, parents=False)
    left, idom = graph.peel(off, refs, n, reachable, roots, indeg)
    del indeg
    idom[~reachable] = -1
    graph.dominators(off, refs, n, left, roots, idom)
    del left
    idom[roots] = -1
    idom[~reachable] = -1
    retained = graph.fold_retained(snap.size, order, bounds, reachable, idom)
    del order
    # Shortest paths from the long-lived roots (modules, each thread's outermost frame) where they
    # reach; from any root elsewhere: a call in flight on a worker's thread (its innermost frames)
    # must not name what the thread's own object, or a module, keeps anyway. The second search
    # continues the first: a path from another root never passes what a long-lived one reaches
    # (that would be reached too), so its parents are those of one search from every root. Last,
    # when the peeling's and the fold's arrays are gone: one int32 array in all.
    parent = graph.bfs(off, refs, n, _long_lived_roots(snap), order=False)[2]
    parent = graph.bfs(off, refs, n, roots, order=False, seen=parent)[2]
    parent[~reachable] = -1
    return Heap(snap, retained, idom, parent, reachable, root_name, held, None)


def _items(snap: Snapshot, pos: int) -> int:
    n = int(snap.offsets[pos + 1] - snap.offsets[pos])
    name = snap.type_name(pos)
    if name in (
        "dict",
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.Counter",
    ):
        return n // 2
    return n


# Objects whose dicts are namespaces or their own machinery (a frame's globals and locals, a
# function's __globals__, a class's namespace), never data an application accumulates.
NAMESPACE_OWNERS = frozenset(
    {
        "frame",
        "function",
        "module",
        "type",
        "code",
        "method",
        "cell",
        "builtin_function_or_method",
        "generator",
        "coroutine",
        "async_generator",
    }
)


def is_data_dict(snap: Snapshot, parent: int, label: str) -> bool:
    """Is a dict that an object (not a container) holds data rather than a namespace? An attribute's
    value (``.loggerDict``) is; so is what a C object holds unnamed (an ``lru_cache``'s cache); an
    object's ``__dict__``, and any dict of a frame, function, module or class, is not."""
    if label.startswith("."):
        return True
    return label == "(referent)" and snap.type_name(parent) not in NAMESPACE_OWNERS


def holder_positions(
    heap: Heap, limit: int = 10, min_bytes: int = 1024, label: Labeler | None = None
) -> list[int]:
    """The containers retaining the most memory, outermost first: a container dominated by one
    already chosen is its content, not another holder. Attribute dicts (a module's, a class's,
    an instance's __dict__) are not holders: what they hold is named by attribute instead. With
    ``label``, a dict under an object is an attribute dict only if the object holds it as its
    ``__dict__`` (on 3.11+ an instance holds its attributes' values directly, and a C object's
    dict, like an lru_cache's, is its data)."""
    snap = heap.snap
    cont_types = np.array([name in CONTAINERS for name in snap.types] or [False], bool)
    cand = np.nonzero(cont_types[snap.type_of] & (heap.retained >= min_bytes) & heap.reachable)[0]
    cand = cand[np.argsort(-heap.retained[cand], kind="stable")]
    under_object = [
        (int(heap.parent[p]), p)
        for p in cand[: max(limit * 20, 1000)].tolist()
        if snap.type_name(p) == "dict"
        and p not in heap.root_name
        and heap.parent[p] >= 0
        and snap.type_name(int(heap.parent[p])) not in CONTAINERS | {"cell"}
    ]
    # dicts under objects whose label was asked and is not "__dict__": data, not a namespace
    data_dicts = (
        {
            p
            for (par, p), lab in zip(under_object, label(under_object))
            if is_data_dict(snap, par, lab)
        }
        if label is not None and under_object
        else set()
    )
    chosen: list[int] = []
    chosen_set: set[int] = set()
    for p in cand.tolist():
        if len(chosen) >= limit:
            break
        name = snap.type_name(p)
        par = int(heap.parent[p])
        if (
            name == "dict"
            and p not in heap.root_name
            and par >= 0
            and snap.type_name(par) not in CONTAINERS | {"cell"}
            and p not in data_dicts
        ):
            continue  # an attribute dict
        if heap.dominated_by(p, chosen_set):
            continue
        chosen.append(p)
        chosen_set.add(p)
    return chosen


def describe(heap: Heap, path: list[int], labels: list[str]) -> str:
    """``module __main__ .global_data_store`` from positions and their edge labels."""
    parts = [heap.root_name.get(path[0], heap.snap.type_name(path[0]))]
    k = 0
    while k < len(labels):
        lab = labels[k]
        nxt = labels[k + 1] if k + 1 < len(labels) else None
        if lab == "__dict__" and nxt is not None and nxt.startswith("['") and nxt.endswith("']"):
            parts.append("." + nxt[2:-2])
            k += 2
            continue
        if lab in ("(referent)", "(item)") and k + 1 < len(path):
            # A reference the walker cannot name (a C type's slot): say what it leads to, so three
            # in a row read as a route, not as "(referent) (referent) (referent)".
            lab = "-> " + heap.snap.type_name(path[k + 1])
        parts.append(lab)
        k += 1
    return " ".join(parts)


def edges_of(paths: list[list[int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in paths:
        out.extend(zip(p, p[1:]))
    return out


# positions -> items of each builtin container as len() says (-1 for anything else)
Counter_ = Callable[[Sequence[int]], list[int]]


def holders(
    heap: Heap,
    label: Labeler,
    limit: int = 10,
    min_bytes: int = 1024,
    count: Counter_ | None = None,
) -> list[Holder]:
    """``count``: the walker's len() of each holder; without it, items are read off the references
    (a dict whose keys are all str references only its values: its count is then halved)."""
    picks = holder_positions(heap, limit, min_bytes, label)
    paths = [heap.path(p) for p in picks]
    flat = label(edges_of(paths))
    counted = count(picks) if count is not None and picks else [-1] * len(picks)
    out = []
    k = 0
    for p, path, n_items in zip(picks, paths, counted):
        labs = flat[k : k + len(path) - 1]
        k += len(path) - 1
        items = n_items if n_items >= 0 else _items(heap.snap, p)
        out.append(
            Holder(
                p, describe(heap, path, labs), heap.snap.type_name(p), items, int(heap.retained[p])
            )
        )
    return out


def retained_by_type(heap: Heap) -> dict[str, int]:
    """Sum of retained bytes of the outermost objects of each type (nested same-type objects not
    counted twice): what would be freed if every object of the type went away."""
    snap = heap.snap
    out: dict[str, int] = {}
    sums = np.zeros(len(snap.types), np.int64)
    for a in range(0, snap.n, graph.BLOCK):  # in blocks: the temporaries of a whole column
        b = min(snap.n, a + graph.BLOCK)
        dom, t = heap.idom[a:b], snap.type_of[a:b]
        top = heap.reachable[a:b].copy()
        ok = np.flatnonzero(dom >= 0)
        top[ok[t[ok] == snap.type_of[dom[ok]]]] = False
        np.add.at(sums, t[top], heap.retained[a:b][top])
    for i, name in enumerate(snap.types):
        if sums[i]:
            out[name] = out.get(name, 0) + int(sums[i])
    return out
