"""Writing a dump file (the format: dumpformat.py): the snapshot's records, then every answer
the analysis asks of the walker while the frozen copy exists, streamed through zlib to a
temporary name that is renamed at the end (mode 0600; a failed dump leaves no file)."""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from introspect.snapshot import records
from introspect.snapshot.dumpformat import CHUNK, DUMP_MAGIC, OBJECTS_PER_FRAME
from introspect.snapshot.records import ARRAY_HEADER, MAGIC, MAGIC_2, Snapshot


class _Out:
    """A compressed, streamed file: frames go through zlib to disk as they are made."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.z = zlib.compressobj(6)
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
        out = self.z.compress(data)
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


def _by_type_sample(
    snap: Snapshot, ask: Callable[[list[int]], list[Any]], empty: Any
) -> Iterator[tuple[list[int], list[Any]]]:
    """(positions, answers) other than ``empty``, a chunk at a time, for every object of each type
    whose first instance has such an answer (names: modules, classes, functions; counts:
    containers): one question per type first, then only the instances of the types that
    answered. A chunk at a time: a million containers' counts are never all in memory."""
    step = 1 << 18  # objects per block: temporaries of a few MB, whatever the heap's size
    first = np.full(len(snap.types), -1, np.int64)
    for s in range(0, snap.n, step):
        kinds, at = np.unique(snap.type_of[s : s + step], return_index=True)
        new = first[kinds] < 0
        first[kinds[new]] = at[new] + s
    probe = [int(p) for p in first if p >= 0]
    answered = {
        int(snap.type_of[p]) for p, a in zip(probe, ask(probe) if probe else []) if a != empty
    }
    if not answered:
        return
    kinds = np.fromiter(answered, np.int64)
    for s in range(0, snap.n, step):
        hits = np.flatnonzero(np.isin(snap.type_of[s : s + step], kinds)) + s
        for k in range(0, len(hits), 10_000):
            part = hits[k : k + 10_000].tolist()
            got = [(p, a) for p, a in zip(part, ask(part)) if a != empty]
            yield [p for p, _ in got], [a for _, a in got]


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

    def read(self, reader: records.Reader, **kw: Any) -> Snapshot:
        """The walker's snapshot read from ``reader`` (records.read_snapshot, every rule checked)
        and written to the file frame by frame as it streams, keeping only the columns the
        walker's questions need (types, references): the snapshot has no sizes, refcounts or
        gc flags; ``size_total`` and ``size_over`` are its objects' bytes, and those of the ones
        above pymalloc's small request."""
        from introspect.breakdown import SMALL_REQUEST
        from introspect.snapshot.columns import Columns

        cols = Columns(
            reader.limits, keep=frozenset(("type_of", "offsets", "refs")), big=SMALL_REQUEST
        )
        self.out.put(MAGIC)
        snap = records.read_snapshot(reader, sink=self.out.frame, cols=cols, **kw)
        self.size_total, self.size_over = cols.size_total, cols.size_over
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
        _write_answers(self.out, snap, walker, facts, no_keys, log)

    def commit(self) -> dict[str, Any]:
        """The file whole on disk under its name; the dump's own figures."""
        self.out.finish()
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, self.path)
        return {
            "file": self.path,
            "bytes": self.out.written,
            "raw_bytes": self.out.raw,
            "objects": self.objects,
            "references": self.references,
            "write_s": round(time.monotonic() - self.t0, 3),
        }

    def abort(self) -> None:
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
    walker: Any,
    facts: dict[str, Any],
    no_keys: bool,
    log: Callable[[str], None],
) -> None:
    out.json(b"D", {**facts, "no_keys": no_keys})
    # names and counts are written as they are answered; only what the labels need is kept:
    # the named positions (for their free variables) and big containers' item counts
    named: list[int] = []
    for pos, got in _by_type_sample(snap, walker.names, ""):
        _json_chunks(out, "names", [[p, a] for p, a in zip(pos, got)])
        named += pos
    items: dict[int, int] = {}
    for pos, got in _by_type_sample(snap, walker.counts, -1):
        _json_chunks(out, "counts", [[p, a] for p, a in zip(pos, got)])
        if pos:
            at = np.asarray(pos, np.int64)
            big = np.flatnonzero(snap.offsets[at + 1] - snap.offsets[at] > BIG).tolist()
            items.update((pos[k], got[k]) for k in big)
    free = walker.freevars(named) if named else []
    _json_chunks(out, "freevars", [[p, v] for p, v in zip(named, free) if v])
    del named, free
    total = _write_labels(out, snap, walker, items, no_keys)
    log(f"dump: {total:,} labels written")
    out.json(b"Z", {"labels": total})


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


def _write_labels(
    out: _Out, snap: Snapshot, walker: Any, items: dict[int, int], no_keys: bool
) -> int:
    """Every reference's label, in the order of ``refs``, as Y frames written as they come."""
    n = snap.n
    seq = {i for i, t in enumerate(snap.types) if t in ("list", "tuple")}
    buf: list[str] = []
    pairs: list[tuple[int, int]] = []
    keyed: list[bool] = []  # per pair: is its holder's key text to be replaced (--no-keys)?
    written = 0
    offsets, refs = snap.offsets, snap.refs

    def flush(final: bool = False) -> None:
        nonlocal written, buf
        if pairs:
            got = walker.labels(pairs)
            buf += [_no_key(lab) if k else lab for lab, k in zip(got, keyed)] if no_keys else got
            pairs.clear()
            keyed.clear()
        if buf and (final or len(buf) >= BATCH):
            out.json(b"Y", {"what": "labels", "start": written, "items": buf})
            written += len(buf)
            buf = []

    for p in range(n):
        lo, hi = int(offsets[p]), int(offsets[p + 1])
        if lo == hi:
            continue
        got = None
        hide = no_keys and int(snap.type_of[p]) not in seq
        if hi - lo > BIG and p in items:
            flush()  # what came before goes first, in the order of refs

            def emit(labels: list[str], hide: bool = hide) -> None:
                nonlocal buf
                buf += [_no_key(lab) for lab in labels] if hide else labels
                if len(buf) >= BATCH:
                    flush()

            lo += _streamed_labels(walker, p, refs[lo:hi], items[p], n, emit)
            if lo < hi:
                got = _container_labels(walker, p, refs[lo:hi], items[p], n)
        if lo == hi:
            pass
        elif got is not None:
            flush()
            buf += [_no_key(lab) for lab in got] if hide else got
        else:
            pairs.extend((p, r) for r in refs[lo:hi].tolist())
            if no_keys:
                keyed.extend([hide] * (hi - lo))
        if len(pairs) >= BATCH or len(buf) >= BATCH:
            flush()
    flush(final=True)
    return written


def _write_snapshot(out: _Out, snap: Snapshot) -> None:
    """The snapshot as a record stream of format 2 (positions: what records.read_snapshot reads;
    the addresses of a format 3 stream are gone once read)."""
    n = snap.n
    out.put(MAGIC_2)
    meta = {k: v for k, v in snap.meta.items() if k in records.META_FIELDS}
    meta["format"] = 2
    out.json(b"M", meta)
    for s in range(0, max(len(snap.types), 1), 20_000):
        out.json(b"T", [[i, snap.types[i]] for i in range(s, min(len(snap.types), s + 20_000))])
    out.json(b"R", [[r.kind, r.name, r.pos] for r in snap.roots])
    nrefs = np.diff(snap.offsets).astype("<u4")
    for s in range(0, n, OBJECTS_PER_FRAME):
        e = min(n, s + OBJECTS_PER_FRAME)
        a, b = int(snap.offsets[s]), int(snap.offsets[e])
        out.frame(
            b"O",
            ARRAY_HEADER.pack(s, e - s, b - a, n)
            + snap.size[s:e].astype("<i8").tobytes()
            + snap.type_of[s:e].astype("<i4").tobytes()
            + nrefs[s:e].tobytes()
            + snap.refs[a:b].astype("<i4").tobytes()
            + snap.tracked[s:e].astype("u1").tobytes(),
        )
    for s in range(0, n, OBJECTS_PER_FRAME):
        e = min(n, s + OBJECTS_PER_FRAME)
        out.frame(
            b"C", ARRAY_HEADER.pack(s, e - s, 0, n) + snap.excess[s:e].astype("<i8").tobytes()
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
