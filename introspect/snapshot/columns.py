"""Array frames of the record stream (records.py) into compact columns, every rule checked.

Each frame is checked, then copied into one growing array per column and dropped: the payload's
bytes are freed frame by frame, never kept to the end. Columns are kept as narrow as their values
allow (issue 23: a 10M-object heap in at most half the target's memory):

  size     uint32 (widened to int64 once, the first time an object of 4 GiB or more comes)
  type_of  uint16 (widened to int32 once, past 65,536 types)
  excess   int32, clipped: only ``excess > in-degree`` and ``excess >= IMMORTAL`` are asked of it
           (an immortal's 2**32 becomes 2**31 - 1, still immortal)
  nrefs uint32 (offsets once read: int32 while the references fit); refs int32; tracked one byte

Format 3 streams send addresses: each object's own (``addr``, uint64) and its references' (``refs``
uint64 while streaming); ``resolve`` maps them to int32 positions once the stream is read, by a
sort of the objects' addresses and a binary search of the references' in blocks, and frees both.

That is 15 bytes per object and 4 per reference, against 33 and 4 in the stream. A reader that
needs only some columns (a dump streamed to its file: type_of, refs and offsets for the walker's
questions, 6 bytes per object and 4 per reference; ``offsets`` is summed frame by frame instead
of keeping nrefs) names them in ``keep``: the others are checked frame by frame and dropped, and
the sizes are only summed (``size_total``, and ``size_over`` above ``big``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from introspect.snapshot import native
from introspect.snapshot.recformat import (
    ARRAY_HEADER,
    FORMAT,
    FORMAT_FRAMES,
    PER_OBJECT,
    PER_REF,
    FormatError,
    Limits,
)

_I32 = np.iinfo(np.int32)
# column -> dtype it is kept in (others: the stream's own)
COMPACT: dict[str, np.dtype[Any]] = {
    "size": np.dtype(np.uint32),
    "type_of": np.dtype(np.uint16),
    "excess": np.dtype(np.int32),
    "offsets": np.dtype(np.int32),  # kept (``keep``) instead of nrefs: summed frame by frame
}
# a narrow column -> its wide form, taken when a value does not fit
WIDE: dict[np.dtype[Any], np.dtype[Any]] = {
    np.dtype(np.uint32): np.dtype(np.int64),
    np.dtype(np.uint16): np.dtype(np.int32),
    np.dtype(np.int32): np.dtype(np.int64),  # offsets past 2**31 references
}


@dataclass
class Columns:
    """Chunks of every column as frames arrive, with the counters the rules need."""

    limits: Limits
    ntypes: int = 0
    objects: int = 0  # streamed by O frames
    excess: int = 0  # streamed by C frames
    refs: int = 0
    known: int = 0
    # One growing array per column (grown in place by realloc: no second copy of a big column),
    # and how much of it is filled.
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    filled: dict[str, int] = field(default_factory=dict)
    keep: frozenset[str] | None = None  # the columns kept (None: all)
    big: int = 512  # sizes above it are summed into size_over as well
    size_total: int = 0  # bytes of every object streamed
    size_over: int = 0  # bytes of the objects larger than ``big``
    fmt: int = FORMAT  # the stream's format (records.Reader.magic)

    def add(self, kind: bytes, payload: bytes) -> None:
        columns = FORMAT_FRAMES[self.fmt][kind]
        if len(payload) < ARRAY_HEADER.size:
            raise FormatError(
                "array frame header", f"a {kind.decode()!r} frame of {len(payload)} bytes"
            )
        start, count, items, known = ARRAY_HEADER.unpack_from(payload)
        lim = self.limits
        expect = self.objects if kind == b"O" else self.excess
        if start != expect:
            raise FormatError(
                "contiguous frames",
                f"a {kind.decode()!r} frame starts at object {start:,}, expected {expect:,}",
            )
        if count > lim.max_objects - start or items > lim.max_refs - self.refs:
            raise FormatError(
                "object and reference bounds",
                f"a {kind.decode()!r} frame announces {count:,} objects and "
                f"{items:,} references: more than a process of this memory can hold",
            )
        if kind == b"O" and not (start + count <= known <= lim.max_objects and known >= self.known):
            raise FormatError(
                "known positions",
                f"{known:,} positions known after {start + count:,} objects "
                f"(before: {self.known:,}; bound {lim.max_objects:,})",
            )
        if kind != b"O" and not (start + count <= self.objects and known == self.known):
            raise FormatError(
                "known positions",
                f"a {kind.decode()!r} frame for objects {start:,}..{start + count:,} "
                f"({known:,} known) before they were streamed ({self.objects:,}, "
                f"{self.known:,} known)",
            )
        if not any(per == PER_REF for _, _, per in columns) and items:
            raise FormatError(
                "frame length",
                f"a {kind.decode()!r} frame announces {items:,} references (it has none)",
            )
        size = ARRAY_HEADER.size + sum(
            np.dtype(d).itemsize * (count if per == PER_OBJECT else items) for _, d, per in columns
        )
        if len(payload) != size:
            raise FormatError(
                "frame length",
                f"a {kind.decode()!r} frame of {count:,} objects and {items:,} references "
                f"is {size:,} bytes, not {len(payload):,}",
            )
        got: dict[str, np.ndarray] = {}
        off = ARRAY_HEADER.size
        for name, dtype, per in columns:
            k = count if per == PER_OBJECT else items
            got[name] = np.frombuffer(payload, dtype=dtype, count=k, offset=off)
            off += k * np.dtype(dtype).itemsize
        self._check_columns(kind, got, items, known)
        if kind == b"O":
            size = got["size"]
            self.size_total += int(size.sum(dtype=np.int64))
            self.size_over += int(size[size > self.big].sum(dtype=np.int64))
        if kind == b"O" and self.keep is not None and "offsets" in self.keep:
            if "offsets" not in self.filled:
                self._append("offsets", np.zeros(1, np.int64), known + 1)
            ends = np.cumsum(got["nrefs"], dtype=np.int64)
            ends += self.refs
            self._append("offsets", ends, known + 1)
        for name, arr in got.items():  # copied: the payload is freed now, not at the end
            # grown to the positions known (fewer reallocs), at most twice the objects streamed
            # (a hostile "known" reserves no more than the stream's own size), the widest column
            # (addresses) by half only
            hint = min(known, 2 * (start + count))
            if name in ("refs", "addr"):
                hint = self.refs + items if name == "refs" else start + count
            self._append(name, arr, hint)
        if kind == b"O":
            self.objects += count
            self.refs += items
            self.known = known
        else:
            self.excess += count

    def _check_columns(
        self, kind: bytes, got: dict[str, np.ndarray], items: int, known: int
    ) -> None:
        if kind == b"O":
            n = got["nrefs"]
            if int(n.sum(dtype=np.int64)) != items:
                raise FormatError(
                    "reference counts",
                    f"objects list {int(n.sum(dtype=np.int64)):,} references, "
                    f"the frame carries {items:,}",
                )
            _in_range("type index", got["type_of"], self.ntypes, "types declared so far")
            if self.fmt == 2:  # format 3: addresses, checked by resolve
                _in_range("reference index", got["refs"], known, "positions known")
            _in_range(
                "object size", got["size"], self.limits.max_size + 1, "bytes of the target's memory"
            )
            _in_range("gc-tracked flag", got["tracked"], 2, "(0 or 1)")

    def _append(self, name: str, part: np.ndarray, hint: int) -> None:
        """Copy ``part`` to the end of its column (narrowed, see the module's docstring);
        ``hint``: entries the column will have at least (the positions known so far): grown to
        it, or by half, whichever is more."""
        if (
            self.keep is not None
            and name not in self.keep
            and not (name == "addr" and "refs" in self.keep)  # format 3: refs need them
        ):
            self.filled[name] = self.filled.get(name, 0) + part.shape[0]  # checked, not kept
            return
        arr = self.arrays.get(name)
        want: np.dtype[Any] = COMPACT.get(name, part.dtype) if arr is None else arr.dtype
        if name == "excess":
            part = np.clip(part, _I32.min, _I32.max)
        elif want in WIDE and part.shape[0] and int(part.max()) > int(np.iinfo(want).max):
            want = WIDE[want]  # an object of 4 GiB or more, or the 65,537th type: widened once
            if arr is not None:
                arr = self.arrays[name] = arr.astype(want)
        at = self.filled.get(name, 0)
        need = at + part.shape[0]
        if arr is None:
            arr = self.arrays[name] = np.empty(max(need, hint, 1024), want)
        elif need > arr.shape[0]:
            arr.resize(max(need, hint, arr.shape[0] * 3 // 2), refcheck=False)  # realloc
        arr[at:need] = part
        self.filled[name] = need

    def column(self, name: str, dtype: str) -> np.ndarray:
        """The column, its unused tail given back; ``dtype`` where it has no narrow form."""
        arr = self.arrays.pop(name, None)
        if arr is None:  # nothing streamed, or not kept
            self.filled.pop(name, None)
            return np.zeros(0, COMPACT.get(name, np.dtype(dtype)))
        arr.resize(self.filled.pop(name), refcheck=False)  # no view of it exists yet
        return arr if name in COMPACT else arr.astype(dtype, copy=False)


def resolve(
    addr: np.ndarray, refaddr: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Format 3: (refs as int32 positions, offsets, references dropped, objects at an address
    met before) from the objects' addresses (uint64, by position) and the references' (uint64,
    in CSR order of ``offsets``). A reference to an address no object has is dropped (the walker
    leaves out its own objects and dead ones a traverse hands out; objects made after its
    gc.get_objects(), its own imports', land here) and counted: nothing is ever looked up at an
    address that is not an object's. Both arrays are consumed: ``addr`` is sorted in place, and
    the positions are written over ``refaddr``'s own buffer (4 of its 8 bytes per reference),
    so the peak is the columns plus 12 bytes per object (the compiled loop: 4-8 bytes, its
    table)."""
    n = int(addr.shape[0])
    m = int(refaddr.shape[0])
    out = refaddr.view(np.int32)  # 2m int32 over the same bytes: entry i written once i is read
    dups = 0
    step = 1 << 20  # the temporaries of a block: 8 MiB each at most
    got_c = native.resolve(addr, refaddr) if n and native.lib() is not None else None
    if got_c is not None:  # the compiled loop (_graphc.c): a table instead of the sorts
        dups = got_c[2]
    elif n == 0:
        out[:m] = -1
    else:
        # introsort (no buffer, unlike a stable sort's n/2); its int64 result lives a moment
        pos = np.argsort(addr).astype(np.int32)
        addr.sort()
        # Two objects at one address (a walker that met an object twice: its refcount said one
        # owner, a traverse visited a reference it does not own): references go to the first
        # streamed (whatever the sort's order among equals: a dump's spill resolves alike), the
        # other stays without referrers.
        dups = first_wins(addr, pos)
        for a in range(0, m, step):
            part = refaddr[a : a + step]
            k = np.searchsorted(addr, part)
            np.minimum(k, n - 1, out=k)
            got = pos[k]
            got[addr[k] != part] = -1
            del part  # read whole: its bytes (from 8a on) lie past those written (4a on)
            out[a : a + got.shape[0]] = got
        del pos
    # References to no object's address (-1), dropped in place: each object's offset less the
    # dropped ones before it, the kept references moved down a block at a time.
    refs = out[:m]
    bad = np.flatnonzero(refs < 0)
    dropped = int(bad.shape[0])
    if dropped:
        for a in range(0, offsets.shape[0], step):
            part = offsets[a : a + step]
            part -= np.searchsorted(bad, part).astype(part.dtype)
        w = 0
        for a in range(0, m, step):
            part = refs[a : a + step]
            kept = part[part >= 0]  # a copy: the write below may overlap part
            refs[w : w + kept.shape[0]] = kept
            w += kept.shape[0]
    del bad
    m -= dropped
    return (refs[:m].copy() if m < 1024 else _shrunk(refaddr, m)), offsets, dropped, dups


def first_wins(addr: np.ndarray, pos: np.ndarray) -> int:
    """Of objects at one address (``addr`` sorted, ``pos`` their positions in the same order),
    the first streamed is made the leftmost's position (the one searchsorted finds): references
    go to it, whatever the sort's order among equals. Returns how many are duplicates."""
    if addr.shape[0] < 2:
        return 0
    d = np.flatnonzero(addr[1:] == addr[:-1])  # i where addr[i + 1] == addr[i]
    if not d.shape[0]:
        return 0
    opens = np.ones(d.shape[0], bool)  # d[j] opens a run unless d[j - 1] == d[j] - 1
    opens[1:] = d[1:] != d[:-1] + 1
    run_start = d[opens][np.cumsum(opens) - 1]
    np.minimum.at(pos, run_start, pos[d + 1])
    return int(d.shape[0])


def _shrunk(refaddr: np.ndarray, m: int) -> np.ndarray:
    """The first m int32 of ``refaddr``'s buffer, the rest of it given back (realloc)."""
    if refaddr.base is not None:  # not its own buffer: cannot be resized
        out: np.ndarray = refaddr.view(np.int32)[:m].copy()
        return out
    refaddr.resize((m + 1) // 2, refcheck=False)
    out = refaddr.view(np.int32)[:m]
    return out


def _in_range(rule: str, a: np.ndarray, bound: int, what: str) -> None:
    if a.shape[0] and (int(a.min()) < 0 or int(a.max()) >= bound):
        bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
        raise FormatError(rule, f"{bad:,} is outside 0..{bound - 1:,} ({what})")


def offsets_of(nrefs: np.ndarray) -> np.ndarray:
    """CSR offsets (n + 1) from each object's reference count: int32 while the references fit
    in it, else int64; summed in blocks (a cumsum of the whole column would make an int64
    temporary of it; n = 5M: 40 MB)."""
    n = int(nrefs.shape[0])
    total = int(nrefs.sum(dtype=np.int64)) if n else 0
    offsets = np.zeros(n + 1, np.int32 if total <= _I32.max else np.int64)
    step = 1 << 16  # the int64 temporary: 512 KiB
    base = 0
    for k in range(0, n, step):
        part = np.cumsum(nrefs[k : k + step], dtype=np.int64)
        part += base
        offsets[k + 1 : k + 1 + part.shape[0]] = part
        base = int(part[-1])
    return offsets
