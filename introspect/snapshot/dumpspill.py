"""The columns a dump's walker questions need (each object's type, the references' offsets and
the references as positions), spilled to unnamed files next to the dump while the records stream
(dumpwrite.DumpFile.read) and read back a range at a time: the CLI's memory while dumping does
not grow with the heap (issue 19).

A stream of format 2 carries positions: its columns are written as they come. One of format 3
(issue 23, what the walker sends) carries addresses: each object's own and its references' are
spilled raw (8 bytes each), then ``Spill.resolve`` maps the references to int32 positions once
the stream is read, with columns.resolve's rules (a reference to no object's address dropped and
counted; of objects at one address met twice, the first streamed gets the references), so a
dump read back (records.read_snapshot) has the very references its labels were asked for, in the
same order. It works a range of addresses at a time, never on the whole heap: the objects whose
address falls in the range (about PASS of them; the ranges cut at quantiles of a sample) are
sorted with their positions, then the references are read a block at a time and those in the
range looked up, their positions written into the refs file (read and rewritten per pass, with
explicit reads and writes: the file's pages stay in the page cache, not in the CLI's RSS). The
last pass also moves the kept references down over the dropped ones; the offsets are then
lowered by the dropped references before them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from introspect.snapshot import native
from introspect.snapshot.columns import first_wins
from introspect.snapshot.recformat import ARRAY_HEADER

PASS = 1 << 20  # objects sorted at a time: their addresses, positions and order, ~24 MiB
BLOCK = 1 << 17  # references (or objects) read at a time: ~5 MiB of temporaries

DTYPES: dict[str, str] = {
    "size": "<i8",  # the dump's records are written from these once resolved (format 2)
    "tracked": "u1",
    "excess": "<i8",
    "type_of": "<i4",
    "offsets": "<i8",
    "refs": "<i4",  # positions (format 3: written by resolve)
    "addr": "<u8",  # format 3: the objects' own addresses, by position
    "refaddr": "<u8",  # format 3: the references' addresses, in CSR order
    "bad": "<i8",  # format 3: indices of the references dropped (usually none)
}


def pread(fd: int, dtype: str, a: int, b: int) -> np.ndarray:
    """Entries a..b-1 of a file of ``dtype`` entries (a fresh, writable array)."""
    size = np.dtype(dtype).itemsize
    want = max(b - a, 0) * size
    buf = bytearray(want)
    view, got = memoryview(buf), 0
    while got < want:
        n = os.preadv(fd, [view[got:]], a * size + got)
        if n <= 0:
            raise OSError("a dump's spill file ended early")
        got += n
    return np.frombuffer(buf, dtype)


def pwrite(fd: int, arr: np.ndarray, at: int) -> None:
    """``arr`` written at entry ``at`` of a file of entries of its dtype."""
    view = np.ascontiguousarray(arr).data.cast("B")
    off = at * arr.dtype.itemsize
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


class Spill:
    """The spill files of one dump (O_TMPFILE: gone when closed, whatever happens)."""

    def __init__(self, where: str, per_pass: int = PASS, block: int = BLOCK) -> None:
        self.where = where
        self.per_pass, self.block = per_pass, block  # (tests: many passes on a small heap)
        self.files: dict[str, Any] = {}
        self.fmt = 2
        self.objects = 0
        self.base = 0  # references so far: the next offset
        self.put("offsets", np.zeros(1, "<i8"))
        for name in ("type_of", "refs", "size", "tracked", "excess"):
            self.fd(name)  # present even if nothing streams

    def fd(self, name: str) -> int:
        f = self.files.get(name)
        if f is None:
            f = self.files[name] = tempfile.TemporaryFile(
                dir=self.where, prefix=".introspect-dump-", buffering=0
            )
        return int(f.fileno())

    def put(self, name: str, arr: np.ndarray) -> None:
        """``arr`` appended to the spill file ``name``."""
        self.fd(name)
        view = np.ascontiguousarray(arr).data.cast("B")
        f = self.files[name]
        while view:
            n = f.write(view)
            view = view[n:]

    def add(self, payload: bytes, fmt: int) -> None:
        """An O frame checked already (Columns.add) of a stream of format ``fmt``: its types,
        ends of references, references (format 3: and the objects' addresses)."""
        _start, count, items, _known = ARRAY_HEADER.unpack_from(payload)
        self.fmt = fmt
        at = ARRAY_HEADER.size + 8 * count  # past the sizes
        self.put("type_of", np.frombuffer(payload, "<i4", count, at))
        nrefs = np.frombuffer(payload, "<u4", count, at + 4 * count)
        ends = np.cumsum(nrefs, dtype=np.int64)
        ends += self.base
        self.put("offsets", ends.astype("<i8", copy=False))
        self.put("size", np.frombuffer(payload, "<i8", count, ARRAY_HEADER.size))
        at += 8 * count
        if fmt == 2:
            self.put("refs", np.frombuffer(payload, "<i4", items, at))
            self.put("tracked", np.frombuffer(payload, "u1", count, at + 4 * items))
        else:  # refs (addresses), the gc flags, then the objects' own addresses
            self.put("refaddr", np.frombuffer(payload, "<u8", items, at))
            self.put("tracked", np.frombuffer(payload, "u1", count, at + 8 * items))
            self.put("addr", np.frombuffer(payload, "<u8", count, at + 8 * items + count))
        self.base += items
        self.objects += count

    def add_excess(self, payload: bytes) -> None:
        """A C frame checked already: its objects' refcount excess."""
        _start, count, _items, _known = ARRAY_HEADER.unpack_from(payload)
        self.put("excess", np.frombuffer(payload, "<i8", count, ARRAY_HEADER.size))

    def resolve(self) -> tuple[int, int]:
        """Format 3: the references' addresses mapped to positions in the refs file, those to no
        object's address dropped (the offsets lowered); the raw files closed. Returns (references
        dropped, objects at an address met before); (0, 0) for format 2."""
        if self.fmt == 2:
            return 0, 0
        n, m = self.objects, self.base
        fa, fr, fo = self.fd("addr"), self.fd("refaddr"), self.fd("refs")
        cuts = self._cuts(fa, n)
        step = self.block
        dups = dropped = w = 0
        compiled = native.lib() is not None  # a table of each range (_graphc.c), no sort
        sizes = self._range_sizes(fa, n, cuts)
        for p in range(len(cuts) + 1):
            lo = int(cuts[p - 1]) if p else None
            hi = int(cuts[p]) if p < len(cuts) else None
            keys, pos = self._objects_in(fa, n, lo, hi, int(sizes[p]), not compiled)
            table = native.Table(keys, pos) if compiled else None
            dups += table.dups if table is not None else first_wins(keys, pos)
            last = p == len(cuts)
            for a in range(0, m, step):
                b = min(m, a + step)
                part = pread(fr, "<u8", a, b)
                out = np.full(b - a, -1, "<i4") if p == 0 else pread(fo, "<i4", a, b)
                if table is not None:
                    table.get(part, lo, hi, out)
                    part = part[:0]
                sel = _within(part, lo, hi)
                q = part if sel is None else part[sel]
                del part
                if keys.shape[0] and q.shape[0]:
                    k = np.searchsorted(keys, q)
                    np.minimum(k, keys.shape[0] - 1, out=k)
                    got = pos[k]
                    got[keys[k] != q] = -1
                    del k
                    if sel is None:
                        out[:] = got
                    else:
                        out[sel] = got
                    del got
                del q, sel
                if not last:
                    pwrite(fo, out, a)
                    continue
                # the last pass: every entry final; dropped ones (-1) noted, the rest moved down
                bad = np.flatnonzero(out < 0)
                if bad.shape[0]:
                    bad += a
                    self.put("bad", bad)
                    dropped += int(bad.shape[0])
                    out = out[out >= 0]
                pwrite(fo, out, w)
                w += out.shape[0]
            if table is not None:
                table.close()
            del keys, pos, table
        if dropped:
            os.ftruncate(fo, w * 4)
            self._lower_offsets(n, dropped)
        for name in ("addr", "refaddr", "bad"):  # their disk space given back now
            f = self.files.pop(name, None)
            if f is not None:
                f.close()
        return dropped, dups

    def _cuts(self, fa: int, n: int) -> np.ndarray:
        """Addresses cutting the objects into ranges of about PASS each (quantiles of every k-th
        address); none when they fit in one."""
        passes, step = -(-n // self.per_pass), self.block
        if passes <= 1:
            return np.zeros(0, "<u8")
        k = max(1, n // (1 << 16))
        sample = np.concatenate(
            # each a copy: a view would keep its whole block (all the addresses, at the end)
            [pread(fa, "<u8", a, min(n, a + step))[::k].copy() for a in range(0, n, step)]
        )
        sample.sort()
        at = (np.arange(1, passes) * sample.shape[0]) // passes
        return np.unique(sample[at])

    def _range_sizes(self, fa: int, n: int, cuts: np.ndarray) -> np.ndarray:
        """The number of objects in each range the ``cuts`` make, counted in one read."""
        sizes = np.zeros(cuts.shape[0] + 1, np.int64)
        for a in range(0, n, self.block):
            part = pread(fa, "<u8", a, min(n, a + self.block))
            sizes += np.bincount(np.searchsorted(cuts, part, "right"), minlength=sizes.shape[0])
        return sizes

    def _objects_in(
        self, fa: int, n: int, lo: int | None, hi: int | None, total: int, sort: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``total`` addresses in lo..hi-1 (None: unbounded), sorted (``sort``; else in the
        order of their positions), and their positions (int32)."""
        step = self.block
        keys = np.empty(total, "<u8")
        pos = np.empty(total, np.int32)
        w = 0
        for a in range(0, n, step):
            part = pread(fa, "<u8", a, min(n, a + step))
            sel = _within(part, lo, hi)
            if sel is None:
                keys[w : w + part.shape[0]] = part
                pos[w : w + part.shape[0]] = np.arange(a, a + part.shape[0], dtype=np.int32)
                w += part.shape[0]
            else:
                idx = np.flatnonzero(sel)
                keys[w : w + idx.shape[0]] = part[idx]
                idx += a
                pos[w : w + idx.shape[0]] = idx
                w += idx.shape[0]
        if w != total:  # (the file changed between two reads)
            raise OSError("a dump's spill file changed while it was read")
        if not sort:
            return keys, pos
        # introsort (no buffer); the positions follow by the order, which lives a moment
        order = np.argsort(keys)
        pos = pos[order]
        del order
        keys.sort()
        return keys, pos

    def _lower_offsets(self, n: int, dropped: int) -> None:
        """Each offset less the dropped references before it (both ascending: merged a block
        of each at a time)."""
        fo, fb, step = self.fd("offsets"), self.fd("bad"), self.block
        got = 0  # bad indices read before ``chunk``
        chunk = pread(fb, "<i8", 0, min(dropped, step))
        for a in range(0, n + 1, step):
            v = pread(fo, "<i8", a, min(n + 1, a + step))
            less = np.empty_like(v)
            i = 0
            while i < v.shape[0]:
                if not chunk.shape[0]:  # every dropped one is before these
                    less[i:] = got
                    break
                j = int(np.searchsorted(v, chunk[-1], "right"))  # v[:j] <= the chunk's last
                if j > i:
                    less[i:j] = got + np.searchsorted(chunk, v[i:j])
                    i = j
                if i < v.shape[0]:
                    got += chunk.shape[0]
                    chunk = pread(fb, "<i8", got, min(dropped, got + step))
            v -= less
            pwrite(fo, v, a)

    def maps(self) -> dict[str, np.ndarray]:
        """Read-only maps of type_of, offsets and refs (shapes right, nothing read)."""
        out = {}
        for name in ("type_of", "offsets", "refs"):
            dtype = DTYPES[name]
            f = self.files[name]
            k = os.fstat(f.fileno()).st_size // np.dtype(dtype).itemsize
            out[name] = np.memmap(f, dtype, "r", shape=(k,)) if k else np.zeros(0, dtype)
        return out

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}


def _within(a: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray | None:
    """lo <= a < hi (None: every entry, no bound)."""
    if lo is None and hi is None:
        return None
    out: np.ndarray
    if lo is None:
        out = a < np.uint64(hi or 0)
    elif hi is None:
        out = a >= np.uint64(lo)
    else:
        out = (a >= np.uint64(lo)) & (a < np.uint64(hi))
    return out


class Ranges:
    """Ranges of a snapshot's type_of, offsets and refs: from its arrays (a snapshot read whole:
    --keep), or read from a dump's spill files (never whole in memory)."""

    def __init__(self, snap: Any, spill: Spill | None = None) -> None:
        self.n = snap.n
        self.snap = snap
        names = ("type_of", "offsets", "refs", "size", "tracked", "excess")
        self.fds = {k: spill.fd(k) for k in names} if spill else None

    def _read(self, name: str, a: int, b: int) -> np.ndarray:
        if self.fds is None:
            return np.asarray(getattr(self.snap, name)[a:b])
        return pread(self.fds[name], DTYPES[name], a, b)

    def column(self, name: str, a: int, b: int) -> np.ndarray:
        """Entries a..b-1 of a per-object column (size, tracked, excess, type_of)."""
        return self._read(name, a, b)

    def type_of(self, a: int, b: int) -> np.ndarray:
        return self._read("type_of", a, b)

    def offsets(self, a: int, b: int) -> np.ndarray:
        """offsets[a : b + 1]: the references of objects a..b-1 are refs[o[0]:o[-1]]."""
        return self._read("offsets", a, b + 1)

    def refs(self, a: int, b: int) -> np.ndarray:
        return self._read("refs", a, b)
