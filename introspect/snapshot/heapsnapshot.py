"""A dump as a Chrome DevTools heap snapshot (``.heapsnapshot``), written as it streams.

The format (DESIGN.md, "Heap snapshot files"): one JSON object whose keys come in the order V8
writes them (snapshot, nodes, edges, trace_function_infos, trace_tree, samples, locations,
strings: loaders stream it); ``nodes`` and ``edges`` are flat integer arrays described by
``snapshot.meta``; names index ``strings``. Node 0 is the synthetic root; its property edges lead to
the dump's roots (modules, thread frames) and to a synthetic "(held from C)" node whose edges lead
to objects with references nobody in the heap accounts for.

Python objects become nodes named by their type (modules ``module NAME``, classes and functions by
their names, never a value); references become property edges with their labels, list and tuple
items element edges. An object's ``__dict__`` items are also its own property edges (``module
__main__ --global_data_store--> list``), as DevTools shows a JS object's properties.

Node ids. The records carry no addresses, so in a plain export an object's id is its path id: a hash
of its first path from a root (labels, not positions, and the names of modules, classes and
functions on it; odd, below 2**31 + 4). The same object reached the same way in two dumps of one
process has the same id, which DevTools' Comparison matches on. DevTools' "Objects allocated between
Snapshot 1 and Snapshot 2" is a range of ids instead (devtools-frontend, HeapSnapshot.ts and
HeapSnapshotView.ts): a snapshot's ``maxJSObjectId`` is its highest odd node id (``maxJsNodeId``:
even ids are V8's native objects), and the filter keeps the nodes of the viewed snapshot with
``previous.maxJSObjectId < id <= this.maxJSObjectId`` (``createNodeIdFilter``), "previous" and
"this" in the order the snapshots were loaded. Path ids are spread over the whole range, so that
filter finds next to nothing between two plain exports. With ``since`` (the command's ``--since
OLD``) ids are given as V8 gives them: an object whose path id is among the earlier dump's (under
the same node name) keeps the id it has in that dump's export; every other object (new since then,
by its path) gets the next odd id above the highest that any export of the line gave
(``Lineage.top``). So the filter between the earlier export and this one selects exactly the objects
that are new, Comparison matches the rest as before, and a chain of dumps works when each export
names all the earlier ones. Ids stay below 2**32 (V8's are 32-bit and DevTools keeps them in 32-bit
arrays): a line of exports that would go past that is refused (a plain error, before anything is
written).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from introspect import errors
from introspect.snapshot.dumpfile import Dump
from introspect.snapshot.records import IMMORTAL

NODE_FIELDS = ["type", "name", "id", "self_size", "edge_count", "trace_node_id", "detachedness"]
NODE_TYPES = [
    "hidden",
    "array",
    "string",
    "object",
    "code",
    "closure",
    "regexp",
    "number",
    "native",
    "synthetic",
    "concatenated string",
    "sliced string",
    "symbol",
    "bigint",
    "object shape",
]
EDGE_FIELDS = ["type", "name_or_index", "to_node"]
EDGE_TYPES = ["context", "element", "property", "internal", "hidden", "shortcut", "weak"]
MAX_NAME = 1000  # DevTools breaks on node names over 1,024 characters
T_OF = {t: i for i, t in enumerate(NODE_TYPES)}
E_OF = {t: i for i, t in enumerate(EDGE_TYPES)}
_INDEX = re.compile(r"\[(\d+)\]")
_KEY = re.compile(r"\['(.*)'\]", re.S)
_NODE_KIND = {
    "str": "string",
    "bytes": "string",
    "bytearray": "string",
    "int": "number",
    "float": "number",
    "bool": "number",
    "complex": "number",
    "list": "array",
    "tuple": "array",
    "code": "code",
    "function": "closure",
    "builtin_function_or_method": "closure",
    "method": "closure",
    "NoneType": "hidden",
    "cell": "hidden",
    "frame": "hidden",
}
EXTRA = 2  # synthetic nodes before the objects: the root, "(held from C)"
FIRST_ID = 5  # node ids of the objects: odd, above the synthetic nodes' (1 and 3)
MAX_ID = 2**32 - 1  # V8's snapshot object ids are 32-bit, and DevTools keeps them so


class _Strings:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.items: list[str] = []

    def __call__(self, s: str) -> int:
        s = s[:MAX_NAME]
        k = self.index.get(s)
        if k is None:
            k = self.index[s] = len(self.items)
            self.items.append(s)
        return k


def _edge(holder_type: str, label: str, strings: _Strings) -> tuple[int, int]:
    """(edge type, name_or_index) of one reference's label."""
    m = _INDEX.fullmatch(label)
    if m and holder_type in ("list", "tuple"):
        return E_OF["element"], int(m.group(1))
    if label.startswith("."):
        return E_OF["property"], strings(label[1:])
    if label in (
        "__dict__",
        "__class__",
        "__bases__",
        "__mro__",
        "cell_contents",
        "__code__",
        "__globals__",
        "__closure__",
        "__defaults__",
        "__kwdefaults__",
    ):
        return E_OF["internal"], strings(label)
    return E_OF["property"], strings(label)


def _paths_ids(dump: Dump, first: np.ndarray, parent: np.ndarray, plabel: np.ndarray) -> np.ndarray:
    """A stable id per object: a 31-bit hash of its first path from a root (odd, unique here).
    A module's, class's or function's name is part of it: classes that only the interpreter
    holds (no path, hundreds of them) would otherwise share one hash and take the next free ones
    in the walk's order, which differs between dumps."""
    snap = dump.snap
    n = snap.n
    ids = np.zeros(n, np.int64)
    seen: set[int] = set()
    root_name = {r.pos: f"{r.kind}:{r.name}" for r in snap.roots}
    named = dump.names
    for p in first.tolist():  # breadth-first order: a parent's id is known before its children's
        what = snap.type_name(p)
        if p in named:
            what = f"{what}:{named[p]}"
        if parent[p] < 0:
            base = zlib.crc32(root_name.get(p, f"held:{what}").encode())
        else:
            lab = dump.labels[int(plabel[p])]
            base = zlib.crc32(f"{ids[parent[p]]}/{lab}/{what}".encode())
        h = (base & 0x3FFFFFFF) * 2 + 1
        while h in seen:
            h = (h + 2) & 0x7FFFFFFF or 1
        seen.add(h)
        ids[p] = h
    return ids


@dataclass
class Lineage:
    """The node ids the exports of a line of dumps gave, as the next export needs them: the last
    dump's objects by path id (``keys``, sorted) with their node ids (``ids``) and the crc32 of
    their node names (``sigs``), and the highest id any export of the line gave (``top``; new
    objects are numbered above it)."""

    keys: np.ndarray
    ids: np.ndarray
    sigs: np.ndarray
    top: int
    dumps: int  # how many dumps the line has


def carry(
    keys: np.ndarray, sigs: np.ndarray, before: Lineage | None
) -> tuple[np.ndarray, int]:
    """Node ids of objects with path ids ``keys`` and name crcs ``sigs`` (one per object, in
    positions' order) exported after the line ``before``: an object whose path id the line's
    last dump has, under the same node name, keeps that dump's node id; the others are numbered
    upwards from above ``before.top``, in positions' order. Also returns how many are new.
    Without a line, the ids are the path ids themselves (a plain export)."""
    if before is None:
        return keys.copy(), int(keys.size)
    ids = np.empty_like(keys)
    if before.keys.size:
        at = np.searchsorted(before.keys, keys)
        at[at >= before.keys.size] = 0
        kept = (before.keys[at] == keys) & (before.sigs[at] == sigs)
    else:
        at, kept = np.zeros(keys.size, np.int64), np.zeros(keys.size, bool)
    ids[kept] = before.ids[at[kept]]
    fresh = int(keys.size - np.count_nonzero(kept))
    if before.top + 2 * fresh > MAX_ID:
        raise errors.UsageError(
            f"the export would number {fresh:,} new objects above {before.top:,}, past 2**32 - 1, "
            "the highest node id DevTools reads",
            help="Export with fewer dumps after --since (the ids grow with each dump of a line).",
        )
    ids[~kept] = before.top + 2 * np.arange(1, fresh + 1, dtype=np.int64)
    return ids, fresh


def lineage(dump: Dump, before: Lineage | None = None) -> Lineage:
    """``before`` extended by ``dump``: the ids its export after ``before`` has (exported without
    ``since`` when ``before`` is None)."""
    keys = path_ids(dump)
    sigs = name_sigs(dump)
    ids, _ = carry(keys, sigs, before)
    order = np.argsort(keys, kind="stable")
    top = max(int(ids.max()) if ids.size else FIRST_ID - 2, before.top if before else 0)
    return Lineage(keys[order], ids[order], sigs[order], top, (before.dumps if before else 0) + 1)


def _node_name(dump: Dump, p: int, name: str) -> str:
    """The name node ``p`` has in the export (``name``: the one DevTools shows for it)."""
    return f"module {name}" if dump.snap.type_name(p) == "module" else name


def name_sigs(dump: Dump) -> np.ndarray:
    """The crc32 of each object's node name (its type's, or its own for modules, classes and
    functions), in positions' order."""
    snap = dump.snap
    by_type = np.array(
        [zlib.crc32(t[:MAX_NAME].encode()) for t in snap.types] or [0], np.int64
    )
    sigs: np.ndarray = by_type[snap.type_of]
    for p, nm in dump.names.items():
        sigs[p] = zlib.crc32(_node_name(dump, p, nm)[:MAX_NAME].encode())
    return sigs


def _held(dump: Dump) -> np.ndarray:
    """Objects referenced by nobody in the heap whose reference count says something holds them."""
    snap = dump.snap
    excess = snap.excess
    n = snap.n
    indeg = np.bincount(snap.refs, minlength=n) if snap.refs.size else np.zeros(n, np.int64)
    held: np.ndarray = np.flatnonzero((excess > 0) & (excess < IMMORTAL) & (indeg == 0))
    return held


def path_ids(dump: Dump) -> np.ndarray:
    """Each object's path id (in positions' order): its node id in a plain export."""
    order, parent, plabel = _walk(dump, _held(dump))
    ids: np.ndarray = _paths_ids(dump, order, parent, plabel) + (FIRST_ID - 1)
    return ids


def _walk(dump: Dump, held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breadth first, level by level, from the roots, then from the objects held from C, then from
    whatever is left: (order, parent, index of the reference from the parent)."""
    snap = dump.snap
    n = snap.n
    parent = np.full(n, -1, np.int64)
    plabel = np.full(n, -1, np.int64)
    seen = np.zeros(n, bool)
    nrefs = np.diff(snap.offsets)
    order: list[np.ndarray] = []

    def from_sources(sources: np.ndarray) -> None:
        _, first = np.unique(sources, return_index=True)
        frontier = sources[np.sort(first)]
        frontier = frontier[~seen[frontier]]
        seen[frontier] = True
        while frontier.size:
            order.append(frontier)
            edges = _ranges(snap.offsets[frontier], nrefs[frontier])
            kids = snap.refs[edges].astype(np.int64)
            fresh = ~seen[kids]
            kids, edges = kids[fresh], edges[fresh]
            _, first = np.unique(kids, return_index=True)
            first = np.sort(first)
            kids, edges = kids[first], edges[first]
            seen[kids] = True
            parent[kids] = np.searchsorted(snap.offsets, edges, side="right") - 1
            plabel[kids] = edges
            frontier = kids

    from_sources(np.array([r.pos for r in snap.roots], np.int64))
    from_sources(held.astype(np.int64))
    indeg = np.bincount(snap.refs, minlength=n) if snap.refs.size else np.zeros(n, np.int64)
    from_sources(np.flatnonzero(~seen & (indeg == 0)))
    for c in np.flatnonzero(~seen).tolist():  # cycles nothing else reaches
        if not seen[c]:
            from_sources(np.array([c], np.int64))
    return (np.concatenate(order) if order else np.zeros(0, np.int64)), parent, plabel


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + k) for each (s, k)."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.int64)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: np.ndarray = np.repeat(starts.astype(np.int64), lengths) + within
    return out


def export(dump: Dump, out: str, since: Lineage | None = None) -> dict[str, Any]:
    """Write ``dump`` to ``out`` as a .heapsnapshot, its node ids given after the line of exports
    ``since`` (None: a plain export, path ids); returns its figures."""
    snap = dump.snap
    n = snap.n
    width = len(NODE_FIELDS)
    strings = _Strings()
    strings("")
    held = _held(dump)
    order, parent, plabel = _walk(dump, held)
    keys = _paths_ids(dump, order, parent, plabel) + (FIRST_ID - 1)
    ids, fresh = carry(keys, name_sigs(dump) if since else keys, since)
    del keys
    # nodes: kind and name by type; modules, classes and functions by their names
    kind_of_type = np.array(
        [T_OF[_NODE_KIND.get(t, "object")] for t in snap.types] or [0], np.int64
    )
    name_of_type = np.array([strings(t) for t in snap.types] or [0], np.int64)
    node_type = kind_of_type[snap.type_of]
    names = name_of_type[snap.type_of]
    for p, nm in dump.names.items():
        names[p] = strings(_node_name(dump, p, nm))
    # edges of the objects, from each label's forms (one per distinct label, not per reference)
    table = dump.labels.table
    codes = dump.labels.codes.astype(np.int64)
    seq_form = [_edge("list", lab, strings) for lab in table] or [(0, 0)]
    other_form = [_edge("object", lab, strings) for lab in table] or [(0, 0)]
    seq_t, seq_n = (np.array(x, np.int64) for x in zip(*seq_form))
    oth_t, oth_n = (np.array(x, np.int64) for x in zip(*other_form))
    nrefs = np.diff(snap.offsets)
    src = np.repeat(np.arange(n, dtype=np.int64), nrefs)
    to = snap.refs.astype(np.int64)
    seq_types = [i for i, t in enumerate(snap.types) if t in ("list", "tuple")]
    is_seq = np.isin(snap.type_of[src], seq_types) if seq_types else np.zeros(src.shape[0], bool)
    etype = np.where(is_seq, seq_t[codes], oth_t[codes])
    ename = np.where(is_seq, seq_n[codes], oth_n[codes])
    # __dict__ hoisting: X --__dict__--> dict D gives X D's string-keyed items as its properties
    dict_code = table.index("__dict__") if "__dict__" in table else -1
    dict_types = [i for i, t in enumerate(snap.types) if t == "dict"]
    xsrc = xt = xn = xto = np.zeros(0, np.int64)
    if dict_code >= 0 and dict_types:
        mask = (codes == dict_code) & np.isin(snap.type_of[to], dict_types)
        holders, first = np.unique(src[mask], return_index=True)
        dicts = to[mask][first]
        edges_of = _ranges(snap.offsets[dicts], nrefs[dicts])
        key_name = np.array(
            [strings(m.group(1)) if (m := _KEY.fullmatch(lab)) else -1 for lab in table] or [-1],
            np.int64,
        )
        xname = key_name[codes[edges_of]]
        keep = xname >= 0
        xsrc = np.repeat(holders, nrefs[dicts])[keep]
        xn = xname[keep]
        xto = to[edges_of][keep]
        xt = np.full(xsrc.shape[0], E_OF["property"], np.int64)
    all_src = np.concatenate([src, xsrc])
    by_node = np.argsort(all_src, kind="stable")
    edge_block = np.column_stack(
        [
            np.concatenate([etype, xt]),
            np.concatenate([ename, xn]),
            (np.concatenate([to, xto]) + EXTRA) * width,
        ]
    )[by_node]
    counts = np.zeros(n + EXTRA, np.int64)
    counts[EXTRA:] = np.bincount(all_src, minlength=n) if all_src.size else 0
    # the synthetic root: the dump's roots by name, and "(held from C)"
    root_edges: list[int] = []
    for r in snap.roots:
        root_edges += [
            E_OF["property"],
            strings(r.name if r.kind == "module" else f"frame {r.name}"),
            (r.pos + EXTRA) * width,
        ]
    root_edges += [E_OF["internal"], strings("(held from C)"), 1 * width]
    held_edges = [x for q in held.tolist() for x in (E_OF["hidden"], q, (q + EXTRA) * width)]
    counts[0], counts[1] = len(root_edges) // 3, len(held_edges) // 3
    total_edges = int(counts.sum())
    meta = {
        "node_fields": NODE_FIELDS,
        "node_types": [NODE_TYPES, "string", "number", "number", "number", "number", "number"],
        "edge_fields": EDGE_FIELDS,
        "edge_types": [EDGE_TYPES, "string_or_number", "node"],
        "trace_function_info_fields": [
            "function_id",
            "name",
            "script_name",
            "script_id",
            "line",
            "column",
        ],
        "trace_node_fields": ["id", "function_info_index", "count", "size", "children"],
        "sample_fields": ["timestamp_us", "last_assigned_id"],
        "location_fields": ["object_index", "script_id", "line", "column"],
    }
    head = {
        "meta": meta,
        "node_count": n + EXTRA,
        "edge_count": total_edges,
        "trace_function_count": 0,
    }
    tmp = out + f".{os.getpid()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write('{"snapshot":' + json.dumps(head, separators=(",", ":")) + ',\n"nodes":[')
            synth = [
                T_OF["synthetic"],
                strings("(Python roots)"),
                1,
                0,
                int(counts[0]),
                0,
                0,
                T_OF["synthetic"],
                strings("(held from C)"),
                3,
                0,
                int(counts[1]),
                0,
                0,
            ]
            f.write(",".join(map(str, synth)))
            zeros = np.zeros(n, np.int64)
            nodes = np.column_stack(
                [node_type, names, ids, snap.size, counts[EXTRA:], zeros, zeros]
            )
            for s0 in range(0, n, 1 << 15):
                f.write("," + ",".join(map(str, nodes[s0 : s0 + (1 << 15)].ravel().tolist())))
            del nodes
            f.write('],\n"edges":[')
            f.write(",".join(map(str, root_edges + held_edges)))
            for s0 in range(0, edge_block.shape[0], 1 << 15):
                f.write("," + ",".join(map(str, edge_block[s0 : s0 + (1 << 15)].ravel().tolist())))
            f.write(
                '],\n"trace_function_infos":[],\n"trace_tree":[],\n"samples":[],\n"locations":[],\n'
                '"strings":['
            )
            f.write(",".join(json.dumps(text) for text in strings.items))
            f.write("]}\n")
    except BaseException:
        os.unlink(tmp)
        raise
    os.rename(tmp, out)
    got: dict[str, Any] = {
        "file": out,
        "bytes": os.path.getsize(out),
        "nodes": n + EXTRA,
        "edges": total_edges,
        "strings": len(strings.items),
        "max_id": max(int(ids.max()) if n else 0, 3),
    }
    if since is not None:
        # what DevTools' "Objects allocated between" selects in this export, after the earlier one
        got["ids"] = {
            "kept": n - fresh,
            "new": fresh,
            "new_from": since.top + 2 if fresh else None,
            "new_to": since.top + 2 * fresh if fresh else None,
        }
    return got
