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
__main__ --global_data_store--> list``), as DevTools shows a JS object's properties. Node ids:
the records carry no addresses, so an object's id is a hash of its first path from a root
(labels, not positions): the same object reached the same way in two dumps of one process has the
same id, which DevTools' Comparison and "objects allocated between snapshots" use.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import deque
from typing import Any

import numpy as np

from introspect.snapshot.dumpfile import Dump
from introspect.snapshot.records import IMMORTAL

NODE_FIELDS = ["type", "name", "id", "self_size", "edge_count", "trace_node_id", "detachedness"]
NODE_TYPES = ["hidden", "array", "string", "object", "code", "closure", "regexp", "number", "native",
              "synthetic", "concatenated string", "sliced string", "symbol", "bigint", "object shape"]
EDGE_FIELDS = ["type", "name_or_index", "to_node"]
EDGE_TYPES = ["context", "element", "property", "internal", "hidden", "shortcut", "weak"]
MAX_NAME = 1000  # DevTools breaks on node names over 1,024 characters
T_OF = {t: i for i, t in enumerate(NODE_TYPES)}
E_OF = {t: i for i, t in enumerate(EDGE_TYPES)}
_INDEX = re.compile(r"\[(\d+)\]")
_KEY = re.compile(r"\['(.*)'\]", re.S)
_NODE_KIND = {"str": "string", "bytes": "string", "bytearray": "string", "int": "number", "float": "number",
              "bool": "number", "complex": "number", "list": "array", "tuple": "array", "code": "code",
              "function": "closure", "builtin_function_or_method": "closure", "method": "closure",
              "NoneType": "hidden", "cell": "hidden", "frame": "hidden"}
EXTRA = 2  # synthetic nodes before the objects: the root, "(held from C)"


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
    if label in ("__dict__", "__class__", "__bases__", "__mro__", "cell_contents", "__code__", "__globals__",
                 "__closure__", "__defaults__", "__kwdefaults__"):
        return E_OF["internal"], strings(label)
    return E_OF["property"], strings(label)


def _paths_ids(dump: Dump, first: np.ndarray, parent: np.ndarray, plabel: np.ndarray) -> np.ndarray:
    """A stable id per object: a 31-bit hash of its first path from a root (odd, unique here)."""
    snap = dump.snap
    n = snap.n
    ids = np.zeros(n, np.int64)
    seen: set[int] = set()
    root_name = {r.pos: f"{r.kind}:{r.name}" for r in snap.roots}
    for p in first.tolist():  # breadth-first order: a parent's id is known before its children's
        if parent[p] < 0:
            base = zlib.crc32(root_name.get(p, f"held:{snap.type_name(p)}").encode())
        else:
            lab = dump.labels[int(plabel[p])]
            base = zlib.crc32(f"{ids[parent[p]]}/{lab}/{snap.type_name(p)}".encode())
        h = (base & 0x3FFFFFFF) * 2 + 1
        while h in seen:
            h = (h + 2) & 0x7FFFFFFF or 1
        seen.add(h)
        ids[p] = h
    return ids


def _walk(dump: Dump, held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breadth first from the roots, then from the objects held from C: (order, parent, label)."""
    snap = dump.snap
    n = snap.n
    parent = np.full(n, -1, np.int64)
    plabel = np.full(n, -1, np.int64)
    seen = np.zeros(n, bool)
    order: list[int] = []
    starts = [r.pos for r in snap.roots] + held.tolist() + list(range(n))
    offsets, refs = snap.offsets, snap.refs
    for s in starts:
        if seen[s]:
            continue
        seen[s] = True
        q = deque([s])
        while q:
            p = q.popleft()
            order.append(p)
            lo, hi = int(offsets[p]), int(offsets[p + 1])
            kids = refs[lo:hi]
            fresh = np.flatnonzero(~seen[kids])
            for k in fresh.tolist():
                c = int(kids[k])
                if not seen[c]:
                    seen[c] = True
                    parent[c] = p
                    plabel[c] = lo + k
                    q.append(c)
    return np.asarray(order, np.int64), parent, plabel


def export(dump: Dump, out: str) -> dict[str, Any]:
    """Write ``dump`` to ``out`` as a .heapsnapshot; returns its figures."""
    snap = dump.snap
    n = snap.n
    strings = _Strings()
    strings("")
    excess = snap.excess
    indeg = np.bincount(snap.refs, minlength=n) if snap.refs.size else np.zeros(n, np.int64)
    held = np.flatnonzero((excess > 0) & (excess < IMMORTAL) & (indeg == 0))
    order, parent, plabel = _walk(dump, held)
    ids = _paths_ids(dump, order, parent, plabel)
    # __dict__ hoisting: X --__dict__--> dict D gives X D's string-keyed items as properties
    hoist: dict[int, int] = {}
    for p in range(n):
        lo, hi = int(snap.offsets[p]), int(snap.offsets[p + 1])
        for e in range(lo, hi):
            if dump.labels[e] == "__dict__" and snap.type_name(int(snap.refs[e])) == "dict":
                hoist[p] = int(snap.refs[e])
                break
    node_type = np.zeros(n, np.int64)
    names = np.zeros(n, np.int64)
    for t_idx, t in enumerate(snap.types):
        node_type[snap.type_of == t_idx] = T_OF[_NODE_KIND.get(t, "object")]
    for p in range(n):
        t = snap.type_name(p)
        nm = dump.names.get(p, "")
        if t == "module":
            names[p] = strings(f"module {nm}")
        elif nm:
            names[p] = strings(nm)
        else:
            names[p] = strings(t)
    edge_rows: list[list[int]] = [[] for _ in range(EXTRA)]
    # the synthetic root: the dump's roots by name, and "(held from C)"
    root_edges: list[int] = []
    for r in snap.roots:
        root_edges += [E_OF["property"], strings(r.name if r.kind == "module" else f"frame {r.name}"),
                       (r.pos + EXTRA) * len(NODE_FIELDS)]
    root_edges += [E_OF["internal"], strings("(held from C)"), 1 * len(NODE_FIELDS)]
    edge_rows[0] = root_edges
    edge_rows[1] = [x for q in held.tolist() for x in (E_OF["hidden"], q, (q + EXTRA) * len(NODE_FIELDS))]
    counts = np.zeros(n + EXTRA, np.int64)
    counts[0], counts[1] = len(edge_rows[0]) // 3, len(edge_rows[1]) // 3
    tmp = out + f".{os.getpid()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        # The edges go to a side file first: the node array needs every node's edge count.
        edge_tmp = tmp + ".edges"
        efd = os.open(edge_tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(efd, "w+") as ef:
                first = True
                for row in edge_rows:
                    if row:
                        ef.write(("" if first else ",") + ",".join(map(str, row)))
                        first = False
                total_edges = int(counts[0] + counts[1])
                for p in range(n):
                    t = snap.type_name(p)
                    lo, hi = int(snap.offsets[p]), int(snap.offsets[p + 1])
                    row = []
                    for e in range(lo, hi):
                        et, en = _edge(t, dump.labels[e], strings)
                        row += [et, en, (int(snap.refs[e]) + EXTRA) * len(NODE_FIELDS)]
                    d = hoist.get(p)
                    if d is not None:
                        dlo, dhi = int(snap.offsets[d]), int(snap.offsets[d + 1])
                        for e in range(dlo, dhi):
                            m = _KEY.fullmatch(dump.labels[e])
                            if m:
                                row += [E_OF["property"], strings(m.group(1)),
                                        (int(snap.refs[e]) + EXTRA) * len(NODE_FIELDS)]
                    if row:
                        ef.write(("" if first else ",") + ",".join(map(str, row)))
                        first = False
                    counts[p + EXTRA] = len(row) // 3
                    total_edges += len(row) // 3
                meta = {
                    "node_fields": NODE_FIELDS,
                    "node_types": [NODE_TYPES, "string", "number", "number", "number", "number", "number"],
                    "edge_fields": EDGE_FIELDS,
                    "edge_types": [EDGE_TYPES, "string_or_number", "node"],
                    "trace_function_info_fields": ["function_id", "name", "script_name", "script_id", "line",
                                                   "column"],
                    "trace_node_fields": ["id", "function_info_index", "count", "size", "children"],
                    "sample_fields": ["timestamp_us", "last_assigned_id"],
                    "location_fields": ["object_index", "script_id", "line", "column"],
                }
                head = {"meta": meta, "node_count": n + EXTRA, "edge_count": total_edges,
                        "trace_function_count": 0}
                f.write('{"snapshot":' + json.dumps(head, separators=(",", ":")) + ',\n"nodes":[')
                synth = [T_OF["synthetic"], strings("(Python roots)"), 1, 0, int(counts[0]), 0, 0,
                         T_OF["synthetic"], strings("(held from C)"), 3, 0, int(counts[1]), 0, 0]
                f.write(",".join(map(str, synth)))
                for s in range(0, n, 1 << 15):
                    e = min(n, s + (1 << 15))
                    block = np.column_stack([node_type[s:e], names[s:e], ids[s:e] + 4, snap.size[s:e],
                                             counts[s + EXTRA:e + EXTRA], np.zeros(e - s, np.int64),
                                             np.zeros(e - s, np.int64)]).ravel()
                    f.write("," + ",".join(map(str, block.tolist())))
                f.write('],\n"edges":[')
                ef.seek(0)
                while True:
                    chunk = ef.read(1 << 20)
                    if not chunk:
                        break
                    f.write(chunk)
        finally:
            os.unlink(edge_tmp)
        f.write('],\n"trace_function_infos":[],\n"trace_tree":[],\n"samples":[],\n"locations":[],\n"strings":[')
        for k, text in enumerate(strings.items):
            f.write(("," if k else "") + json.dumps(text))
        f.write("]}\n")
    os.rename(tmp, out)
    return {"file": out, "bytes": os.path.getsize(out), "nodes": n + EXTRA, "edges": total_edges,
            "strings": len(strings.items)}
