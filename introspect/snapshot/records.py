"""The record stream between the agent's walker and the CLI: format 3 (2 still read), strict,
read as hostile.

The walker runs in a forked copy of a process that may be compromised, so everything here is data
from an adversary (docs/security.md). No general-purpose deserialiser reads it: fixed-width
little-endian arrays go straight into numpy (``np.frombuffer``) with their lengths checked, and
JSON carries only small metadata of bounded size, every field type-checked. Every rule below is
checked when its frame is read; a stream that breaks one ends in :class:`FormatError` naming the
rule (exit code 14), never a traceback and never a partial snapshot shown as whole.

Stream: ``MAGIC``, then frames of kind (1 byte) + payload length (uint32 LE) + payload:
  ``M`` meta JSON object, the first frame: META_FIELDS (``format`` must be FORMAT)
  ``T`` types JSON ``[[index, name], ...]``: indices consecutive from 0 across all T frames
  ``R`` roots JSON ``[[kind, description, position], ...]``, once: kind in ROOT_KINDS
  ``O`` objects, an array frame of OBJECT_COLUMNS
  ``C`` refcount excess, an array frame of EXCESS_COLUMNS
  ``E`` end JSON object (END_FIELDS): ``objects`` and ``edges`` must equal what was streamed
  ``X`` the walker's error JSON ``{"error": {type, message, frames}}``
  ``L`` after E: one answer JSON per question on the control FIFO (snapshot.collect.Walker)
An array frame's payload: a header of four uint64 LE (ARRAY_HEADER) -- ``start`` (position of its
first object: frames of one kind are contiguous from 0), ``count`` (objects), ``items`` (entries of
the per-reference columns) and ``known`` (positions assigned so far: every reference is below it,
it never decreases, and the last one is the number of objects) -- then each column in its table's
order, ``count`` or ``items`` entries of its dtype, nothing between, nothing after.

Format 3 (OBJECT_COLUMNS_3, issue 23) differs in one thing: references are addresses (uint64 ids)
and each object's own address is its last column, so that the walker needs no table of every
object's position; the CLI maps them once the stream is read (columns.resolve: two objects at
one address are kept, references going to the first, counted in ``end["duplicate_objects"]``;
a reference to no object's address is dropped and counted in ``end["unknown_refs"]``). Format 2
(positions, checked below ``known``) is what dump files written before it hold, and what
``dumpwrite`` writes from a snapshot already read; both are read.

Bounds (:class:`Limits`): the whole stream, each frame, the number of objects and of references
are bounded by the target's memory (a live stream: ``Limits.for_memory``, from its VmPeak) or by
the file's size (a recorded stream or dump file: ``Limits.for_file``): an object takes at least
16 bytes and a reference 8 in the process it came from.

Extending (bump FORMAT when old readers would misread the new stream):
  - a metadata field: write it into the walker's M (or E) dict, and add one line to META_FIELDS
    (or END_FIELDS) with its type; fields not listed are dropped on reading, so an unchecked
    value never reaches the analysis;
  - a per-object or per-reference array: add a column to OBJECT_COLUMNS (the walker appends the
    same column in the same place) or give it a frame kind of its own in ARRAY_FRAMES, with a
    range check in ``columns.Columns._check_columns``; Snapshot gets a field for it;
  - a JSON frame: a kind in JSON_MAX with its size bound, and a parse function.
Big heaps (issue 23): array frames go into narrow columns frame by frame (columns.py); dump
files (issue 19) are MAGIC + these frames, read by ``load_recorded`` under the file's own bounds.
"""

from __future__ import annotations

import json
import os
import select
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from introspect.channel import gc_facts_ok
from introspect.snapshot.columns import Columns, offsets_of, resolve
from introspect.snapshot.recformat import (
    _NUM as _NUM,
)
from introspect.snapshot.recformat import (
    ARRAY_FRAMES as ARRAY_FRAMES,
)
from introspect.snapshot.recformat import (
    ARRAY_HEADER as ARRAY_HEADER,
)
from introspect.snapshot.recformat import (
    END_FIELDS as END_FIELDS,
)
from introspect.snapshot.recformat import (
    EXCESS_COLUMNS as EXCESS_COLUMNS,
)
from introspect.snapshot.recformat import (
    FORMAT as FORMAT,
)
from introspect.snapshot.recformat import (
    FORMAT_FRAMES as FORMAT_FRAMES,
)
from introspect.snapshot.recformat import (
    IMMORTAL as IMMORTAL,
)
from introspect.snapshot.recformat import (
    JSON_MAX as JSON_MAX,
)
from introspect.snapshot.recformat import (
    MAGIC as MAGIC,
)
from introspect.snapshot.recformat import (
    MAGIC_2 as MAGIC_2,
)
from introspect.snapshot.recformat import (
    MAGICS as MAGICS,
)
from introspect.snapshot.recformat import (
    MAX_NAME as MAX_NAME,
)
from introspect.snapshot.recformat import (
    META_FIELDS as META_FIELDS,
)
from introspect.snapshot.recformat import (
    MIN_OBJECT as MIN_OBJECT,
)
from introspect.snapshot.recformat import (
    MIN_REF as MIN_REF,
)
from introspect.snapshot.recformat import (
    OBJECT_COLUMNS as OBJECT_COLUMNS,
)
from introspect.snapshot.recformat import (
    OBJECT_COLUMNS_3 as OBJECT_COLUMNS_3,
)
from introspect.snapshot.recformat import (
    PER_OBJECT as PER_OBJECT,
)
from introspect.snapshot.recformat import (
    PER_REF as PER_REF,
)
from introspect.snapshot.recformat import (
    ROOT_KINDS as ROOT_KINDS,
)
from introspect.snapshot.recformat import (
    SLACK as SLACK,
)
from introspect.snapshot.recformat import (
    FormatError as FormatError,
)
from introspect.snapshot.recformat import (
    Limits as Limits,
)
from introspect.snapshot.recformat import (
    StreamError as StreamError,
)


def target_memory(pid: int) -> int:
    """Bytes a process could have held objects in: its peak virtual size, capped by the machine's
    memory and swap (every object was written, so it is in RAM or swap)."""
    peak = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmPeak:"):
                    peak = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    machine = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("MemTotal:", "SwapTotal:")):
                    machine += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if peak and machine:
        return min(peak, machine)
    return peak or machine or 1 << 40


@dataclass(frozen=True)
class Root:
    kind: str  # "module" | "frame"
    name: str  # module name, or "thread T, f() line N, local x"
    pos: int


@dataclass
class Snapshot:
    """Every object of the target at the fork, by position (order of discovery)."""

    meta: dict[str, Any]
    types: list[str]  # type index -> module.qualname
    type_of: np.ndarray  # per object: uint16 (int32 past 65,536 types)
    size: np.ndarray  # shallow bytes per object: uint32 (int64 once one reaches 4 GiB)
    tracked: np.ndarray  # bool per object
    offsets: np.ndarray  # n + 1, int32 (int64 past 2**31 references): references of object i
    #                      are refs[offsets[i]:offsets[i + 1]]
    refs: np.ndarray  # int32 positions
    excess: np.ndarray  # int32 refcount minus the walker's own holds (clipped to int32)
    roots: list[Root]
    end: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.type_of.shape[0])

    def referents(self, pos: int) -> np.ndarray:
        return self.refs[self.offsets[pos] : self.offsets[pos + 1]]

    def type_name(self, pos: int) -> str:
        return self.types[int(self.type_of[pos])]


BIG_FRAME = 1 << 20  # bytes of a payload read into its own buffer (Reader._take_big)


class Reader:
    """Reads frames from a file descriptor (a FIFO or a file), every read bounded by ``deadline``
    and every frame by ``limits`` (see Limits: the default bounds nothing but a frame's uint32)."""

    def __init__(self, fd: int, deadline: float, limits: Limits | None = None) -> None:
        self.fd = fd
        self.deadline = deadline
        self.limits = limits or Limits(1 << 62, (1 << 31) - 1, 1 << 62, 1 << 62)
        self.buf = bytearray()
        self.eof = False
        self.consumed = 0  # bytes of the stream taken so far
        self.format = FORMAT  # the stream's, from its magic

    def _read(self, most: int) -> bytes:
        """Up to ``most`` bytes of the stream, waiting for them within the deadline."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the snapshot walker did not finish in time")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                break
        chunk = os.read(self.fd, most)
        if not chunk:
            self.eof = True
            raise StreamError("the snapshot stream ended early (the walker died)")
        return chunk

    def _fill(self, need: int) -> None:
        while len(self.buf) < need:
            self.buf += self._read(min(1 << 20, max(need - len(self.buf), 1 << 16)))

    def _take(self, n: int) -> bytes:
        if self.fd >= 0 and n >= BIG_FRAME and len(self.buf) < n:
            return self._take_big(n)
        self._fill(n)
        with memoryview(self.buf) as view:  # one copy (a bytearray slice would be a second)
            out = bytes(view[:n])
        del self.buf[:n]
        self.consumed += n
        return out

    def _take_big(self, n: int) -> bytes:
        """A big frame's payload (a container of a million items: 8 MB of addresses) grown from
        the stream in a buffer of its own as its bytes come (a frame announced but not sent
        costs nothing), never past it: not through ``buf`` and a copy of it, twice its size in
        the CLI at once."""
        out, self.buf = self.buf, bytearray()
        while len(out) < n:
            out += self._read(min(1 << 20, n - len(out)))
        self.consumed += n
        # a bytearray, read as bytes are (frombuffer, struct, json, concatenation): no copy
        return cast(bytes, out)

    def magic(self) -> None:
        head = self._take(len(MAGIC))
        if head not in MAGICS:
            raise FormatError(
                "magic", f"not a snapshot stream of format 2 or {FORMAT}: {head[:40]!r}"
            )
        self.format = MAGICS[head]

    def frame(self) -> tuple[bytes, bytes]:
        """The next frame's (kind, payload); an "X" frame raises the walker's error."""
        head = self._take(5)
        kind, length = head[:1], int.from_bytes(head[1:5], "little")
        if kind in JSON_MAX and length > JSON_MAX[kind]:
            raise FormatError(
                "frame size",
                f"a {kind.decode()!r} frame of {length:,} bytes (at most {JSON_MAX[kind]:,})",
            )
        if kind not in JSON_MAX and kind not in ARRAY_FRAMES:
            raise FormatError("frame kind", f"unknown frame kind {kind!r}")
        if (
            kind != b"L" and self.consumed + length > self.limits.max_bytes
        ):  # answers: bounded one by one
            raise FormatError(
                "stream size",
                f"a {kind.decode()!r} frame of {length:,} bytes takes the stream past its "
                f"bound of {self.limits.max_bytes:,} bytes (from the target's memory or the file's "
                "size)",
            )
        payload = self._take(length)
        if kind == b"X":
            err = _json(kind, payload)
            e = err.get("error") if isinstance(err, dict) else None
            if not isinstance(e, dict):
                raise FormatError("error frame", "an 'X' frame without an error object")
            raise StreamError(
                f"the walker failed: {_text(e.get('type'))}: {_text(e.get('message'))}"
            )
        return kind, payload


class BytesReader(Reader):
    """Frames from bytes already in memory (a recorded stream, a test's mutated one)."""

    def __init__(self, data: bytes, limits: Limits | None = None) -> None:
        super().__init__(-1, float("inf"), limits or Limits.for_file(len(data)))
        self.buf = bytearray(data)

    def _fill(self, need: int) -> None:
        if len(self.buf) < need:
            self.eof = True
            raise StreamError("the snapshot stream ended early (the walker died)")


def _text(v: object) -> str:
    return v[:MAX_NAME] if isinstance(v, str) else "?"


def _json(kind: bytes, payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(
            "json", f"the {kind.decode(errors='replace')!r} frame is not valid JSON: {exc}"
        ) from None


def _fields(
    kind: bytes, doc: Any, spec: dict[str, tuple[type, ...]], required: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise FormatError("json object", f"the {kind.decode()!r} frame is not a JSON object")
    out: dict[str, Any] = {}
    for key, types in spec.items():
        if key not in doc:
            if key in required:
                raise FormatError("field", f"the {kind.decode()!r} frame has no {key!r}")
            continue
        v = doc[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise FormatError(
                "field type",
                f"{key!r} of the {kind.decode()!r} frame is {type(v).__name__}, "
                f"not {'/'.join(t.__name__ for t in types)}",
            )
        out[key] = v
    return out


def lean_malloc() -> None:
    """Give big arrays back to the system as soon as they are freed (glibc): every allocation of
    4 MiB or more is its own mapping (smaller blocks are reused from the heap). glibc's default
    raises that threshold to the size of the last freed mapping (up to 32 MiB), after which the
    analysis' freed temporaries stay in the CLI's heap and its RSS only grows. No-op elsewhere
    (musl, macOS) or when it fails."""
    global _LEAN
    if _LEAN:
        return
    _LEAN = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None:
            mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD: fixed, no dynamic raise
            mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD: the heap's free top back above 1 MiB
    except (OSError, AttributeError):
        pass


_LEAN = False


def read_snapshot(
    reader: Reader,
    tee: list[bytes] | None = None,
    on_meta: Callable[[dict[str, Any]], None] | None = None,
    on_objects: Callable[[int, int], None] | None = None,
    sink: Callable[[bytes, bytes], None] | None = None,
    cols: Columns | None = None,
) -> Snapshot:
    """Read one whole snapshot (up to its "E" frame), every rule checked. ``tee`` collects the
    raw frames (recording); ``on_meta`` sees the walker's facts (its pid) as soon as they arrive;
    ``on_objects`` sees (objects streamed, positions known) after each object frame (progress).
    ``sink`` sees each frame's (kind, payload) once it is checked, the M and E frames as their
    checked fields only (a dump streamed to its file); ``cols`` (a Columns of the reader's
    limits) keeps only its ``keep`` columns: the Snapshot's others are then empty.
    A walk stopped by its budget is whole in its format, its ``end["partial"]`` saying why."""
    reader.magic()
    meta: dict[str, Any] | None = None
    types: list[str] = []
    roots: list[Root] | None = None
    lean_malloc()
    cols = cols if cols is not None else Columns(reader.limits)
    cols.fmt = reader.format
    while True:
        kind, payload = reader.frame()
        if tee is not None:
            tee.append(kind + len(payload).to_bytes(4, "little") + payload)
        if meta is None and kind != b"M":
            raise FormatError("meta first", f"the stream starts with a {kind!r} frame, not 'M'")
        if kind == b"M":
            if meta is not None:
                raise FormatError("one meta frame", "a second 'M' frame")
            meta = _fields(
                kind, _json(kind, payload), META_FIELDS, ("format", "pid", "start_ticks")
            )
            if "gc" in meta and not gc_facts_ok(meta["gc"]):
                raise FormatError(
                    "field type", "'gc' of the 'M' frame is not {enabled, counts, frozen}"
                )
            if meta["format"] != reader.format:
                raise FormatError(
                    "format",
                    f"snapshot format {meta['format']} in a stream of format {reader.format}",
                )
            if meta.get("byteorder", "little") != "little":
                raise FormatError(
                    "byte order", f"byteorder {meta.get('byteorder')!r} (arrays are little endian)"
                )
            if on_meta is not None:
                on_meta(meta)
        elif kind == b"T":
            _add_types(types, _json(kind, payload), reader.limits)
            cols.ntypes = len(types)
        elif kind == b"R":
            if roots is not None:
                raise FormatError("one roots frame", "a second 'R' frame")
            roots = _roots(_json(kind, payload))
        elif kind in ARRAY_FRAMES:
            cols.add(kind, payload)
            if on_objects is not None and kind == b"O":
                on_objects(cols.objects, cols.known)
        elif kind == b"E":
            end = _fields(kind, _json(kind, payload), END_FIELDS, ("objects", "edges"))
            if "partial" in end:
                end["partial"] = _text(end["partial"])[:1000]
            break
        else:
            raise FormatError("frame order", f"a {kind!r} frame before the end of the snapshot")
        if sink is not None:
            sink(kind, _compact(meta or {}) if kind == b"M" else payload)
    n = cols.objects
    if end["objects"] != n or end["edges"] != cols.refs:
        raise FormatError(
            "end counts",
            f"the end frame says {end['objects']:,} objects and {end['edges']:,} references, "
            f"the stream carried {n:,} and {cols.refs:,}",
        )
    if cols.known != n:
        raise FormatError(
            "every position streamed",
            f"{cols.known:,} positions were handed out, {n:,} objects streamed",
        )
    if cols.excess != n:
        raise FormatError(
            "refcount per object", f"{n:,} objects but {cols.excess:,} refcounts in the stream"
        )
    roots = roots or []
    bad = next((r for r in roots if r.pos >= n), None)
    if bad is not None:
        raise FormatError(
            "root index", f"root {bad.name[:80]!r} at position {bad.pos:,} of {n:,} objects"
        )
    if sink is not None:  # only once the whole snapshot is checked
        sink(b"E", _compact(end))
    if cols.keep is not None and "offsets" in cols.keep:  # summed as the frames came
        offsets = cols.column("offsets", "int64")
        offsets = offsets if offsets.shape[0] else np.zeros(1, np.int32)
    else:
        offsets = offsets_of(cols.column("nrefs", "<u4"))
    refs = cols.column("refs", "int32" if reader.format == 2 else "<u8")
    if reader.format != 2:  # addresses: mapped to positions, then freed
        end.pop("unknown_refs", None)  # the CLI's own counts, never the walker's
        end.pop("duplicate_objects", None)
        refs, offsets, dropped, dups = resolve(cols.column("addr", "<u8"), refs, offsets)
        if dropped:
            end["unknown_refs"] = dropped
        if dups:
            end["duplicate_objects"] = dups
    return Snapshot(
        meta=meta or {},
        types=types,
        type_of=cols.column("type_of", "int32"),  # uint16 unless the types outgrow it
        size=cols.column("size", "int64"),  # uint32 unless an object reaches 4 GiB
        tracked=cols.column("tracked", "u1").view(bool),
        offsets=offsets,
        refs=refs,
        excess=cols.column("excess", "int64"),  # int32, clipped
        roots=roots,
        end=end,
    )


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _add_types(types: list[str], doc: Any, limits: Limits) -> None:
    if not isinstance(doc, list):
        raise FormatError("types", "a 'T' frame is not a list")
    for item in doc:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and type(item[0]) is int
            and isinstance(item[1], str)
        ):
            raise FormatError("types", "a 'T' entry is not [index, name]")
        if item[0] != len(types):
            raise FormatError(
                "type index", f"type {item[0]!r} declared where {len(types)} comes next"
            )
        if len(item[1]) > MAX_NAME:
            raise FormatError("name length", f"a type name of {len(item[1]):,} characters")
        if len(types) >= limits.max_objects:
            raise FormatError(
                "object and reference bounds", "more types than objects the target can hold"
            )
        types.append(item[1])


def _roots(doc: Any) -> list[Root]:
    if not isinstance(doc, list):
        raise FormatError("roots", "the 'R' frame is not a list")
    out = []
    for item in doc:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and item[0] in ROOT_KINDS
            and isinstance(item[1], str)
            and type(item[2]) is int
        ):
            raise FormatError("roots", "an 'R' entry is not [module|frame, description, position]")
        if item[2] < 0:
            raise FormatError("root index", f"root {item[1][:80]!r} at position {item[2]}")
        if len(item[1]) > MAX_NAME:
            raise FormatError("name length", f"a root description of {len(item[1]):,} characters")
        out.append(Root(item[0], item[1], item[2]))
    return out


def load_recorded(path: str, deadline_s: float = 60.0) -> Snapshot:
    """A snapshot recorded to a file (MAGIC + frames, as streamed), bounded by the file's size."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError("file", f"{path} is not a regular file")
        return read_snapshot(Reader(fd, time.monotonic() + deadline_s, Limits.for_file(st.st_size)))
    finally:
        os.close(fd)
