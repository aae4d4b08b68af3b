"""The record stream's format (records.py has the whole description): its constants, the
bounds of one stream (Limits) and the errors a stream that breaks a rule ends in. Kept apart so
that the readers above it (records.py for frames, columns.py for array frames) share it without
importing each other.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from introspect import errors

# Format 3 (issue 23): the walker sends addresses (ids), the CLI maps them to positions. Format 2
# (positions from the walker) is still read: dump files written before, and dumps' --keep copies.
MAGIC = b"INTROSPECT-SNAPSHOT 3\n"
FORMAT = 3
MAGIC_2 = b"INTROSPECT-SNAPSHOT 2\n"
MAGICS: dict[bytes, int] = {MAGIC_2: 2, MAGIC: 3}
# CPython 3.12+ immortal objects report a refcount near 2**32 (3.14: 3 << 30): never "held from C".
IMMORTAL = 1 << 28
ARRAY_HEADER = struct.Struct("<4Q")  # start, count, items, known

PER_OBJECT, PER_REF = "object", "ref"
# (Snapshot field, numpy dtype, entries per object or per reference), in payload order.
OBJECT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("size", "<i8", PER_OBJECT),  # shallow bytes
    ("type_of", "<i4", PER_OBJECT),  # index into the types
    ("nrefs", "<u4", PER_OBJECT),  # references of each object, in order
    ("refs", "<i4", PER_REF),  # referenced positions
    ("tracked", "u1", PER_OBJECT),  # 1 if gc tracks the object
)
# Format 3: references are the referents' addresses, and each object's own address comes last;
# the CLI maps addresses to positions once the stream is read (columns.resolve).
OBJECT_COLUMNS_3: tuple[tuple[str, str, str], ...] = (
    ("size", "<i8", PER_OBJECT),
    ("type_of", "<i4", PER_OBJECT),
    ("nrefs", "<u4", PER_OBJECT),
    ("refs", "<u8", PER_REF),  # referenced addresses
    ("tracked", "u1", PER_OBJECT),
    ("addr", "<u8", PER_OBJECT),  # the object's own address (id)
)
EXCESS_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("excess", "<i8", PER_OBJECT),  # refcount minus the walker's own holds
)
ARRAY_FRAMES: dict[bytes, tuple[tuple[str, str, str], ...]] = {
    b"O": OBJECT_COLUMNS_3,
    b"C": EXCESS_COLUMNS,
}
# array frames by format
FORMAT_FRAMES: dict[int, dict[bytes, tuple[tuple[str, str, str], ...]]] = {
    2: {b"O": OBJECT_COLUMNS, b"C": EXCESS_COLUMNS},
    3: ARRAY_FRAMES,
}
# Largest payload of each JSON frame kind.
JSON_MAX: dict[bytes, int] = {
    b"M": 1 << 20,
    b"T": 16 << 20,
    b"R": 64 << 20,
    b"E": 1 << 20,
    b"X": 1 << 20,
    b"L": 64 << 20,
    # dump files only (snapshot.dumpfile), after E: process facts, answers, the dump's end
    b"D": 1 << 20,
    b"Y": 64 << 20,
    b"Z": 1 << 20,
}
MAX_NAME = 64 << 10  # characters of one type name, root description or label
ROOT_KINDS = ("module", "frame")
_NUM = (int, float)
META_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,),
    "pid": (int,),
    "start_ticks": (int,),
    "python": (str,),
    "gc": (dict,),
    "gc_objects": (int,),
    "byteorder": (str,),
    "time": _NUM,
}
END_FIELDS: dict[str, tuple[type, ...]] = {
    "objects": (int,),
    "edges": (int,),
    "walk_s": _NUM,
    "walk_cpu_s": _NUM,  # the walk's CPU time in the copy (format 3)
    "total_s": _NUM,
    "walker": (str,),  # "compiled" (agent/_cwalk.c), or "python (why)"
    "partial": (str,),  # why the walk stopped early: objects past it are listed without references
    "unknown_refs": (int,),  # format 3: references to no object's address, dropped (the CLI's)
    "duplicate_objects": (int,),  # format 3: objects at an address streamed before (the CLI's)
}
MIN_OBJECT = 16  # bytes: a PyObject header (refcount, type)
MIN_REF = 8  # bytes: a pointer
SLACK = 64 << 20  # objects the walker's copy made after the fork (its own imports are left out)


class StreamError(errors.AgentError):
    """The stream ended early, or the walker reported an error (exit 11)."""


class FormatError(StreamError):
    """The stream breaks a rule of the format (exit 14): refused whole."""

    exit_code = 14
    help_text = (
        "The target (or a file) sent records that break their format; nothing of them was used. "
        "A damaged or hostile process can do this: the target itself was not touched by the check."
    )

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"the snapshot records break the rule '{rule}': {detail}")
        self.rule = rule


@dataclass(frozen=True)
class Limits:
    """Bounds of one stream: bytes in all, objects, references."""

    max_bytes: int
    max_objects: int
    max_refs: int
    max_size: int  # one object's shallow size

    @classmethod
    def for_memory(cls, mem: int) -> Limits:
        """A live stream of a process that had at most ``mem`` bytes of memory at the fork."""
        mem = max(mem, 0) + SLACK
        objects = min(mem // MIN_OBJECT, (1 << 31) - 1)  # positions are int32
        refs = mem // MIN_REF
        columns = sum(
            np.dtype(d).itemsize
            for _, d, per in OBJECT_COLUMNS_3 + EXCESS_COLUMNS
            if per == PER_OBJECT
        )
        json_room = (
            sum(JSON_MAX.values()) + objects * 4
        )  # T frames: a new type is at most one per object
        return cls(objects * columns + refs * 8 + json_room, objects, refs, mem)

    @classmethod
    def for_file(cls, size: int) -> Limits:
        """A recorded stream or dump file of ``size`` bytes: nothing in it can be larger."""
        return cls(size, size, size, 1 << 62)
