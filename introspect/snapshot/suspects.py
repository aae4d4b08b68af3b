"""Leak suspects: the answer first, as Eclipse MAT's "Leak Suspects" gives it, over our snapshot.

A suspect is a holder that retains at least 10 % of the Python heap (and a few MiB), or one that
grew since the previous look. From it we walk down the dominator tree while the biggest child
keeps at least 70 % of its parent's retained bytes; where that stops, at a collection, is the
**accumulation point**: the list, dict or set whose items are the memory. Namespaces (a module,
a class, an instance and their ``__dict__``) are never accumulation points: where one of them
splits its memory between several big children, each big child is followed on its own.

What accumulates is summarised from the snapshot without any value: the items' commonest type
and, for a sample of them, what each attribute or key holds (``dict {'id': int, 'data': bytes
(1,024 B)}``), so a reader knows which line of their code builds it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from introspect.snapshot.heap import (
    CONTAINERS,
    Counter_,
    Heap,
    Labeler,
    Namer,
    _items,
    describe,
    is_data_dict,
)
from introspect.snapshot.views import Holder, Look, match_key

SHARE = 0.10  # a holder retaining this share of the Python heap is a suspect (MAT: 10 %)
KEEP = 0.70  # walk down while the biggest child keeps this share of its parent (MAT: 70 %)
MIN_BYTES = 4 << 20  # ... and at least this much: a small heap has no size suspect
MIN_GROWTH = 64 << 10  # a holder that grew by this much since the previous look is a suspect
SAMPLE = 20  # items looked at to tell the shape
MAX_SUSPECTS = 5
VARIABLE = frozenset({"str", "bytes", "bytearray", "list", "dict", "tuple", "set"})


@dataclass
class DominatorChildren:
    """The dominator tree's children of every object, as CSR arrays."""

    starts: np.ndarray
    kids: np.ndarray

    @staticmethod
    def of(heap: Heap) -> DominatorChildren:
        n = heap.snap.n
        kids = np.nonzero(heap.idom >= 0)[0].astype(np.int32)  # int32: lean on big heaps
        parents = heap.idom[kids]
        kids = kids[np.argsort(parents, kind="stable")]
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(parents, minlength=n), out=starts[1:])
        return DominatorChildren(starts, kids)

    def __call__(self, pos: int) -> np.ndarray:
        return self.kids[self.starts[pos] : self.starts[pos + 1]]


def _is_collection(heap: Heap, pos: int, label: Labeler) -> bool:
    """A container whose items are the data; not a namespace (an object's ``__dict__``, known by
    the label of the edge that reaches it: on 3.11+ an instance may hold its attributes without
    a dict, so a dict under an instance can be an attribute's value, like a logging.Manager's
    ``loggerDict``)."""
    snap = heap.snap
    name = snap.type_name(pos)
    if name not in CONTAINERS:
        return False
    if name == "dict" and pos not in heap.root_name:
        par = int(heap.parent[pos])
        if par >= 0 and snap.type_name(par) not in CONTAINERS | {"cell"}:
            return is_data_dict(snap, par, label([(par, pos)])[0])
    return True


def accumulation_points(
    heap: Heap, children: DominatorChildren, pos: int, floor: int, label: Labeler, depth: int = 0
) -> list[int]:
    """Where the memory ``pos`` retains accumulates (see the module's docstring)."""
    retained = heap.retained
    while True:
        ch = children(pos)
        if ch.size == 0:
            return [pos]
        best = int(ch[np.argmax(retained[ch])])
        if retained[best] >= KEEP * retained[pos]:
            pos = best
            continue
        if _is_collection(heap, pos, label) or depth > 8:
            return [pos]
        big = ch[retained[ch] >= floor]
        if big.size == 0:
            return [pos]
        out: list[int] = []
        for b in big[np.argsort(-retained[big], kind="stable")].tolist():
            out += accumulation_points(heap, children, int(b), floor, label, depth + 1)
        return out


def _key(label: str) -> str:
    return label[1:-1] if label.startswith("[") and label.endswith("]") else label


def shape(heap: Heap, pos: int, label: Labeler) -> dict[str, Any]:
    """What the collection at ``pos`` holds: its items' commonest type, how many, and for a sample
    of them what each key or attribute holds (type, and average size where sizes vary)."""
    snap = heap.snap
    items = snap.referents(pos)
    container = snap.type_name(pos)
    if items.size == 0:
        return {"text": f"empty {container}", "items": 0, "item_type": None, "fields": []}
    names = [snap.type_name(int(q)) for q in items.tolist()]
    by_bytes: Counter[str] = Counter()
    count: Counter[str] = Counter(names)
    for q, nm in zip(items.tolist(), names):
        by_bytes[nm] += int(heap.retained[q]) or int(snap.size[q])
    item_type = by_bytes.most_common(1)[0][0]
    sample = [int(q) for q, nm in zip(items.tolist(), names) if nm == item_type][:SAMPLE]
    # One level of each sampled item's references, through an instance's __dict__ when it has one.
    edges = [(q, int(r)) for q in sample for r in snap.referents(q).tolist()]
    labs = label(edges) if edges else []
    fields: dict[str, Counter[str]] = {}
    sizes: dict[str, list[int]] = {}
    inner: list[tuple[int, int]] = []
    for (_q, r), lab in zip(edges, labs):
        if lab == "__dict__" and snap.type_name(r) == "dict":
            inner += [(r, int(x)) for x in snap.referents(r).tolist()]
            continue
        if not lab or lab.startswith("(") or lab in ("ob_type", "__class__"):
            continue
        fields.setdefault(lab, Counter())[snap.type_name(r)] += 1
        sizes.setdefault(lab, []).append(int(snap.size[r]))
    if inner:
        for (_q, r), lab in zip(inner, label(inner)):
            if not lab or lab.startswith("("):
                continue
            name = "." + _key(lab).strip("'\"")
            fields.setdefault(name, Counter())[snap.type_name(r)] += 1
            sizes.setdefault(name, []).append(int(snap.size[r]))
    rows: list[dict[str, Any]] = []
    for lab, types in sorted(fields.items(), key=lambda kv: -sum(kv[1].values()))[:6]:
        t = types.most_common(1)[0][0]
        avg = sum(sizes[lab]) / len(sizes[lab])
        rows.append(
            {"field": _key(lab) if lab.startswith("[") else lab, "type": t, "avg_bytes": round(avg)}
        )
    spelled = ", ".join(
        f"{r['field']}: {r['type']}"
        + (f" ({_size(r['avg_bytes'])})" if r["type"] in VARIABLE else "")
        for r in rows
    )
    n_items = count[item_type]
    text = f"{container} of {n_items:,} × {item_type}" + (f" {{{spelled}}}" if spelled else "")
    others = len(names) - n_items
    if others > 0 and container not in ("dict",):
        text += f" (and {others:,} other items)"
    return {"text": text, "items": n_items, "item_type": item_type, "fields": rows}


def _size(n: float) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.1f} MiB"
    if n >= 10 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n:,.0f} B"


def _growth(
    path: str, retained: int, items: int, previous: Look | None, dt: float, holder_limit: int
) -> dict[str, Any] | None:
    """The change of the holder at ``path`` since ``previous``. A holder the previous look did not
    list was smaller then than every holder it listed (or under 1 KiB when it listed fewer than
    ``holder_limit``): its growth is a lower bound and says so (``new``)."""
    if previous is None:
        return None
    per_min = 60.0 / dt if dt > 0 else 0.0
    # a thread's frame is matched whatever line it was running at each look
    before = {match_key(p): v for p, v in previous.holders.items()}
    if match_key(path) in before:
        before_items, before_bytes = before[match_key(path)]
        d_bytes, d_items = retained - before_bytes, items - before_items
        return {"retained_bytes": d_bytes, "items": d_items, "seconds": round(dt, 3), "new": False,
                "bytes_per_minute": round(d_bytes * per_min),
                "items_per_minute": round(d_items * per_min, 1)}
    if path.startswith(("held from C", "immortal")):
        return None  # such paths name no single holder (two can share one): nothing to compare
    listed = [b for _, b in previous.holders.values()]
    under = min(listed) if len(listed) >= holder_limit else 1024
    d_bytes = max(0, retained - under)
    return {"retained_bytes": d_bytes, "items": None, "seconds": round(dt, 3), "new": True,
            "under_bytes": under, "bytes_per_minute": round(d_bytes * per_min),
            "items_per_minute": None}


def suspects(heap: Heap, label: Labeler, holders: Sequence[Holder] = (),
             previous: Look | None = None, now: float | None = None, holder_limit: int = 50,
             count: Counter_ | None = None, preview: Namer | None = None) -> list[dict[str, Any]]:
    """The leak suspects, most important first (growth first, then retained bytes); [] when nothing
    qualifies. ``holders``: this look's named holders, compared with ``previous`` (the look before,
    which listed up to ``holder_limit`` holders) by path. ``preview`` (``--values``): the walker's
    text of builtin values, made in the frozen copy: the accumulation point gets a few items."""
    snap = heap.snap
    total = int(heap.snap.size[heap.reachable].sum()) or 1
    floor = max(int(SHARE * total), MIN_BYTES)
    dt = (now - previous.time) if previous is not None and now is not None else 0.0
    children = DominatorChildren.of(heap)
    points: dict[int, str] = {}  # position -> why
    tops = np.nonzero(heap.reachable & (heap.idom < 0) & (heap.retained >= floor))[0]
    for t in tops[np.argsort(-heap.retained[tops], kind="stable")].tolist():
        for p in accumulation_points(heap, children, int(t), floor, label):
            if _is_collection(heap, p, label) and heap.retained[p] >= floor:
                points.setdefault(p, f"retains ≥ {SHARE:.0%} of the Python heap")
    if previous is not None:
        for h in holders:
            g = _growth(h.path, h.retained_bytes, h.items, previous, dt, holder_limit)
            if g is None or g["retained_bytes"] < MIN_GROWTH:
                continue
            for p in accumulation_points(
                heap, children, h.pos, max(MIN_GROWTH, h.retained_bytes // 10), label
            ):
                if _is_collection(heap, p, label):
                    points.setdefault(p, "grew")
    if not points:
        return []
    chosen = list(points)
    counted = count(chosen) if count is not None else [-1] * len(chosen)
    paths = [heap.path(p) for p in chosen]
    flat: list[str] = label([e for path in paths for e in zip(path, path[1:])])
    out: list[dict[str, Any]] = []
    k = 0
    for p, path, n_items in zip(chosen, paths, counted):
        labs = flat[k : k + len(path) - 1]
        k += len(path) - 1
        text = describe(heap, path, labs)
        items = n_items if n_items >= 0 else _items(snap, p)
        growth = _growth(text, int(heap.retained[p]), items, previous, dt, holder_limit)
        if points[p] == "grew" and (growth is None or growth["retained_bytes"] < MIN_GROWTH):
            continue
        out.append(
            {
                "_pos": p,
                "path": text,
                "type": snap.type_name(p),
                "items": items,
                "retained_bytes": int(heap.retained[p]),
                "share": round(int(heap.retained[p]) / total, 4),
                "why": points[p],
                "growth": growth,
                "accumulation_point": {"path": text, "type": snap.type_name(p),
                                       "shape": shape(heap, p, label)},
            }
        )
    out.sort(key=lambda s: (-(s["growth"] or {}).get("retained_bytes", 0), -s["retained_bytes"]))
    out = out[:MAX_SUSPECTS]
    if preview is not None and out:
        texts = preview([s["_pos"] for s in out])
        for s, text in zip(out, texts):
            s["accumulation_point"]["values"] = text
    for s in out:
        s.pop("_pos", None)
    return out


def suspect_lines(found: list[dict[str, Any]]) -> list[str]:
    """The suspects as a person reads them, first thing on the screen."""
    if not found:
        return []
    lines = ["leak suspects:"]
    for i, s in enumerate(found, 1):
        g = s["growth"]
        grew = ""
        if g is not None and g["new"]:
            grew = (
                f"; new since the look {g['seconds']:.1f} s before "
                f"(under {_size(g['under_bytes'])} then)"
            )
        elif g is not None and g["retained_bytes"]:
            grew = (
                f"; {g['items']:+,} items, {'+' if g['retained_bytes'] >= 0 else '-'}"
                f"{_size(abs(g['retained_bytes']))} in {g['seconds']:.1f} s"
            )
            if g["seconds"] > 0:
                grew += (
                    f" ({'+' if g['bytes_per_minute'] >= 0 else '-'}"
                    f"{_size(abs(g['bytes_per_minute']))}/min)"
                )
        lines.append(
            f"  {i}. {s['path']} ({s['type']}: {s['items']:,} items) retains "
            f"{_size(s['retained_bytes'])}, {s['share']:.0%} of the Python heap{grew}"
        )
        lines.append(f"     accumulates: {s['accumulation_point']['shape']['text']}")
        if s["accumulation_point"].get("values"):
            lines.append(f"     values: {s['accumulation_point']['values']}")
    return lines


def waste(
    heap: Heap, label: Labeler, duplicates: list[list[Any]], preview: Namer | None = None
) -> dict[str, Any]:
    """Duplicate str/bytes values (what one copy each would save, and where the copies are held)
    and containers holding nothing (MAT's "group by value" and "collection fill ratio")."""
    snap = heap.snap
    rows: list[dict[str, Any]] = []
    samples = [int(q) for d in duplicates for q in d[4] if 0 <= int(q) < snap.n]
    holders = {q: int(heap.parent[q]) for q in samples}
    wanted = sorted({h for h in holders.values() if h >= 0})
    paths = {h: heap.path(h) for h in wanted}
    flat = label([e for h in wanted for e in zip(paths[h], paths[h][1:])])
    named: dict[int, str] = {}
    k = 0
    for h in wanted:
        n = len(paths[h]) - 1
        named[h] = describe(heap, paths[h], flat[k : k + n]) + f" ({snap.type_name(h)})"
        k += n
    texts = (
        preview([int(d[4][0]) for d in duplicates]) if preview is not None and duplicates else []
    )
    for i, d in enumerate(duplicates):
        kind, length, copies, one, where = (str(d[0]), int(d[1]), int(d[2]), int(d[3]),
                                            [int(q) for q in d[4]])
        held = Counter(
            named.get(holders.get(q, -1), "not reachable from a root") for q in where if q < snap.n
        )
        row: dict[str, Any] = {"type": kind, "length": length, "copies": copies, "bytes_each": one,
                               "wasted_bytes": (copies - 1) * one,
                               "held_by": [p for p, _ in held.most_common(3)]}
        if texts:
            row["preview"] = texts[i]
        rows.append(row)
    empty: list[dict[str, Any]] = []
    counts = np.diff(snap.offsets)
    for name in ("dict", "list", "set"):
        tids = [i for i, t in enumerate(snap.types) if t == name]
        mask = np.isin(snap.type_of, tids) & (counts == 0) & heap.reachable
        if mask.any():
            empty.append(
                {"type": name, "count": int(mask.sum()), "bytes": int(snap.size[mask].sum())}
            )
    return {"duplicates": rows, "empty": empty}


def waste_lines(w: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if w["duplicates"]:
        total = sum(r["wasted_bytes"] for r in w["duplicates"])
        lines.append(f"duplicate values (one copy each would save {_size(total)}):")
        for r in w["duplicates"][:15]:
            held = "; ".join(r["held_by"]) or "?"
            prev = f" {r['preview']}" if r.get("preview") else ""
            lines.append(
                f"  {r['copies']:,} × {r['type']} of {r['length']:,}{prev}: "
                f"{_size(r['wasted_bytes'])} wasted, held by {held}"
            )
    else:
        lines.append("no duplicate str/bytes values of 8 or more characters")
    for e in w["empty"]:
        lines.append(f"empty {e['type']}: {e['count']:,} objects, {_size(e['bytes'])}")
    return lines
