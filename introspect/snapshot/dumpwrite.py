"""Writing a dump file (the format: dumpformat.py): the snapshot's records, then every answer
the analysis asks of the walker while the frozen copy exists, streamed through zlib to a
temporary name that is renamed at the end (mode 0600; a failed dump leaves no file)."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import os
import re
import select
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from introspect.snapshot import records
from introspect.snapshot.dumpformat import CHUNK, DUMP_MAGIC, OBJECTS_PER_FRAME, labels_ok
from introspect.snapshot.dumpspill import Ranges, Spill
from introspect.snapshot.records import ARRAY_HEADER, MAGIC_2, Snapshot


class _Out:
    """A compressed, streamed file: frames go through zlib to disk as they are made."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.z = zlib.compressobj(1)  # level 6: 6 % smaller, 5x the CPU
        self.raw = 0
        self.written = 0

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n

    def put(self, data: bytes) -> None:
        self.raw += len(data)
        view = memoryview(data)
        for a in range(0, len(view), 1 << 20):  # a big frame's output a MiB at a time
            out = self.z.compress(view[a : a + (1 << 20)])
            if out:
                self._write(out)

    def frame(self, kind: bytes, payload: bytes) -> None:
        self.put(kind + len(payload).to_bytes(4, "little"))
        self.put(payload)

    def json(self, kind: bytes, doc: Any) -> None:
        self.frame(kind, json.dumps(doc, separators=(",", ":")).encode())

    def finish(self) -> None:
        self._write(self.z.flush())


def _no_key(label: str) -> str:
    """A dict key's label without its text: ``['password']`` -> ``[str]``, ``[3]`` -> ``[int]``."""
    if label.startswith("['") or label.startswith('["'):
        return "[str]"
    if re.fullmatch(r"\[-?\d+\]", label):
        return "[int]"
    return label


def _json_chunks(out: _Out, what: str, items: list[Any], limit: int = 8 << 20) -> None:
    """``items`` ([position, value] pairs) as Y frames, each well below the frame bound."""
    if what == "counts":  # [position, int]: at most 24 bytes each
        for k in range(0, len(items), limit // 24):
            out.json(b"Y", {"what": what, "start": k, "items": items[k : k + limit // 24]})
        return
    k = 0
    while True:
        step, size = 0, 0
        while k + step < len(items) and size < limit:
            v = items[k + step][1]
            size += 24 + (
                len(v)
                if isinstance(v, str)
                else sum(len(x) + 4 for x in v)
                if isinstance(v, list)
                else 0
            )
            step += 1
        out.json(b"Y", {"what": what, "start": k, "items": items[k : k + step]})
        k += step
        if k >= len(items):
            break


def _first_of_each_type(snap: Snapshot, cols: Ranges) -> dict[int, int]:
    """The first instance of each type: {position: type index}, a block of types at a time."""
    step = 1 << 18  # objects per block: temporaries of a few MB, whatever the heap's size
    first = np.full(len(snap.types), -1, np.int64)
    for s in range(0, snap.n, step):
        kinds, at = np.unique(cols.type_of(s, min(snap.n, s + step)), return_index=True)
        new = first[kinds] < 0
        first[kinds[new]] = at[new] + s
    return {int(p): k for k, p in enumerate(first.tolist()) if p >= 0}


def _answering(
    kind_of: dict[int, int], ask: Callable[[list[int]], list[Any]], empty: Any
) -> np.ndarray:
    """The types whose first instance has an answer other than ``empty`` (names: modules,
    classes, functions; counts: containers): one question per type."""
    probe = sorted(kind_of)
    got = ask(probe) if probe else []
    return np.fromiter((kind_of[p] for p, a in zip(probe, got) if a != empty), np.int64)


def _instances(snap: Snapshot, cols: Ranges, kinds: np.ndarray, size: int) -> Iterator[list[int]]:
    """Every position of the ``kinds``, ascending, ``size`` at a time (never all in memory)."""
    step = 1 << 18
    if not kinds.shape[0]:
        return
    for s in range(0, snap.n, step):
        hits = np.flatnonzero(np.isin(cols.type_of(s, min(snap.n, s + step)), kinds)) + s
        for k in range(0, len(hits), size):
            yield hits[k : k + size].tolist()


class DumpFile:
    """A dump being written: a temporary name next to ``path`` (mode 0600), renamed to ``path``
    by ``commit``; ``abort`` removes it (a failed dump leaves no file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = f"{path}.{os.getpid()}.part"
        self.t0 = time.monotonic()
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.out = _Out(self.fd)
        self.out._write(DUMP_MAGIC)
        self.objects = self.references = self.size_total = self.size_over = 0
        self.spill: Spill | None = None
        self.times: dict[str, float] = {}

    def read(self, reader: records.Reader, **kw: Any) -> Snapshot:
        """The walker's snapshot read from ``reader`` (records.read_snapshot, every rule checked)
        and written to the file frame by frame as it streams. Of the columns, only what the
        walker's questions need is kept (types, references), and not in memory: each checked
        frame's are written to the spill files (dumpspill.Spill; format 3: addresses, mapped to
        positions there once the stream is read, the E frame's counts of references dropped and
        duplicate objects set as a read of the file will find them), the snapshot's type_of,
        offsets and refs are read-only maps of them; it has no sizes, refcounts or gc flags.
        ``size_total`` and ``size_over`` are its objects' bytes, and those of the ones above
        pymalloc's small request."""
        from introspect.breakdown import SMALL_REQUEST
        from introspect.snapshot.columns import Columns as Checked

        cols = Checked(reader.limits, keep=frozenset(), big=SMALL_REQUEST)
        spill = self.spill = Spill(os.path.dirname(os.path.abspath(self.path)))

        def sink(kind: bytes, payload: bytes) -> None:
            if kind == b"O":
                spill.add(payload, reader.format)
            elif kind == b"C":
                spill.add_excess(payload)

        snap = records.read_snapshot(reader, sink=sink, cols=cols, **kw)
        self.size_total, self.size_over = cols.size_total, cols.size_over
        t0 = time.monotonic()
        dropped, dups = spill.resolve()
        self.times["resolve_s"] = round(time.monotonic() - t0, 3)
        end = dict(snap.end)
        for key, count in (("unknown_refs", dropped), ("duplicate_objects", dups)):
            end.pop(key, None)
            if count:
                end[key] = count
        maps = spill.maps()
        snap = dataclasses.replace(
            snap,
            type_of=maps["type_of"],
            offsets=maps["offsets"] if maps["offsets"].shape[0] else np.zeros(1, "<i8"),
            refs=maps["refs"],
            end=end,
        )
        # the records as format 2 (positions: smaller, and read without a mapping), a frame of
        # objects at a time from the spill files
        _write_snapshot(self.out, snap, Ranges(snap, spill))
        return snap

    def answers(
        self,
        snap: Snapshot,
        walker: Any,
        facts: dict[str, Any],
        no_keys: bool,
        log: Callable[[str], None],
    ) -> None:
        """The dump's own frames after the snapshot's: D (facts), Y (answers), Z (the end)."""
        self.objects, self.references = snap.n, int(snap.refs.shape[0])
        self.times.update(
            _write_answers(self.out, snap, Ranges(snap, self.spill), walker, facts, no_keys, log)
        )

    def commit(self) -> dict[str, Any]:
        """The file whole on disk under its name; the dump's own figures."""
        self.out.finish()
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, self.path)
        self._unspill()
        return {
            "file": self.path,
            "bytes": self.out.written,
            "raw_bytes": self.out.raw,
            "objects": self.objects,
            "references": self.references,
            "write_s": round(time.monotonic() - self.t0, 3),
            **self.times,
        }

    def _unspill(self) -> None:
        if self.spill is not None:
            self.spill.close()
            self.spill = None

    def abort(self) -> None:
        self._unspill()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def write(
    path: str,
    snap: Snapshot,
    walker: Any,
    facts: dict[str, Any],
    no_keys: bool,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Write ``snap`` (read whole already: --keep) and the walker's answers to ``path`` (mode
    0600, created whole or not at all). Returns the dump's own figures."""
    f = DumpFile(path)
    try:
        _write_snapshot(f.out, snap)
        f.answers(snap, walker, facts, no_keys, log)
        return f.commit()
    except BaseException:
        f.abort()
        raise


def _write_answers(
    out: _Out,
    snap: Snapshot,
    cols: Ranges,
    walker: Any,
    facts: dict[str, Any],
    no_keys: bool,
    log: Callable[[str], None],
) -> dict[str, float]:
    t0 = time.monotonic()
    out.json(b"D", {**facts, "no_keys": no_keys})
    # names and counts are written as they are answered; only what the labels need is kept:
    # the named positions (for their free variables) and big containers' item counts
    kind_of = _first_of_each_type(snap, cols)
    named: list[int] = []
    for part in _instances(snap, cols, _answering(kind_of, walker.names, ""), 10_000):
        got = [[p, a] for p, a in zip(part, walker.names(part)) if a != ""]
        _json_chunks(out, "names", got)
        named += [p for p, _ in got]
    items: dict[int, int] = {}

    def counted(part: list[int], got: list[int]) -> None:
        pairs = [[p, c] for p, c in zip(part, got) if c != -1]
        if not pairs:
            return
        _json_chunks(out, "counts", pairs)
        o = cols.offsets(part[0], part[-1] + 1)  # part: ascending, within one block
        at = np.asarray([p for p, _ in pairs], np.int64) - part[0]
        items.update((pairs[k][0], pairs[k][1]) for k in np.flatnonzero(o[at + 1] - o[at] > BIG))

    containers = _answering(kind_of, walker.counts, -1)
    asker = _Asker(walker, "C", _ints_ok) if getattr(walker, "cfd", -1) >= 0 else None
    for part in _instances(snap, cols, containers, 4000):
        if asker is None:
            counted(part, walker.counts(part))
        else:  # one ahead, as the labels are asked
            line = "C " + " ".join(map(str, part)) + "\n"
            asker.ask(line.encode(), len(part), functools.partial(counted, part))
    if asker is not None:
        asker.drain()
    free = walker.freevars(named) if named else []
    _json_chunks(out, "freevars", [[p, v] for p, v in zip(named, free) if v])
    del named, free
    t1 = time.monotonic()
    total = _write_labels(out, snap, cols, walker, items, no_keys)
    out.json(b"Z", {"labels": total})
    times = {"names_counts_s": round(t1 - t0, 3), "labels_s": round(time.monotonic() - t1, 3)}
    log(
        f"dump: names and counts written in {times['names_counts_s']:.1f} s, "
        f"{total:,} labels in {times['labels_s']:.1f} s"
    )
    return times


def _ints_ok(items: list[Any]) -> bool:
    return set(map(type, items)) <= {int}


BATCH = 10 * CHUNK  # labels asked and written at a time (their pairs and strings: ~3 MB)
BIG = 32  # references of a container whose labels are asked in one pass (K), not one by one
K_ITEMS = 20_000  # items of one container per K question (its answer: ~3 MB in the CLI)


def _k_answer(n: int) -> Callable[[Any], bool]:
    """The shape of one item of a K answer: True/False (answered or not), or [child, label]."""

    def ok(x: Any) -> bool:
        return (
            x is True
            or x is False
            or (
                isinstance(x, list)
                and len(x) == 2
                and type(x[0]) is int
                and 0 <= x[0] < n
                and isinstance(x[1], str)
                and len(x[1]) <= records.MAX_NAME
            )
        )

    return ok


def _streamed_labels(
    walker: Any, pos: int, refs: np.ndarray, n_items: int, n: int,
    emit: Callable[[list[str]], None],
) -> int:
    """A container's labels handed to ``emit`` a K answer at a time, in the order of ``refs``,
    as long as the answers name its references in that order or its reverse (CPython traverses a
    list or tuple last item first): nothing of a million items is held. Only for a container
    whose references are distinct (else each gets its child's first label, as the live walker
    answers). Returns how many references were labelled so (0: the walker does not answer for
    this holder, or its answers come in another order)."""
    ok, total = _k_answer(n), len(refs)
    ordered = np.sort(refs)  # a copy of refs' width (np.unique's hash table: 10x that)
    distinct = bool(np.all(ordered[1:] != ordered[:-1]))
    del ordered
    if not distinct:
        return 0  # a child held twice gets its first item's label everywhere: the mapping does it
    starts = list(range(0, max(n_items, 1), K_ITEMS))
    for backwards in (True, False):
        done = 0
        for s in starts[::-1] if backwards else starts:
            ans = walker._ask(f"K {pos} {s} {K_ITEMS}", None, ok)
            if not ans or ans[0] is not True:
                return done
            got = ans[1:][::-1] if backwards else ans[1:]
            kids = [c for c, _ in got]
            if done + len(kids) > total or refs[done : done + len(kids)].tolist() != kids:
                break
            if kids:
                emit([lab for _, lab in got])
            done += len(kids)
        else:
            return done
        if done:
            return done
    return 0


def _container_labels(
    walker: Any, pos: int, refs: np.ndarray, n_items: int, n: int
) -> list[str] | None:
    """Labels of a container's references in one pass of the walker (K questions), in any order
    (each reference gets its child's first label), or None when the walker does not answer for
    this holder (then each is asked alone)."""
    ok = _k_answer(n)
    first: dict[int, str] = {}
    for s in range(0, max(n_items, 1), K_ITEMS):
        ans = walker._ask(f"K {pos} {s} {K_ITEMS}", None, ok)
        if not ans or ans[0] is not True:
            return None
        for child, label in ans[1:]:
            first.setdefault(child, label)
    return [first.get(r, "(item)") for r in refs.tolist()]


LABEL_BLOCK = 1 << 16  # objects whose types, offsets and references are read at a time


class _Asker:
    """Questions to the walker (labels, counts), one asked ahead: the walker makes the next
    answer while the CLI files the last one (both at work, not taking turns). A question is
    written without blocking; if the control FIFO is full, the pending answer is read first
    (the walker may be waiting for it to be read), so neither side waits on the other forever.
    Answers are checked as the walker's own questions check them (a list of as many entries as
    were asked, each of the right type: ``check``)."""

    def __init__(self, walker: Any, what: str, check: Callable[[list[Any]], bool]) -> None:
        self.walker, self.what, self.check = walker, what, check
        self.pending: deque[tuple[int, Callable[[list[Any]], None]]] = deque()
        os.set_blocking(walker.cfd, False)

    def ask(self, line: bytes, count: int, done: Callable[[list[Any]], None]) -> None:
        w, view = self.walker, memoryview(line)
        while view:
            try:
                view = view[os.write(w.cfd, view) :]
            except BlockingIOError:
                if self.pending:
                    self._answer()
                else:  # the walker has yet to read the last question: wait for room
                    if time.monotonic() > w.deadline or not w.alive():
                        raise records.StreamError("the snapshot walker stopped answering")
                    select.select([], [w.cfd], [], 0.5)
        self.pending.append((count, done))
        while len(self.pending) > 1:
            self._answer()

    def _answer(self) -> None:
        count, done = self.pending.popleft()
        kind, payload = self.walker.reader.frame()
        if kind != b"L":
            raise records.FormatError(
                "answer frame", f"a {kind!r} frame where an answer ('L') belongs"
            )
        answer = records._json(kind, payload)
        if not isinstance(answer, list) or len(answer) != count:
            raise records.FormatError(
                "answer shape",
                f"the walker's answer to {self.what!r} is not a list of {count} entries",
            )
        if not self.check(answer):
            raise records.FormatError(
                "answer type",
                f"an entry of the walker's answer to {self.what!r} has the wrong type",
            )
        done(answer)

    def drain(self) -> None:
        """Every pending answer read (before a question whose answer is read at once)."""
        while self.pending:
            self._answer()
        os.set_blocking(self.walker.cfd, True)

    def resume(self) -> None:
        os.set_blocking(self.walker.cfd, False)


def _write_labels(
    out: _Out, snap: Snapshot, cols: Ranges, walker: Any, items: dict[int, int], no_keys: bool
) -> int:
    """Every reference's label, in the order of ``refs``, as Y frames written as they come. The
    references are asked CHUNK at a time, their questions made a block of objects at a time from
    the columns, one question ahead (_Asker); a big container's are asked in one pass (K)."""
    n = snap.n
    seq = np.array([i for i, t in enumerate(snap.types) if t in ("list", "tuple")], np.int64)
    buf: list[str] = []
    written = 0
    asker = _Asker(walker, "L", labels_ok) if getattr(walker, "cfd", -1) >= 0 else None
    big_ones = sorted(items)

    def put(labels: list[str], hide: Any = None) -> None:
        """``labels`` appended in order; ``hide``: True, or per label whether its holder's key
        text is replaced (--no-keys)."""
        nonlocal buf, written
        if hide is True:
            labels = [_no_key(lab) for lab in labels]
        elif hide is not None and hide.any():
            labels = [_no_key(lab) if h else lab for lab, h in zip(labels, hide.tolist())]
        buf += labels
        if len(buf) >= BATCH:
            out.json(b"Y", {"what": "labels", "start": written, "items": buf})
            written += len(buf)
            buf = []

    def ask(holders: np.ndarray, children: np.ndarray, hide: np.ndarray | None) -> None:
        for k in range(0, holders.shape[0], CHUNK):
            h, c = holders[k : k + CHUNK], children[k : k + CHUNK]
            hd = None if hide is None else hide[k : k + CHUNK]
            if asker is None:
                put(walker.labels(list(zip(h.tolist(), c.tolist()))), hd)
                continue
            both = np.empty(2 * h.shape[0], np.int64)
            both[0::2], both[1::2] = h, c
            line = "L " + " ".join(map(str, both.tolist())) + "\n"
            asker.ask(line.encode(), h.shape[0], functools.partial(put, hide=hd))

    for s in range(0, n, LABEL_BLOCK):
        e = min(n, s + LABEL_BLOCK)
        o = cols.offsets(s, e)
        base = int(o[0])
        refs = cols.refs(base, int(o[-1]))
        nref = np.diff(o)
        hidden = ~np.isin(cols.type_of(s, e), seq) if no_keys else None
        lo_i, hi_i = bisect.bisect_left(big_ones, s), bisect.bisect_left(big_ones, e)
        special = [p - s for p in big_ones[lo_i:hi_i] if nref[p - s] > BIG]
        a = 0
        for sp in [*special, e - s]:
            ra, rb = int(o[a]) - base, int(o[sp]) - base
            if rb > ra:  # the plain objects a..sp-1: every reference asked by its pair
                holders = np.repeat(np.arange(a + s, sp + s), nref[a:sp])
                hide = None if hidden is None else np.repeat(hidden[a:sp], nref[a:sp])
                ask(holders, refs[ra:rb], hide)
            if sp == e - s:
                break
            at, a = sp + s, sp + 1
            lo, hi = int(o[sp]) - base, int(o[sp + 1]) - base
            hide_it = bool(hidden[sp]) if hidden is not None else False
            if asker is not None:
                asker.drain()  # what came before goes first, in the order of refs
            emit = functools.partial(put, hide=hide_it or None)
            lo += _streamed_labels(walker, at, refs[lo:hi], items[at], n, emit)
            if lo < hi:
                got = _container_labels(walker, at, refs[lo:hi], items[at], n)
                if got is not None:
                    put(got, hide_it or None)
                    lo = hi
            if asker is not None:
                asker.resume()
            if lo < hi:
                ask(np.full(hi - lo, at, np.int64), refs[lo:hi], np.full(hi - lo, hide_it))
        del refs
    if asker is not None:
        asker.drain()
    if buf:
        out.json(b"Y", {"what": "labels", "start": written, "items": buf})
        written += len(buf)
    return written


def _write_snapshot(out: _Out, snap: Snapshot, cols: Ranges | None = None) -> None:
    """The snapshot as a record stream of format 2 (positions: what records.read_snapshot reads;
    the addresses of a format 3 stream are gone once resolved), its columns read from ``cols``
    a frame at a time (a snapshot held whole: the default, or a dump's spill files)."""
    cols = cols if cols is not None else Ranges(snap)
    n = snap.n
    out.put(MAGIC_2)
    meta = {k: v for k, v in snap.meta.items() if k in records.META_FIELDS}
    meta["format"] = 2
    out.json(b"M", meta)
    for s in range(0, max(len(snap.types), 1), 20_000):
        out.json(b"T", [[i, snap.types[i]] for i in range(s, min(len(snap.types), s + 20_000))])
    out.json(b"R", [[r.kind, r.name, r.pos] for r in snap.roots])
    for s in range(0, n, OBJECTS_PER_FRAME):
        e = min(n, s + OBJECTS_PER_FRAME)
        o = cols.offsets(s, e)
        a, b = int(o[0]), int(o[-1])
        out.frame(
            b"O",
            ARRAY_HEADER.pack(s, e - s, b - a, n)
            + cols.column("size", s, e).astype("<i8").tobytes()
            + cols.type_of(s, e).astype("<i4").tobytes()
            + np.diff(o).astype("<u4").tobytes()
            + cols.refs(a, b).astype("<i4").tobytes()
            + cols.column("tracked", s, e).astype("u1").tobytes(),
        )
    for s in range(0, n, OBJECTS_PER_FRAME):
        e = min(n, s + OBJECTS_PER_FRAME)
        out.frame(
            b"C",
            ARRAY_HEADER.pack(s, e - s, 0, n)
            + cols.column("excess", s, e).astype("<i8").tobytes(),
        )
    end = {k: v for k, v in snap.end.items() if k in records.END_FIELDS}
    out.json(b"E", {**end, "objects": n, "edges": int(snap.refs.shape[0])})


def process_facts(pid: int) -> dict[str, Any]:
    """The target's command line and memory (RSS, USS) from /proc, read by the CLI."""
    facts: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(1 << 16)
        facts["cmdline"] = [a.decode(errors="replace")[:4096] for a in raw.split(b"\0") if a][:256]
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kb = {}
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    kb[parts[0].rstrip(":")] = int(parts[1]) * 1024
        facts["rss"] = kb.get("Rss", 0)
        facts["uss"] = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    except OSError:
        pass
    return facts
