"""Writing a dump file (the format: dumpformat.py): the snapshot's records, then every answer
the analysis asks of the walker while the frozen copy exists, streamed through zlib to a
temporary name that is renamed at the end (mode 0600; a failed dump leaves no file)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from introspect.snapshot import records
from introspect.snapshot.dumpformat import DUMP_MAGIC, OBJECTS_PER_FRAME
from introspect.snapshot.dumplabels import _Labeller
from introspect.snapshot.dumpout import _json_chunks, _Out
from introspect.snapshot.dumpspill import Ranges, Spill
from introspect.snapshot.records import ARRAY_HEADER, MAGIC_2, Snapshot


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
            _write_answers(
                self.out,
                snap,
                Ranges(snap, self.spill),
                walker,
                facts,
                no_keys,
                log,
                self.spill.where if self.spill is not None else None,
            )
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
        self.out.stop()
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
    where: str | None = None,
) -> dict[str, float]:
    """D, names, freevars, counts, labels and Z; ``where``: the directory of the dump's spill
    files (None: a snapshot held whole, the counts kept in memory while the labels are made)."""
    t0 = time.monotonic()
    out.json(b"D", {**facts, "no_keys": no_keys})
    # names (modules, classes, functions: few) asked first, then their free variables; then the
    # containers' counts and every reference's label, a block of objects at a time (_Labeller)
    kind_of = _first_of_each_type(snap, cols)
    named: list[int] = []
    for part in _instances(snap, cols, _answering(kind_of, walker.names, ""), 10_000):
        got = [[p, a] for p, a in zip(part, walker.names(part)) if a != ""]
        _json_chunks(out, "names", got)
        named += [p for p, _ in got]
    free = walker.freevars(named) if named else []
    _json_chunks(out, "freevars", [[p, v] for p, v in zip(named, free) if v])
    del named, free
    containers = _answering(kind_of, walker.counts, -1)
    t1 = time.monotonic()
    lab = _Labeller(out, snap, cols, walker, containers, no_keys, log, where)
    try:
        total = lab.run()
    finally:
        lab.kept.close()
    out.json(b"Z", {"labels": total})
    times = {
        "names_s": round(t1 - t0, 3),
        "labels_s": round(time.monotonic() - t1, 3),
        "labels_asked": lab.asked,
    }
    log(
        f"dump: names written in {times['names_s']:.1f} s; counts and {total:,} labels in "
        f"{times['labels_s']:.1f} s ({lab.asked:,} asked of the walker, the rest of lists' "
        "and tuples' items from their positions)"
    )
    return times


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
