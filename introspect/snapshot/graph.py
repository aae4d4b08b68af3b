"""Graph algorithms over a snapshot's CSR arrays (``offsets``, ``refs``), in numpy blocks.

Lean for big heaps (issue 23): no per-object Python objects, int32 arrays, every loop that would
copy a whole column (an int32 index becomes an int64 one) runs in blocks of ``BLOCK``, and what
a step needs only for itself is freed before the next. igraph (Lengauer-Tarjan, in C) computes
dominators only for what is left once the hanging trees are peeled off (``peel``).

numpy 2.x's ``np.unique`` takes a hash path that measured about 80x slower than a sort on int32
positions (0.64 s against 7 ms for 750k): ``unique`` and ``unique_first`` sort.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from introspect.snapshot import native

BLOCK = 1 << 18  # objects (or references) per step of the loops that would copy a column: their
# temporaries, up to ~30 bytes an entry, stay under 8 MiB
_MINUS_ONE = np.int32(-1)  # ufunc.at with a numpy scalar of the array's dtype: its fast path
_ONE = np.int32(1)


def unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``a``."""
    s = np.sort(a)
    if s.shape[0] < 2:
        return s
    keep = np.empty(s.shape[0], bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def unique_first(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of ``a`` and the index of each one's first occurrence
    (``np.unique(a, return_index=True)``)."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    keep = np.empty(s.shape[0], bool)
    if s.shape[0]:
        keep[0] = True
        np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep], order[keep]


def igraph_module() -> Any:
    """python-igraph, imported only when a graph is analysed. When matplotlib is installed igraph
    imports matplotlib.pyplot at its own import, for drawing we never use: 0.6-0.7 s of every
    forked command (measured with cProfile on `growth`, 1.1 s in all). matplotlib is hidden for
    that import only (igraph then keeps a stand-in for its drawing); `monitor` and `report`
    import it themselves when they draw."""
    if "igraph" in sys.modules:
        return sys.modules["igraph"]
    hide = "matplotlib" not in sys.modules
    if hide:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # `import matplotlib` fails
    try:
        import igraph
    finally:
        if hide and "matplotlib" in sys.modules and sys.modules["matplotlib"] is None:
            del sys.modules["matplotlib"]
    return igraph


def bfs(
    offsets: np.ndarray,
    refs: np.ndarray,
    n: int,
    sources: np.ndarray,
    order: bool = True,
    parents: bool = True,
    seen: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Breadth-first from ``sources`` over the CSR edges, one numpy step per layer: (order of the
    vertices reached, int32; bounds of each layer in it; BFS parent, int32: -1 for a source, -2
    where not reached). A child's parent is its first referrer in the layer before (shortest).
    ``order=False``: no order (an empty array, bounds []); ``parents=False``: a bool per object
    (reached or not) in place of the parents, which are not worked out. ``seen``: the parents of
    an earlier search, continued in place: what it reached is neither a source nor entered again.
    """
    if native.lib() is not None and (seen is None or seen.flags.c_contiguous):
        return native.bfs(offsets, refs, n, sources, order, parents, seen)  # the same, in C
    if seen is None:
        seen = np.full(n, -2, np.int32) if parents else np.zeros(n, bool)
    frontier = unique(np.asarray(sources).astype(np.int32))
    frontier = frontier[seen[frontier] == -2] if parents else frontier[~seen[frontier]]
    seen[frontier] = -1 if parents else True
    # the order is written in place, layer by layer (no list of layers joined at the end)
    out = np.empty(n if order else 0, np.int32)
    out[: frontier.shape[0] if order else 0] = frontier[: out.shape[0]]
    bounds = [0, int(frontier.shape[0])] if order else []
    while frontier.shape[0]:
        found = []
        for a in range(0, frontier.shape[0], BLOCK):  # in slices: a wide layer's temporaries
            part = frontier[a : a + BLOCK]
            got = []  # the slice's new referents, each marked (with its first referrer) at once
            for who, kids in _referents(offsets, refs, part):
                if parents:
                    fresh = seen[kids] == -2
                    kids, first = unique_first(kids[fresh])
                    seen[kids] = part[who[fresh][first]]
                else:
                    kids = unique(kids[~seen[kids]])
                    seen[kids] = True
                got.append(kids)
            if not got:
                continue
            kids = np.concatenate(got) if len(got) != 1 else got[0]
            if len(got) > 1:
                kids.sort()  # the slice's referents in order, whatever the blocks
            del got
            if kids.shape[0]:
                found.append(kids)
        if not found:
            break
        frontier = np.concatenate(found) if len(found) > 1 else found[0]
        del found
        if order:
            out[bounds[-1] : bounds[-1] + frontier.shape[0]] = frontier
            bounds.append(bounds[-1] + int(frontier.shape[0]))
    if order:
        out.resize(bounds[-1], refcheck=False)  # realloc: the unreached tail given back
    return out, bounds, seen


def _referents(
    offsets: np.ndarray, refs: np.ndarray, part: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The references of the objects ``part``, in order, BLOCK references at a time: (index in
    ``part`` of each one's referrer, int32; the referents). One object may hold millions (a
    list of every record): its references are cut into blocks too."""
    starts = offsets[part].astype(np.int64)
    cnt = offsets[part + 1] - starts
    ends = np.cumsum(cnt)
    total = int(ends[-1]) if ends.shape[0] else 0
    if total <= BLOCK:
        if total:
            first = ends - cnt
            who = np.repeat(np.arange(part.shape[0], dtype=np.int32), cnt)
            yield who, refs[np.arange(total, dtype=np.int64) + (starts - first)[who]]
        return
    first = ends - cnt
    for e in range(0, total, BLOCK):
        j = np.arange(e, min(total, e + BLOCK), dtype=np.int64)
        who = np.searchsorted(ends, j, side="right").astype(np.int32)
        j += (starts - first)[who]
        yield who, refs[j]


def edge_blocks(
    offsets: np.ndarray, refs: np.ndarray, n: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(referrer, referent) int32 arrays of every reference, a block of objects at a time: the
    referrer column is never whole (it would be 4 bytes per reference)."""
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        lo, hi = int(offsets[a]), int(offsets[b])
        if hi == lo:
            continue
        src = np.repeat(np.arange(a, b, dtype=np.int32), np.diff(offsets[a : b + 1]))
        yield src, refs[lo:hi]


def indegree(refs: np.ndarray, n: int) -> np.ndarray:
    """References to each object, int32 (counted in blocks: ``np.bincount`` would make an int64
    copy of the references and an int64 count)."""
    out = np.zeros(n, np.int32)
    for a in range(0, refs.shape[0], BLOCK):
        np.add.at(out, refs[a : a + BLOCK], _ONE)
    return out


def peel(
    offsets: np.ndarray,
    refs: np.ndarray,
    n: int,
    reachable: np.ndarray,
    roots: np.ndarray,
    indeg: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Hanging trees off the graph: an object with one reference to it and none left from it
    dominates nothing, and its one referrer is its immediate dominator. Peeled in rounds (a list
    of dicts of ints goes in three), what is left is the graph whose dominators need computing.
    ``indeg`` is changed (references from unreachable objects and the roots' virtual one).
    Returns (left: bool per object, pred: the one referrer, -1 for a root's virtual one)."""
    pred = np.full(n, -1, np.int32)
    for s, dst in edge_blocks(offsets, refs, n):
        live = reachable[s]
        if live.all():
            pred[dst] = s
        else:  # ``indeg`` counted every edge: those from unreachable objects are out of the graph
            np.add.at(indeg, dst[~live], _MINUS_ONE)
            pred[dst[live]] = s[live]
    indeg[roots] += 1
    pred[roots] = -1  # a root's one reference: the virtual root's
    outdeg = np.diff(offsets).astype(np.int32, copy=False)
    left = reachable.copy()
    leaf = np.flatnonzero(left & (indeg == 1) & (outdeg == 0))
    for _ in range(256):  # a long chain peels one link a round: the rest stays in the graph
        if not leaf.shape[0]:
            break
        left[leaf] = False
        up = pred[leaf]
        up = up[up >= 0]
        np.add.at(outdeg, up, _MINUS_ONE)
        up = unique(up)
        leaf = up[left[up] & (indeg[up] == 1) & (outdeg[up] == 0)]
    return left, pred


def dominators(
    offsets: np.ndarray,
    refs: np.ndarray,
    n: int,
    left: np.ndarray,
    roots: np.ndarray,
    idom: np.ndarray,
) -> None:
    """Immediate dominators of the objects still ``left`` after peeling, written into ``idom``:
    igraph over their edges only, renumbered 0..k-1, the virtual root k (-1 where it reaches
    none)."""
    keep = np.flatnonzero(left).astype(np.int32)
    k = int(keep.shape[0])
    if not k:
        return
    new = np.full(n, -1, np.int32)
    new[keep] = np.arange(k, dtype=np.int32)
    parts = []
    for s, dst in edge_blocks(offsets, refs, n):
        m = left[s] & left[dst]
        if m.any():
            parts.append(np.column_stack([new[s[m]], new[dst[m]]]))
    edges = np.concatenate(parts) if parts else np.zeros((0, 2), np.int32)
    del parts
    left_roots = new[roots[left[roots]]]
    del new
    if k <= SMALL_DOMINATORS and edges.shape[0] <= 8 * SMALL_DOMINATORS:
        sub = small_dominators(k, edges, left_roots)[:k]
        ok = (sub >= 0) & (sub < k)
        idom[keep] = np.where(ok, keep[np.clip(sub, 0, max(k - 1, 0))], -1)
        return
    g = igraph_module().Graph(n=k + 1, directed=True)
    g.add_edges(edges)
    del edges
    g.add_edges(np.column_stack([np.full(left_roots.shape[0], k, np.int32), left_roots]))
    # igraph marks vertices the root does not reach with NaN (a float among the ints).
    sub = np.nan_to_num(np.asarray(g.dominator(k, mode="out"), dtype=np.float64), nan=-1)
    del g
    sub = sub[:k].astype(np.int64)
    ok = (sub >= 0) & (sub < k)
    idom[keep] = np.where(ok, keep[np.clip(sub, 0, max(k - 1, 0))], -1)


# What the peeling leaves is usually small (22,486 of 1M objects on the bench's heap: the
# interpreter's own graph); up to this many vertices its dominators are computed here, without
# importing igraph (39 MiB of the CLI's RSS at its import, 0.3 s; 22k vertices: 0.14 s here).
SMALL_DOMINATORS = 50_000  # 50k vertices: about 0.5 s here, igraph 0.15 s plus its import


def small_dominators(k: int, edges: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """Immediate dominators (int64, k + 1: -1 where the root does not reach; the root, vertex k,
    its own) of vertices 0..k-1 plus a virtual root k with an edge to each of ``roots``, from
    ``edges`` ((m, 2) source, target): Cooper, Harvey and Kennedy's iteration over the reverse
    postorder ("A Simple, Fast Dominance Algorithm", 2001), in plain Python lists."""
    src = np.concatenate([edges[:, 0].astype(np.int64), np.full(roots.shape[0], k, np.int64)])
    dst = np.concatenate([edges[:, 1].astype(np.int64), roots.astype(np.int64)])
    order = np.argsort(src, kind="stable")
    s_off = np.searchsorted(src[order], np.arange(k + 2)).tolist()
    succ = dst[order].tolist()
    order = np.argsort(dst, kind="stable")
    p_off = np.searchsorted(dst[order], np.arange(k + 2)).tolist()
    pred = src[order].tolist()
    del src, dst, order
    # postorder from the root, iteratively (no recursion limit)
    po = [-1] * (k + 1)
    post: list[int] = []
    seen = [False] * (k + 1)
    seen[k] = True
    stack = [(k, s_off[k])]
    while stack:
        v, i = stack[-1]
        if i < s_off[v + 1]:
            stack[-1] = (v, i + 1)
            w = succ[i]
            if not seen[w]:
                seen[w] = True
                stack.append((w, s_off[w]))
        else:
            stack.pop()
            po[v] = len(post)
            post.append(v)
    idom = [-1] * (k + 1)
    idom[k] = k
    changed = True
    while changed:
        changed = False
        for v in reversed(post[:-1]):  # reverse postorder, the root (last) left out
            new = -1
            for j in range(p_off[v], p_off[v + 1]):
                p = pred[j]
                if idom[p] == -1:
                    continue
                if new == -1:
                    new = p
                    continue
                a, b = p, new
                while a != b:
                    while po[a] < po[b]:
                        a = idom[a]
                    while po[b] < po[a]:
                        b = idom[b]
                new = a
            if new != idom[v]:
                idom[v] = new
                changed = True
    return np.asarray(idom, np.int64)


def fold_retained(
    size: np.ndarray,
    order: np.ndarray,
    bounds: list[int],
    reachable: np.ndarray,
    idom: np.ndarray,
) -> np.ndarray:
    """Retained bytes per object (int64; 0 where unreachable): a dominator is strictly closer to
    the roots than what it dominates, so sizes fold upwards one layer of the BFS from the roots
    (``order``, ``bounds``) at a time, deepest first."""
    retained = size.astype(np.int64)
    retained[~reachable] = 0
    for j in range(len(bounds) - 2, 0, -1):
        for a in range(bounds[j], bounds[j + 1], BLOCK):  # no order within a layer: in blocks
            layer = order[a : min(a + BLOCK, bounds[j + 1])]
            dom = idom[layer]
            ok = dom >= 0
            np.add.at(retained, dom[ok], retained[layer[ok]])
    return retained
