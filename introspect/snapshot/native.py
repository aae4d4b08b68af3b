"""The CLI's compiled loops (``_graphc.c``: the references' addresses to positions, and BFS),
loaded with ctypes when the install built them; ``None`` where it did not (no C compiler, or
``INTROSPECT_NATIVE=0``), and graph.py and columns.py then run their numpy versions, which give
the same answers (tests/unit/test_native.py compares the two)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

_LIB: Any = None
_TRIED = False
_ABI = 5  # _graphc.c's introspect_graphc_abi(): another build's functions take other arguments


def lib() -> Any:
    """The loaded library, or None."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("INTROSPECT_NATIVE", "1") == "0":
        return None
    for path in sorted(Path(__file__).parent.glob("_graphc*.so")):
        try:
            so = ctypes.CDLL(str(path))
        except OSError:
            continue
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        abi = getattr(so, "introspect_graphc_abi", None)
        if abi is None:
            continue
        abi.restype, abi.argtypes = i64, []
        if abi() != _ABI:
            continue
        so.introspect_resolve.restype = i64
        so.introspect_resolve.argtypes = [p, i64, p, i64, p, p]
        so.introspect_bfs.restype = i64
        so.introspect_bfs.argtypes = [p, p, p, i64, i64, p, i64, p, p, p, p, p]
        so.introspect_table_new.restype = p
        so.introspect_table_new.argtypes = [p, p, i64, p]
        i32, u64 = ctypes.c_int, ctypes.c_uint64
        so.introspect_table_get.restype = None
        so.introspect_table_get.argtypes = [p, p, i64, u64, i32, u64, i32, p]
        so.introspect_table_free.restype = None
        so.introspect_table_free.argtypes = [p]
        c = ctypes.c_char_p
        so.introspect_rows.restype = i64
        so.introspect_rows.argtypes = [p, p, i64, c, c, c, p, i64]
        _LIB = so
        break
    return _LIB


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else int(a.ctypes.data)


def resolve(addr: np.ndarray, refaddr: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """(positions, int32 over ``refaddr``'s buffer, -1 where no object has the address;
    references dropped; objects at an address met before), as columns.resolve's numpy steps;
    None unless both are contiguous uint64 arrays (the numpy steps then run)."""
    so = lib()
    for a in (addr, refaddr):
        if a.dtype != np.uint64 or not a.flags.c_contiguous:
            return None
    m = int(refaddr.shape[0])
    out = refaddr.view(np.int32)[:m]
    dropped = ctypes.c_int64(0)
    dups = so.introspect_resolve(_ptr(addr), int(addr.shape[0]), _ptr(refaddr), m, _ptr(out),
                                 ctypes.byref(dropped))
    if dups < 0:
        raise MemoryError("resolving the references' addresses")
    return out, int(dropped.value), int(dups)


def bfs(offsets: np.ndarray, refs: np.ndarray, n: int, sources: np.ndarray, order: bool,
        parents: bool, seen: np.ndarray | None) -> tuple[np.ndarray, list[int], np.ndarray]:
    """graph.bfs in C: the same arguments and results."""
    so = lib()
    if seen is None:
        seen = np.full(n, -2, np.int32) if parents else np.zeros(n, bool)
    refs = np.ascontiguousarray(refs, np.int32)
    off32 = off64 = None
    if offsets.shape[0] != n + 1:
        raise ValueError(f"{offsets.shape[0]:,} offsets for {n:,} objects")
    if offsets.dtype == np.int32:
        off32 = np.ascontiguousarray(offsets)
    else:
        off64 = np.ascontiguousarray(offsets, np.int64)
    src = np.ascontiguousarray(np.asarray(sources).astype(np.int32, copy=False))
    out = np.empty(n if order else 0, np.int32)
    bounds = np.empty(n + 2 if order else 0, np.int64)
    nb = ctypes.c_int64(0)
    got = so.introspect_bfs(
        _ptr(off32), _ptr(off64), _ptr(refs), int(refs.shape[0]), n, _ptr(src),
        int(src.shape[0]),
        _ptr(seen) if parents else None, None if parents else _ptr(seen),
        _ptr(out) if order else None, _ptr(bounds) if order else None, ctypes.byref(nb))
    if got == -1:
        raise MemoryError("a breadth-first search")
    if got == -2:
        raise ValueError("a reference or an offset outside the snapshot's arrays")
    if not order:
        return out, [], seen
    out.resize(int(got), refcheck=False)
    return out, [int(b) for b in bounds[: int(nb.value)]], seen


class Table:
    """A range's objects for dumpspill's resolve: ``keys`` (uint64 addresses) at ``pos`` (int32
    positions, ascending), the first at an address winning (``dups``: the others)."""

    def __init__(self, keys: np.ndarray, pos: np.ndarray) -> None:
        self.keys = np.ascontiguousarray(keys, np.uint64)
        self.pos = np.ascontiguousarray(pos, np.int32)
        dups = ctypes.c_int64(0)
        self.h = lib().introspect_table_new(_ptr(self.keys), _ptr(self.pos),
                                            int(self.keys.shape[0]), ctypes.byref(dups))
        if not self.h:
            raise MemoryError("a table of a range's addresses")
        self.dups = int(dups.value)

    def get(self, q: np.ndarray, lo: int | None, hi: int | None, out: np.ndarray) -> None:
        """out[i] = the position at q[i], or -1, for each q[i] in lo..hi-1 (None: no bound)."""
        q = np.ascontiguousarray(q, np.uint64)
        if out.dtype != np.int32 or not out.flags.c_contiguous or out.shape[0] != q.shape[0]:
            raise ValueError("out must be a contiguous int32 array as long as q")
        lib().introspect_table_get(self.h, _ptr(q), int(q.shape[0]), lo or 0, lo is not None,
                                   hi or 0, hi is not None, _ptr(out))

    def close(self) -> None:
        if self.h:
            lib().introspect_table_free(self.h)
            self.h = None


def rows(a: np.ndarray, b: np.ndarray | None, pre: bytes, mid: bytes, suf: bytes) -> bytes:
    """``pre a mid b suf`` per row (b None: ``pre a suf``), rows joined by commas, the ints in
    decimal: dumplabels._rows' text. ``a`` and ``b`` hold non-negative ints."""
    so = lib()
    a = np.ascontiguousarray(a, np.int64)
    if b is not None:
        b = np.ascontiguousarray(b, np.int64)
        if b.shape[0] != a.shape[0]:
            raise ValueError("two columns of different lengths")
    n = int(a.shape[0])
    cap = n * (len(pre) + len(mid) + len(suf) + 41)
    buf = np.empty(max(cap, 1), np.uint8)
    got = so.introspect_rows(_ptr(a), _ptr(b), n, pre, mid, suf, _ptr(buf), cap)
    if got < 0:
        raise ValueError("a negative number in a dump's rows")
    return buf[:got].tobytes()
