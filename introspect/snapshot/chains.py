"""Reference chains from a root to the instances of a type (``backrefs``), grouped by shape.

Vectorised for big heaps (issue 23): the up to 200,000 instances looked at are followed up their
BFS parents all at once, one numpy step per level, and each path is known by its root and a hash
of the types along it (two 64-bit hashes and its length); lists of positions are made only for
the few paths shown, and for those that pass through a TRANSIENT holder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from introspect.snapshot import graph
from introspect.snapshot.heap import CONTAINERS, TRANSIENT, Heap, Labeler, Namer, edges_of
from introspect.snapshot.records import Snapshot

MAX_INSTANCES = 200_000
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)


def _collapse(steps: list[dict[str, object]]) -> list[dict[str, object]]:
    """(X --__dict__--> dict --['k']--> Y) becomes (X --.k--> Y); (function --__closure__--> tuple
    --[i]--> cell --cell_contents--> Y) becomes (function --closure var NAME--> Y)."""
    out: list[dict[str, object]] = []
    i = 0
    while i < len(steps):
        st = dict(steps[i])
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        via = nxt.get("via") if nxt else None
        freevars = st.pop("_freevars", None)
        if (
            st.get("via") == "__closure__"
            and i + 2 < len(steps)
            and steps[i + 2]["type"] == "cell"
            and isinstance(via, str)
            and via[1:-1].isdigit()
            and isinstance(freevars, list)
            and int(via[1:-1]) < len(freevars)
        ):
            st["via"] = "closure var " + str(freevars[int(via[1:-1])])
            out.append(st)
            i += 3
            continue
        if (
            st.get("via") == "__dict__"
            and nxt is not None
            and nxt["type"] == "dict"
            and isinstance(via, str)
            and via.startswith("['")
            and via.endswith("']")
        ):
            st["via"] = "." + via[2:-2]
            i += 2
        else:
            i += 1
        out.append(st)
    return out


def _avoid_transient(heap: Heap, paths: dict[int, list[int]]) -> dict[int, list[int]]:
    """Paths through a TRANSIENT holder replaced by the shortest path that avoids every one,
    when there is such a path (else kept: the handle may be all that holds the object)."""
    snap = heap.snap
    tids = np.array([name in TRANSIENT for name in snap.types] or [False], bool)
    passing = [
        p
        for p, path in paths.items()
        if tids[snap.type_of[np.asarray(path[:-1], dtype=np.int64)]].any()
    ]
    if not passing:
        return paths
    igraph = graph.igraph_module()
    n = snap.n
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(snap.offsets))
    keep = ~tids[snap.type_of[src]]
    g = igraph.Graph(n=n + 1, directed=True)
    g.add_edges(np.column_stack([src[keep], snap.refs.astype(np.int64)[keep]]))
    roots = np.fromiter(heap.root_name.keys(), dtype=np.int64, count=len(heap.root_name))
    g.add_edges(np.column_stack([np.full(roots.shape[0], n, np.int64), roots]))
    vids, _layers, parents = g.bfs(n, mode="out")
    par = np.asarray(parents, dtype=np.int64)
    seen = np.zeros(n + 1, bool)
    seen[np.asarray(vids, dtype=np.int64)] = True
    out = dict(paths)
    for p in passing:
        if not seen[p]:
            continue
        path = [p]
        while par[path[-1]] != n:
            path.append(int(par[path[-1]]))
        path.reverse()
        out[p] = path
    return out


def _import_machinery(root: str) -> bool:
    """A root of the import system's own (``module _frozen_importlib``, ``importlib._bootstrap``,
    ``zipimport``...), whose tables reach every module's objects.

    >>> _import_machinery("module _frozen_importlib_external"), _import_machinery("module tasks")
    (True, False)
    """
    name = root[len("module ") :] if root.startswith("module ") else ""
    top = name.split(".", 1)[0]
    return top in (
        "_frozen_importlib",
        "_frozen_importlib_external",
        "importlib",
        "zipimport",
        "_imp",
        "pkgutil",
    )


class _Paths:
    """Paths of many instances at once, each up a parent array (-1 at a root) to its root: per
    instance, two hashes of the types along it, its length, its root, whether it passes through
    a TRANSIENT holder (any step but the instance) and a module (any step but the root)."""

    def __init__(self, snap: Snapshot, parent: np.ndarray, starts: np.ndarray) -> None:
        k = int(starts.shape[0])
        self.h1 = np.zeros(k, np.uint64)
        self.h2 = np.zeros(k, np.uint64)
        self.length = np.zeros(k, np.int32)
        self.root = np.full(k, -1, np.int32)
        self.transient = np.zeros(k, bool)
        self.module = np.zeros(k, bool)
        is_transient = np.array([t in TRANSIENT for t in snap.types] or [False], bool)
        is_module = np.array([t == "module" for t in snap.types] or [False], bool)
        idx = np.arange(k, dtype=np.int64)
        cur = starts.astype(np.int32)
        first = True
        while idx.shape[0]:
            t = snap.type_of[cur]
            code = t.astype(np.uint64) + np.uint64(1)
            self.h1[idx] = self.h1[idx] * _M1 + code
            self.h2[idx] = (self.h2[idx] ^ code) * _M2
            self.length[idx] += 1
            up = parent[cur]
            done = up < 0
            if not first:
                self.transient[idx] |= is_transient[t]
            self.module[idx[~done]] |= is_module[t[~done]]
            self.root[idx[done]] = cur[done]
            idx, cur = idx[~done], up[~done]
            first = False


def _path_key(snap: Snapshot, path: list[int]) -> tuple[int, int, int]:
    """(h1, h2, length) of one path (root first) as _Paths hashes it."""
    h1 = h2 = 0
    mask = (1 << 64) - 1
    for q in reversed(path):
        code = int(snap.type_of[q]) + 1
        h1 = (h1 * int(_M1) + code) & mask
        h2 = ((h2 ^ code) * int(_M2)) & mask
    return h1, h2, len(path)


def _class_names(heap: Heap, reach: np.ndarray, names: Namer) -> dict[int, str]:
    """Names of the class objects on the instances' shortest paths (objects of type ``type``, and
    of a metaclass: a dotted type whose one sample has a name), asked of the walker."""
    snap = heap.snap
    dotted = np.array([t == "type" or "." in t for t in snap.types] or [False], bool)
    found = []
    cur = heap.parent[reach]
    cur = cur[cur >= 0]
    while cur.shape[0]:
        cur = graph.unique(cur)
        found.append(cur[dotted[snap.type_of[cur]]])
        cur = heap.parent[cur]
        cur = cur[cur >= 0]
    on_paths = graph.unique(np.concatenate(found)).tolist() if found else []
    by_type: dict[str, list[int]] = {}
    for q in on_paths:
        by_type.setdefault(snap.type_name(q), []).append(q)
    probe = [qs[0] for tn, qs in by_type.items() if tn != "type"]
    metas = {snap.type_name(q) for q, nm in zip(probe, names(probe) if probe else []) if nm}
    ask = [q for tn, qs in by_type.items() if tn == "type" or tn in metas for q in qs]
    return {q: nm for q, nm in zip(ask, names(ask) if ask else []) if nm}


def _owners(heap: Heap, reach: np.ndarray, names: Namer, modules: dict[str, int]) -> np.ndarray:
    """The owner-root rule, per instance: the module (an index into ``modules``' names, -1 for
    none) that defines the class of its nearest non-builtin holder on its shortest path (for a
    class object: that class's module). A per-request logger is held by ``module logging`` (its
    manager), not by the first module that happens to keep one."""
    snap = heap.snap
    mods = list(modules)
    at = {m: i for i, m in enumerate(mods)}

    def status(full: str) -> int:
        """-1: look further up; -2: no owner; else the owner module's index."""
        if "." not in full or full in CONTAINERS or full in TRANSIENT:
            return -1  # a builtin or standard container (a deque is no more `collections`')
        parts = full.split(".")
        for k in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:k]) in at:
                return at[".".join(parts[:k])]
        return -2

    by_type = np.array([status(t) for t in snap.types] or [-1], np.int32)
    classes = _class_names(heap, reach, names)
    cls_pos = np.array(sorted(classes), np.int32)
    cls_status = np.array([status(classes[q]) for q in cls_pos.tolist()], np.int32)
    owner = np.full(reach.shape[0], -1, np.int32)
    idx = np.arange(reach.shape[0], dtype=np.int64)
    cur = heap.parent[reach]
    keep = cur >= 0
    idx, cur = idx[keep], cur[keep]
    while idx.shape[0]:
        st = by_type[snap.type_of[cur]]
        if cls_pos.shape[0]:
            j = np.minimum(np.searchsorted(cls_pos, cur), cls_pos.shape[0] - 1)
            hit = cls_pos[j] == cur
            st[hit] = cls_status[j[hit]]
        found = st != -1
        owner[idx[found]] = np.where(st[found] >= 0, st[found], -1)
        up = heap.parent[cur]
        more = ~found & (up >= 0)
        idx, cur = idx[more], up[more]
    return owner


def match_type(snap: Snapshot, query: str) -> list[str]:
    """Type names matching a query: exact module.qualname first, else qualname or short name."""
    names = set(snap.types[i] for i in graph.unique(snap.type_of).tolist())
    if query in names:
        return [query]
    return sorted(n for n in names if n.rsplit(".", 1)[-1] == query or n.split(".", 1)[-1] == query)


def chains(
    heap: Heap,
    type_name: str,
    ask: Labeler,
    names: Namer,
    samples: int = 10,
    freevars: Callable[[Sequence[int]], list[list[str]]] | None = None,
) -> tuple[list[dict[str, object]], int, int]:
    """Reference chains from a root to instances of ``type_name``, grouped by shape.

    Every reachable instance is grouped by its root and the types along its shortest path from it
    (see _owners and _avoid_transient for the paths preferred to the shortest); a group's count
    covers all its instances (up to 200,000 looked at). The biggest ``samples`` groups are shown
    (those rooted in modules and frames before those held from C), each with the labels of one
    representative: its first instance in walk order (roots first, then breadth first: "newest
    first" cannot be known from a snapshot).
    Returns (chains, instances found, instances not reachable from any root).
    """
    snap = heap.snap
    tids = [i for i, n in enumerate(snap.types) if n == type_name]
    inst = np.flatnonzero(np.isin(snap.type_of, tids))
    unreachable = int((~heap.reachable[inst]).sum())
    reach = inst[heap.reachable[inst]][:MAX_INSTANCES].astype(np.int32)
    found = int(inst.shape[0])
    del inst
    if not reach.shape[0]:
        return [], found, unreachable
    paths = _Paths(snap, heap.parent, reach)
    source = np.zeros(reach.shape[0], np.int32)  # 0: heap.parent; m + 1: module m's BFS
    explicit: dict[int, list[int]] = {}  # instance index -> its path, where made by hand
    modules = {
        name[len("module ") :]: pos
        for pos, name in heap.root_name.items()
        if name.startswith("module ")
    }
    mods = list(modules)
    if modules and reach.shape[0]:
        owner = _owners(heap, reach, names, modules)
        root_is = np.array([heap.root_name.get(int(r), "") for r in paths.root.tolist()], object)
        for m in graph.unique(owner[owner >= 0]).tolist():
            want = np.flatnonzero((owner == m) & (root_is != "module " + mods[m]))
            if not want.shape[0]:
                continue
            par = graph.bfs(
                snap.offsets, snap.refs, snap.n, np.array([modules[mods[m]]], np.int32), order=False
            )[2]
            want = want[par[reach[want]] != -2]
            par[modules[mods[m]]] = -1
            alt = _Paths(snap, par, reach[want])
            # A path that leaves the module through another module (`._sys --> module sys
            # --.modules-->`) is not the module's own: keep the shortest one.
            ok = ~alt.module
            w = want[ok]
            for name in ("h1", "h2", "length", "root", "transient"):
                getattr(paths, name)[w] = getattr(alt, name)[ok]
            source[w] = m + 1
            for i in np.flatnonzero(paths.transient[w]).tolist():
                explicit[int(w[i])] = _path_up(par, int(reach[w[i]]))
            del par
    passing = [int(i) for i in np.flatnonzero(paths.transient).tolist()]
    if passing:
        mine = {int(reach[i]): explicit.get(i) or heap.path(int(reach[i])) for i in passing}
        better = _avoid_transient(heap, mine)
        for i in passing:
            path = better[int(reach[i])]
            explicit[i] = path
            key = _path_key(snap, path)
            paths.h1[i], paths.h2[i], paths.length[i] = key
            paths.root[i] = path[0]
    # Groups by (root's name, types along the path), in the order of their first instance.
    root_names = [heap.root_name.get(int(r), "") for r in paths.root.tolist()]
    name_ids: dict[str, int] = {}
    rid = np.array([name_ids.setdefault(nm, len(name_ids)) for nm in root_names], np.int64)
    order = np.lexsort((np.arange(reach.shape[0]), paths.h2, paths.h1, paths.length, rid))
    new = np.zeros(order.shape[0], bool)
    new[0] = True
    for col in (rid, paths.length, paths.h1, paths.h2):
        a = col[order]
        new[1:] |= a[1:] != a[:-1]
    starts = np.flatnonzero(new)
    reps = order[starts]  # first instance of each group (lexsort is stable)
    counts = np.diff(np.append(starts, order.shape[0]))
    by_first = np.argsort(reps, kind="stable")
    groups = [(int(counts[g]), int(reps[g])) for g in by_first.tolist()]

    def rank(g: tuple[int, int]) -> tuple[bool, bool, int]:
        # Paths from modules and frames first: a group "held from C" (code objects' name tuples
        # and kind bytes on 3.11+, interned and immortal objects) is rarely what a person looks
        # for; nor is a path rooted in the import machinery (its caches hold every module's).
        root = root_names[g[1]]
        return (root.startswith(("held from C", "immortal")), _import_machinery(root), -g[0])

    ranked = sorted(groups, key=rank)[:samples]
    shown = _paths_of(heap, reach, [i for _, i in ranked], source, explicit, modules)
    return (
        _described(heap, [(c, shown[i]) for c, i in ranked], ask, names, freevars),
        found,
        unreachable,
    )


def _path_up(parent: np.ndarray, pos: int) -> list[int]:
    out = [pos]
    while parent[out[-1]] >= 0:
        out.append(int(parent[out[-1]]))
    out.reverse()
    return out


def _paths_of(
    heap: Heap,
    reach: np.ndarray,
    which: list[int],
    source: np.ndarray,
    explicit: dict[int, list[int]],
    modules: dict[str, int],
) -> dict[int, list[int]]:
    """The paths of the instances ``which`` (indices into ``reach``) as lists, root first."""
    snap = heap.snap
    mods = list(modules)
    out: dict[int, list[int]] = {}
    pending: dict[int, list[int]] = {}
    for i in which:
        if i in explicit:
            out[i] = explicit[i]
        elif source[i] == 0:
            out[i] = heap.path(int(reach[i]))
        else:
            pending.setdefault(int(source[i]) - 1, []).append(i)
    for m, idx in pending.items():
        root = modules[mods[m]]
        par = graph.bfs(snap.offsets, snap.refs, snap.n, np.array([root], np.int32), order=False)[2]
        par[root] = -1
        for i in idx:
            out[i] = _path_up(par, int(reach[i]))
    return out


def _described(
    heap: Heap,
    ranked: list[tuple[int, list[int]]],
    ask: Labeler,
    names: Namer,
    freevars: Callable[[Sequence[int]], list[list[str]]] | None,
) -> list[dict[str, object]]:
    """Each shown group as {root, count, path: [{type, via, name}]}, labels asked at once."""
    snap = heap.snap
    paths = [p for _, p in ranked]
    flat = ask(edges_of(paths))
    want = sorted({q for path in paths for q in path})
    named = dict(zip(want, names(want)))
    funcs = [q for q in want if snap.type_name(q) == "function"]
    free = dict(zip(funcs, freevars(funcs))) if freevars is not None and funcs else {}
    out: list[dict[str, object]] = []
    k = 0
    for count, path in ranked:
        labs = flat[k : k + len(path) - 1]
        k += len(path) - 1
        steps: list[dict[str, object]] = []
        for i, q in enumerate(path):
            step: dict[str, object] = {
                "type": snap.type_name(q),
                "via": labs[i] if i < len(labs) else None,
            }
            if named.get(q):
                step["name"] = named[q]
            if q in free:
                step["_freevars"] = free[q]
            steps.append(step)
        root = heap.root_name.get(path[0], snap.type_name(path[0]))
        out.append({"root": root, "count": count, "path": _collapse(steps)})
    return out
