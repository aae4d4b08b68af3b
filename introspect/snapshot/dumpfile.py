"""Heap dump files: one forked snapshot, with every answer the analysis asks of the walker.

A dump is ``DUMP_MAGIC`` then one zlib stream holding a record stream of format 2 exactly as
records.py reads it (MAGIC, M, T, R, O..., C..., E), followed by the dump's own frames, in the
same framing (kind, uint32 LE length, payload; kinds listed in records.JSON_MAX):
  ``D`` the process facts (DUMP_FACTS: pid, name, start time, Python, command line, RSS/USS...)
  ``Y`` answers, JSON ``{"what": WHAT, "start": K, "items": [...]}`` with WHAT one of
        ``labels`` (one string per reference, in the order of ``refs``: chunks contiguous from 0),
        ``names`` ([position, name]: modules, classes, functions), ``counts`` ([position, items]:
        builtin containers), ``freevars`` ([position, [names]]: functions)
  ``Z`` the end: JSON {"labels": total} -- a file without it is truncated and refused.
Object values are never written; with ``--no-keys`` a dict key's label is its type (``[str]``).
Reading is as strict as records.py: the decompressed stream is bounded (``MAX_RATIO`` times the
file's size, and ``MAX_BYTES``), every rule is checked, and a broken file is a DumpError (exit 14)
naming the file and the rule, never a traceback and never a partial heap.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from introspect import errors
from introspect.snapshot import records
from introspect.snapshot.records import (
    ARRAY_HEADER,
    MAGIC,
    BytesReader,
    FormatError,
    Limits,
    Snapshot,
    StreamError,
    read_snapshot,
)

if TYPE_CHECKING:
    from introspect.runner import Outcome

DUMP_MAGIC_PREFIX = b"INTROSPECT-DUMP "
DUMP_VERSION = 1
DUMP_MAGIC = DUMP_MAGIC_PREFIX + b"%d\n" % DUMP_VERSION
SUFFIX = ".pydump"
MAX_RATIO = 200  # decompressed bytes per file byte, at most (a zip bomb is refused)
MAX_BYTES = 64 << 30
CHUNK = 2000  # references per label question (the walker's own chunking)
OBJECTS_PER_FRAME = 1 << 16
DUMP_FACTS: dict[str, tuple[type, ...]] = {
    "pid": (int,),
    "name": (str,),
    "start_ticks": (int,),
    "python": (str,),
    "cmdline": (list,),
    "rss": (int,),
    "uss": (int,),
    "time": (int, float),
    "no_keys": (bool,),
    "fork_pause_s": (int, float),
    "walk_s": (int, float),
    "introspect": (str,),
}
WHATS = ("labels", "names", "counts", "freevars")


class DumpError(FormatError):
    """A file that is not a whole, readable dump of this version (exit 14)."""

    help_text = (
        "Nothing of the file was used. Check that it is a whole file written by `introspect dump` "
        "(copied completely, not truncated), or take a new dump."
    )

    def __init__(self, path: str, what: str) -> None:
        FormatError.__init__(self, "dump file", what)
        self.args = (f"{path}: {what}",)
        self.msg = f"{path}: {what}"


# ---------------------------------------------------------------------------------------------
# writing


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
        self.put(kind + len(payload).to_bytes(4, "little") + payload)

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
) -> list[list[Any]]:
    """[position, answer] for every object of each type whose first instance has an answer other
    than ``empty`` (names: modules, classes, functions; counts: containers): one question per type
    first, then only the instances of the types that answered."""
    first = np.full(len(snap.types), -1, np.int64)
    order = np.arange(snap.n, dtype=np.int64)[::-1]
    first[snap.type_of[::-1]] = order  # the last write wins: each type's first instance
    probe = [int(p) for p in first if p >= 0]
    answered = {
        int(snap.type_of[p]) for p, a in zip(probe, ask(probe) if probe else []) if a != empty
    }
    if not answered:
        return []
    want = np.flatnonzero(np.isin(snap.type_of, np.fromiter(answered, np.int64))).tolist()
    out: list[list[Any]] = []
    for s in range(0, len(want), 40_000):
        chunk = want[s : s + 40_000]
        out += [[p, a] for p, a in zip(chunk, ask(chunk)) if a != empty]
    return out


def write(
    path: str,
    snap: Snapshot,
    walker: Any,
    facts: dict[str, Any],
    no_keys: bool,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Write ``snap`` and the walker's answers to ``path`` (mode 0600, created whole or not at
    all: a temporary name is renamed at the end). Returns the dump's own figures."""
    t0 = time.monotonic()
    tmp = f"{path}.{os.getpid()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        out = _Out(fd)
        out._write(DUMP_MAGIC)
        _write_snapshot(out, snap)
        out.json(b"D", {**facts, "no_keys": no_keys})
        names = _by_type_sample(snap, walker.names, "")
        counts = _by_type_sample(snap, walker.counts, -1)
        items: dict[int, int] = {p: c for p, c in counts}
        total = _write_labels(out, snap, walker, items, no_keys)
        del items
        log(f"dump: {total:,} labels written")
        _json_chunks(out, "names", names)
        _json_chunks(out, "counts", counts)
        named = [p for p, _ in names]
        free = walker.freevars(named) if named else []
        _json_chunks(out, "freevars", [[p, v] for p, v in zip(named, free) if v])
        out.json(b"Z", {"labels": total})
        out.finish()
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.rename(tmp, path)
    return {
        "file": path,
        "bytes": out.written,
        "raw_bytes": out.raw,
        "objects": snap.n,
        "references": int(snap.refs.shape[0]),
        "write_s": round(time.monotonic() - t0, 3),
    }


BIG = 32  # references of a container whose labels are asked in one pass (K), not one by one
K_ITEMS = 50_000  # items of one container per K question


def _container_labels(
    walker: Any, pos: int, refs: np.ndarray, n_items: int, n: int
) -> list[str] | None:
    """Labels of a container's references in one pass of the walker (K questions), or None when
    the walker does not answer for this holder (then each is asked alone)."""

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
        if buf and (final or len(buf) >= 50 * CHUNK):
            out.json(b"Y", {"what": "labels", "start": written, "items": buf})
            written += len(buf)
            buf = []

    for p in range(n):
        lo, hi = int(offsets[p]), int(offsets[p + 1])
        if lo == hi:
            continue
        got = None
        if hi - lo > BIG and p in items:
            got = _container_labels(walker, p, refs[lo:hi], items[p], n)
        if got is not None:
            flush()
            if no_keys and int(snap.type_of[p]) not in seq:
                got = [_no_key(lab) for lab in got]
            buf += got
        else:
            pairs.extend((p, r) for r in refs[lo:hi].tolist())
            if no_keys:
                keyed.extend([int(snap.type_of[p]) not in seq] * (hi - lo))
        if len(pairs) >= 50 * CHUNK or len(buf) >= 50 * CHUNK:
            flush()
    flush(final=True)
    return written


def _write_snapshot(out: _Out, snap: Snapshot) -> None:
    """The snapshot as a record stream of format 2 (what records.read_snapshot reads)."""
    n = snap.n
    out.put(MAGIC)
    meta = {k: v for k, v in snap.meta.items() if k in records.META_FIELDS}
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


# ---------------------------------------------------------------------------------------------
# reading


class Labels:
    """One label per reference, kept as an index into a table of distinct labels (most repeat:
    ``[0]``, ``__dict__``, ``.co_code``), so millions of references cost 4 bytes each."""

    def __init__(self) -> None:
        self.table: list[str] = []
        self._index: dict[str, int] = {}
        self._parts: list[np.ndarray] = []
        self._n = 0
        self._codes: np.ndarray | None = None

    def extend(self, items: list[str]) -> None:
        index, table = self._index, self.table
        codes = np.empty(len(items), np.int32)
        for k, s in enumerate(items):
            c = index.get(s)
            if c is None:
                c = index[s] = len(table)
                table.append(s)
            codes[k] = c
        self._parts.append(codes)
        self._n += len(items)
        self._codes = None

    @property
    def codes(self) -> np.ndarray:
        if self._codes is None:
            self._codes = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int32)
            self._parts = [self._codes]
        return self._codes

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k: int) -> str:
        return self.table[int(self.codes[k])]


@dataclass
class Dump:
    path: str
    snap: Snapshot
    facts: dict[str, Any]
    labels: Labels
    names: dict[int, str] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    freevars: dict[int, list[str]] = field(default_factory=dict)


def _read_bytes(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise DumpError(path, f"cannot be opened: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DumpError(path, "is not a regular file")
        if st.st_size == 0:
            raise DumpError(path, "is empty (0 bytes): not a dump")
        head = os.read(fd, len(DUMP_MAGIC_PREFIX) + 8)
        if len(head) < len(DUMP_MAGIC) and DUMP_MAGIC.startswith(head):
            raise DumpError(path, f"is truncated: {len(head)} bytes, in its header")
        if not head.startswith(DUMP_MAGIC_PREFIX):
            raise DumpError(path, f"is not an introspect dump (it starts with {head[:16]!r})")
        line = head[len(DUMP_MAGIC_PREFIX) :].split(b"\n", 1)
        if len(line) != 2 or not line[0].isdigit():
            raise DumpError(path, "has a broken dump header")
        version = int(line[0])
        if version != DUMP_VERSION:
            raise DumpError(
                path,
                f"is a dump of version {version}; this introspect reads version "
                f"{DUMP_VERSION} (use the introspect release that wrote it)",
            )
        os.lseek(fd, len(DUMP_MAGIC), os.SEEK_SET)
        bound = min(MAX_BYTES, max(st.st_size, 1) * MAX_RATIO)
        z = zlib.decompressobj()
        parts: list[bytes] = []
        got = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            try:
                data = z.decompress(chunk, bound + 1 - got)
            except zlib.error as exc:
                raise DumpError(
                    path, f"is corrupted: its compressed data is damaged ({exc})"
                ) from None
            got += len(data)
            if got > bound or z.unconsumed_tail:
                raise DumpError(
                    path, f"decompresses to more than {bound:,} bytes (a damaged or hostile file)"
                )
            parts.append(data)
            if z.eof:
                break
        if not z.eof:
            raise DumpError(path, "is truncated: its compressed data ends early")
        if z.unused_data or os.read(fd, 1):
            raise DumpError(path, "has bytes after the end of its compressed data")
        return b"".join(parts)
    except OSError as exc:
        raise DumpError(path, f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def load(path: str) -> Dump:
    """The dump at ``path``, every rule checked, or DumpError."""
    data = _read_bytes(path)
    reader = BytesReader(data, Limits.for_file(len(data)))
    try:
        snap = read_snapshot(reader)
        return _read_answers(path, reader, snap)
    except DumpError:
        raise
    except FormatError as exc:
        raise DumpError(
            path, f"its heap records break the rule '{exc.rule}': {str(exc).split(': ', 1)[-1]}"
        ) from None
    except StreamError as exc:
        raise DumpError(path, f"is truncated or damaged ({exc})") from None
    except TimeoutError:
        raise DumpError(path, "could not be read in time") from None


def _is_pos(x: object, n: int) -> bool:
    return type(x) is int and 0 <= x < n  # type: ignore[operator,unused-ignore]


def _read_answers(path: str, reader: BytesReader, snap: Snapshot) -> Dump:
    n, total = snap.n, int(snap.refs.shape[0])
    facts: dict[str, Any] | None = None
    dump = Dump(path, snap, {}, Labels())
    while True:
        kind, payload = reader.frame()
        doc = records._json(kind, payload)
        if kind == b"D":
            if facts is not None:
                raise DumpError(path, "has two process-facts frames")
            facts = records._fields(kind, doc, DUMP_FACTS, ("pid",))
            cmd = facts.get("cmdline", [])
            if not all(isinstance(a, str) for a in cmd):
                raise DumpError(path, "has a command line that is not a list of strings")
        elif kind == b"Y":
            if facts is None:
                raise DumpError(path, "has answers before its process facts")
            if not (
                isinstance(doc, dict)
                and doc.get("what") in WHATS
                and type(doc.get("start")) is int
                and isinstance(doc.get("items"), list)
            ):
                raise DumpError(path, "has an answers frame that is not {what, start, items}")
            _add(path, dump, doc["what"], doc["start"], doc["items"], n, total)
        elif kind == b"Z":
            if facts is None or not isinstance(doc, dict) or doc.get("labels") != total:
                raise DumpError(path, "has a broken end frame")
            if len(dump.labels) != total:
                raise DumpError(
                    path, f"has labels for {len(dump.labels):,} of {total:,} references"
                )
            if reader.buf:
                raise DumpError(path, "has data after its end frame")
            dump.facts = facts
            return dump
        else:
            raise DumpError(path, f"has a {kind!r} frame where the dump's answers belong")


def _add(
    path: str, dump: Dump, what: str, start: int, items: list[Any], n: int, total: int
) -> None:
    if what == "labels":
        if start != len(dump.labels) or start + len(items) > total:
            raise DumpError(
                path, f"has labels for references {start:,}.. where {len(dump.labels):,} comes next"
            )
        if not all(isinstance(x, str) and len(x) <= records.MAX_NAME for x in items):
            raise DumpError(path, "has a label that is not a string")
        dump.labels.extend(items)
        return
    table: dict[int, Any] = getattr(dump, what)
    for it in items:
        ok = isinstance(it, list) and len(it) == 2 and _is_pos(it[0], n) and it[0] not in table
        if ok and what == "names":
            ok = isinstance(it[1], str) and len(it[1]) <= records.MAX_NAME
        elif ok and what == "counts":
            ok = type(it[1]) is int and 0 <= it[1] <= total + n
        elif ok:
            ok = isinstance(it[1], list) and all(
                isinstance(v, str) and len(v) <= 4096 for v in it[1]
            )
        if not ok:
            raise DumpError(path, f"has a broken entry in its {what}")
        table[it[0]] = it[1]


class FileWalker:
    """Answers the questions of collect.Walker from a dump, so the analysis runs unchanged."""

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.n = dump.snap.n
        self.pid = 0

    def labels(self, edges: Sequence[tuple[int, int]]) -> list[str]:
        snap, labels = self.dump.snap, self.dump.labels
        out = []
        for a, b in edges:
            lo, hi = int(snap.offsets[a]), int(snap.offsets[a + 1])
            hit = np.flatnonzero(snap.refs[lo:hi] == b)
            out.append(labels[lo + int(hit[0])] if hit.size else "?")
        return out

    def names(self, positions: Sequence[int]) -> list[str]:
        return [self.dump.names.get(int(p), "") for p in positions]

    def counts(self, positions: Sequence[int]) -> list[int]:
        return [self.dump.counts.get(int(p), -1) for p in positions]

    def freevars(self, positions: Sequence[int]) -> list[list[str]]:
        return [list(self.dump.freevars.get(int(p), [])) for p in positions]

    def previews(self, positions: Sequence[int]) -> list[str]:
        return ["(values are not in dumps)" for _ in positions]

    def duplicates(self, min_len: int = 8, top: int = 50) -> list[list[Any]]:
        return []

    def tracing(self) -> bool:
        return False

    def memory(self) -> dict[str, Any]:
        raise errors.UsageError(
            "the memory breakdown is not in dumps (yet)",
            help="Run `introspect memory PID` on the live process.",
        )

    def allocated(self, positions: Sequence[int]) -> tuple[bool, list[list[Any] | None], str]:
        return False, [], ""

    def traces(self, depth: int) -> dict[str, Any]:
        raise errors.UsageError(
            "allocation traces are not in dumps",
            help="Run the command on the live process instead.",
        )

    def alive(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def kill(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# commands on a file


class FileOutcome:
    """What commands read of a live run's Outcome, from a dump's facts."""

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.envelope: dict[str, Any] = {}
        self.result: dict[str, Any] = {}
        self.extra = None

    @property
    def paused_s(self) -> float:
        return float(self.dump.facts.get("fork_pause_s", 0.0))

    def meta(self) -> dict[str, Any]:
        f = self.dump.facts
        return {
            "pid": f.get("pid", 0),
            "name": f.get("name", ""),
            "python": f.get("python", ""),
            "method": "dump",
            "file": self.dump.path,
            "paused_s": float(f.get("fork_pause_s", 0.0)),
            "dump_time": f.get("time", 0),
        }


def out_key(target: int | str) -> int | str:
    """What names the default output directory: the pid, or the dump file's base name."""
    if isinstance(target, int):
        return target
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(target))[:60] or "dump"


def take(
    path: str, analyse: Callable[[Snapshot, Any], Any], log: Callable[[str], None] = lambda s: None
) -> tuple[Outcome, Any, dict[str, Any]]:
    """``analyse`` run over the dump at ``path``: (outcome, value, collector block), as
    collect.take returns them."""
    t0 = time.monotonic()
    dump = load(path)
    log(f"dump {path}: {dump.snap.n:,} objects read in {time.monotonic() - t0:.2f} s")
    value = analyse(dump.snap, FileWalker(dump))
    col = {
        "path": "dump",
        "why": f"read from {path}",
        "file": path,
        "objects": dump.snap.n,
        "references": int(dump.snap.refs.shape[0]),
        "fork_pause_s": round(float(dump.facts.get("fork_pause_s", 0.0)), 6),
        "walk_s": round(float(dump.facts.get("walk_s", 0.0)), 3),
        "dump_time": dump.facts.get("time", 0),
    }
    return cast("Outcome", FileOutcome(dump)), value, col  # what commands read of one: meta()
