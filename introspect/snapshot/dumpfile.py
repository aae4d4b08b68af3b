"""Reading a dump file (the format: dumpformat.py; the writer: dumpwrite.py) as strictly as the
live record stream, and answering the analysis's questions from it as the walker would: every
command that takes a pid takes a dump (FileWalker, FileOutcome, take)."""

from __future__ import annotations

import itertools
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
from introspect.snapshot.dumpformat import (
    DUMP_FACTS,
    DUMP_MAGIC,
    DUMP_MAGIC_PREFIX,
    MAX_BYTES,
    MAX_RATIO,
    READ_VERSIONS,
    WHATS,
    DumpError,
    check_memory,
    distinct_labels,
)
from introspect.snapshot.dumptable import Labels
from introspect.snapshot.records import (
    FormatError,
    Limits,
    Reader,
    Snapshot,
    StreamError,
    read_snapshot,
)

if TYPE_CHECKING:
    from introspect.runner import Outcome

@dataclass
class Dump:
    path: str
    snap: Snapshot
    facts: dict[str, Any]
    labels: Labels
    names: dict[int, str] = field(default_factory=dict)
    # items of each builtin container by position, -1 for the others (an array: a dict of
    # millions of containers would cost 60 bytes each)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    freevars: dict[int, list[str]] = field(default_factory=dict)


class _Inflated:
    """The dump's zlib stream after its header, decompressed as the reader asks for it (a frame
    at a time: never the whole stream in memory) and checked as it comes: damaged data, a
    stream that ends early, one larger than ``bound`` (``MAX_RATIO`` times the file's size, at
    most ``MAX_BYTES``: a zip bomb) or bytes after it are each a DumpError, ``broken`` set."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path, self.fd = path, fd
        self.bound = min(MAX_BYTES, max(size, 1) * MAX_RATIO)
        self.z = zlib.decompressobj()
        self.pending = b""  # compressed bytes read from the file, not decompressed yet
        self.got = 0  # decompressed bytes handed out
        self.broken = False
        try:
            os.lseek(fd, len(DUMP_MAGIC), os.SEEK_SET)
        except OSError as exc:
            raise self._fail(f"cannot be read: {exc.strerror or exc}") from None

    def _fail(self, what: str) -> DumpError:
        self.broken = True
        return DumpError(self.path, what)

    def _file(self, most: int) -> bytes:
        try:
            return os.read(self.fd, most)
        except OSError as exc:
            raise self._fail(f"cannot be read: {exc.strerror or exc}") from None

    def read(self, most: int) -> bytes:
        """Up to ``most`` (>= 1) bytes of the stream; b"" once it ended, whole."""
        z = self.z
        while not z.eof:
            ended = False
            if not self.pending:
                self.pending = self._file(1 << 20)
                ended = not self.pending  # once zlib hands out what it still holds, if any
            try:  # never more than one byte past the bound
                data = z.decompress(self.pending, min(most, self.bound + 1 - self.got))
            except zlib.error as exc:
                raise self._fail(
                    f"is corrupted: its compressed data is damaged ({exc})"
                ) from None
            self.pending = z.unconsumed_tail
            self.got += len(data)
            if self.got > self.bound:
                raise self._fail(
                    f"decompresses to more than {self.bound:,} bytes (a damaged or hostile file)"
                )
            if z.eof and (z.unused_data or self._file(1)):
                raise self._fail("has bytes after the end of its compressed data")
            if data:
                return data
            if ended:
                raise self._fail("is truncated: its compressed data ends early")
        return b""

    def rest(self) -> int:
        """The stream read to its end, every check made: how many bytes were left."""
        left = 0
        while data := self.read(1 << 20):
            left += len(data)
        return left


class _FileReader(Reader):
    """Frames from a dump's stream as it is decompressed (a big frame into a buffer of its own,
    as from a FIFO): the stream's end is the same StreamError as for bytes held whole."""

    def __init__(self, src: _Inflated, limits: Limits) -> None:
        super().__init__(src.fd, float("inf"), limits)
        self.src = src

    def _read(self, most: int) -> bytes:
        data = self.src.read(most)
        if not data:
            self.eof = True
            raise StreamError("the snapshot stream ended early (the walker died)")
        return data


def other_process(fa: dict[str, Any], fb: dict[str, Any]) -> bool:
    """Whether two dumps' facts name different processes (pid and start time)."""
    return (fa.get("pid"), fa.get("start_ticks")) != (fb.get("pid"), fb.get("start_ticks"))


def pair_notes(first: str, second: str, fa: dict[str, Any], fb: dict[str, Any]) -> list[str]:
    """What a comparison of ``first`` with ``second`` says first (growth OLD NEW, report F1 F2):
    that they are dumps of different processes, that the second was taken before the first."""
    notes = []
    if other_process(fa, fb):
        notes.append(
            f"{first} and {second} are dumps of different processes (pid {fa.get('pid')} and "
            f"{fb.get('pid')}): compared anyway, type by type and holder by holder"
        )
    if float(fb.get("time", 0)) < float(fa.get("time", 0)):
        notes.append(
            f"{second} was taken before {first}: the change shown is from the first file given to "
            "the second"
        )
    return notes


def _open(path: str) -> tuple[int, int]:
    """The dump's file, opened and its header checked: (fd, size)."""
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
        if version not in READ_VERSIONS:
            raise DumpError(
                path,
                f"is a dump of version {version}; this introspect reads versions "
                f"{', '.join(map(str, READ_VERSIONS))} (use the introspect release that wrote it)",
            )
        return fd, st.st_size
    except OSError as exc:
        os.close(fd)
        raise DumpError(path, f"cannot be read: {exc.strerror or exc}") from None
    except DumpError:
        os.close(fd)
        raise


def load(path: str) -> Dump:
    """The dump at ``path``, every rule checked, or DumpError.

    Read as it is decompressed, frame by frame, into the snapshot's columns (never the whole
    stream in memory), bounded meanwhile by the largest stream the file may hold. A broken file
    gets the error a read of the whole stream first gives: its compressed data's (damaged,
    truncated, too large, bytes after it) before any rule of its records, each rule of its
    records under the bounds of the stream's true size, so the records are read again once
    that size is known (broken files only)."""
    fd, size = _open(path)
    try:
        src = _Inflated(path, fd, size)
        try:
            return _parse(path, src, Limits.for_file(src.bound))
        except DumpError:
            if src.broken:
                raise
        src.rest()  # its compressed data's errors first
        return _parse(path, _Inflated(path, fd, size), Limits.for_file(src.got))
    finally:
        os.close(fd)


def _parse(path: str, src: _Inflated, limits: Limits) -> Dump:
    reader = _FileReader(src, limits)
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


def _counts_of(items: list[Any]) -> np.ndarray | None:
    """The items as an array of [position, count] rows, or None unless every item is such a
    pair of ints (never bools) that fits in int64. Checked at C speed over the whole batch."""
    if set(map(type, items)) != {list} or set(map(len, items)) != {2}:
        return None
    if set(map(type, itertools.chain.from_iterable(items))) != {int}:
        return None
    try:
        return np.array(items, np.int64)
    except OverflowError:
        return None


_COUNTS_HEAD = b'{"what":"counts","start":'
_ITEMS = b',"items":['
_UINT = re.compile(rb"0|[1-9][0-9]*")


def _compact_counts(payload: bytes) -> np.ndarray | None:
    """A counts frame as the writer makes it, ``{"what":"counts","start":K,"items":[[P,C],...]}``
    (no spaces, every number of 1 to 18 digits, no leading zero), read at C speed: its items as
    rows of int64, the very ints JSON reads there (a million containers' counts are a million
    small lists to JSON). None when it is not in that form, then read as JSON (what it holds may
    still be valid, or get the JSON reader's own error)."""
    if not payload.startswith(_COUNTS_HEAD) or not payload.endswith(b"]}"):
        return None
    at = payload.find(_ITEMS, len(_COUNTS_HEAD))
    if at < 0 or not _UINT.fullmatch(payload, len(_COUNTS_HEAD), at):
        return None
    body = np.frombuffer(payload, np.uint8, len(payload) - at - len(_ITEMS), at + len(_ITEMS) - 1)
    # the characters that are not digits must be exactly "[" "[,]" "," ... "[,]" "]"
    marks = np.flatnonzero((body - np.uint8(ord("0"))) > 9)
    k = (marks.shape[0] - 1) // 4  # rows
    want = b"[" + (b"[,]," * k)[:-1] + b"]" if k else b"[]"
    if (
        marks.shape[0] != len(want)
        or marks[0] != 0
        or marks[-1] != body.shape[0] - 1
        or not np.array_equal(body[marks], np.frombuffer(want, np.uint8))
    ):
        return None
    if not k:
        return np.zeros((0, 2), np.int64)
    # digits between marks: none, P's, C's, none per row; no leading zero
    widths = (np.diff(marks) - 1).reshape(k, 4)
    num = widths[:, 1:3]
    if widths[:, 0].any() or widths[:, 3].any() or num.min() < 1 or num.max() > 18:
        return None
    first = body[marks[:-1].reshape(k, 4)[:, 1:3] + 1]
    if bool(((first == ord("0")) & (num > 1)).any()):
        return None
    # validated: the text holds exactly 2k numbers between separators
    text = payload[at + len(_ITEMS) - 1 : -1].translate(_SPACED)
    rows = np.fromstring(text, np.int64, sep=",")
    return rows.reshape(k, 2) if rows.shape[0] == 2 * k else None


_SPACED = bytes.maketrans(b"[]", b"  ")


def _counts_fit(a: np.ndarray, counts: np.ndarray, n: int, total: int) -> bool:
    """Rows [position, count]: each position one of the n, once, not counted yet; each count
    at most total + n."""
    pos, got = a[:, 0], a[:, 1]
    if int(pos.min()) < 0 or int(pos.max()) >= n or int(got.min()) < 0:
        return False
    if int(got.max()) > total + n:
        return False
    # the writer's rows come in increasing positions: then none repeats
    if not bool((pos[1:] > pos[:-1]).all()) and np.unique(pos).shape[0] != pos.shape[0]:
        return False
    return bool((counts[pos] == -1).all())


def _is_pos(x: object, n: int) -> bool:
    return type(x) is int and 0 <= x < n  # type: ignore[operator,unused-ignore]


def _read_answers(path: str, reader: _FileReader, snap: Snapshot) -> Dump:
    n, total = snap.n, int(snap.refs.shape[0])
    facts: dict[str, Any] | None = None
    dump = Dump(path, snap, {}, Labels(total))
    dump.counts = np.full(n, -1, np.int32 if total + n < 1 << 31 else np.int64)
    while True:
        kind, payload = reader.frame()
        rows = _compact_counts(payload) if kind == b"Y" else None
        doc = records._json(kind, payload) if rows is None else None
        if kind == b"D":
            if facts is not None:
                raise DumpError(path, "has two process-facts frames")
            facts = records._fields(kind, doc, DUMP_FACTS, ("pid",))
            cmd = facts.get("cmdline", [])
            if not all(isinstance(a, str) for a in cmd):
                raise DumpError(path, "has a command line that is not a list of strings")
            if "memory" in facts:
                facts["memory"] = check_memory(path, facts["memory"], int(snap.size.sum()))
        elif kind == b"Y":
            if facts is None:
                raise DumpError(path, "has answers before its process facts")
            if rows is not None:
                _add_counts(path, dump, rows, n, total)
                continue
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
            # the compressed stream's own checks (to its end) come before this rule's
            if reader.src.rest() or reader.buf:
                raise DumpError(path, "has data after its end frame")
            dump.facts = facts
            dump.labels.seal()
            return dump
        else:
            raise DumpError(path, f"has a {kind!r} frame where the dump's answers belong")


def _add_counts(path: str, dump: Dump, rows: np.ndarray | None, n: int, total: int) -> None:
    if rows is None or (rows.shape[0] and not _counts_fit(rows, dump.counts, n, total)):
        raise DumpError(path, "has a broken entry in its counts")
    if rows.shape[0]:
        dump.counts[rows[:, 0]] = rows[:, 1]


def _add(
    path: str, dump: Dump, what: str, start: int, items: list[Any], n: int, total: int
) -> None:
    if what == "labels":
        if start != len(dump.labels) or start + len(items) > total:
            raise DumpError(
                path, f"has labels for references {start:,}.. where {len(dump.labels):,} comes next"
            )
        distinct = distinct_labels(items)
        if distinct is None:
            raise DumpError(path, "has a label that is not a string")
        dump.labels.extend(items, distinct)
        return
    if what == "counts":
        if items:
            _add_counts(path, dump, _counts_of(items), n, total)
        return
    table: dict[int, Any] = getattr(dump, what)
    for it in items:
        ok = isinstance(it, list) and len(it) == 2 and _is_pos(it[0], n) and it[0] not in table
        if ok and what == "names":
            ok = isinstance(it[1], str) and len(it[1]) <= records.MAX_NAME
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
        got: list[int] = self.dump.counts[np.asarray(positions, np.int64)].tolist()
        return got

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
            "the allocators' raw figures are not in dumps: `introspect memory FILE` reads the "
            "breakdown the dump carries",
            help="Run `introspect memory FILE` (or `introspect memory PID` on the live process).",
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
