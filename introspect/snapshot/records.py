"""The record stream between the agent's walker and the CLI (format 1; see agent.py, "forked
snapshot"). Frames: kind (1 byte) + length (4 bytes, little endian) + payload."""

from __future__ import annotations

import json
import marshal
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"INTROSPECT-SNAPSHOT 1\n"
FORMAT = 1
# CPython 3.12+ immortal objects report a refcount near 2**32 (3.14: 3 << 30): never "held from C".
IMMORTAL = 1 << 28


class StreamError(Exception):
    """The stream ended early, broke the format, or the walker reported an error."""


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
    type_of: np.ndarray  # int32 per object
    size: np.ndarray  # int64 shallow bytes per object
    tracked: np.ndarray  # bool per object
    offsets: np.ndarray  # int64, n + 1: references of object i are refs[offsets[i]:offsets[i + 1]]
    refs: np.ndarray  # int32 positions
    excess: np.ndarray  # int64 refcount minus the walker's own holds
    roots: list[Root]
    end: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.type_of.shape[0])

    def referents(self, pos: int) -> np.ndarray:
        return self.refs[self.offsets[pos]:self.offsets[pos + 1]]

    def type_name(self, pos: int) -> str:
        return self.types[int(self.type_of[pos])]


class Reader:
    """Reads frames from a file descriptor (a FIFO), every read bounded by ``deadline``."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.buf = bytearray()
        self.eof = False

    def _fill(self, need: int) -> None:
        while len(self.buf) < need:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the snapshot walker did not finish in time")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                self.eof = True
                raise StreamError("the snapshot stream ended early (the walker died)")
            self.buf += chunk

    def magic(self) -> None:
        self._fill(len(MAGIC))
        head = bytes(self.buf[:len(MAGIC)])
        del self.buf[:len(MAGIC)]
        if head != MAGIC:
            raise StreamError(f"not a snapshot stream of format {FORMAT}: {head[:40]!r}")

    def frame(self) -> tuple[bytes, bytes]:
        self._fill(5)
        kind = bytes(self.buf[:1])
        length = int.from_bytes(self.buf[1:5], "little")
        self._fill(5 + length)
        payload = bytes(self.buf[5:5 + length])
        del self.buf[:5 + length]
        if kind == b"X":
            err = json.loads(payload).get("error") or {}
            raise StreamError(f"the walker failed: {err.get('type')}: {err.get('message')}")
        return kind, payload


def read_snapshot(reader: Reader, tee: list[bytes] | None = None,
                  on_meta: Callable[[dict[str, Any]], None] | None = None) -> Snapshot:
    """Read one whole snapshot (up to its "E" frame). ``tee`` collects the raw frames (recording);
    ``on_meta`` sees the walker's facts (its pid) as soon as they arrive."""
    reader.magic()
    meta: dict[str, Any] = {}
    types: dict[int, str] = {}
    roots: list[Root] = []
    t_parts: list[np.ndarray] = []
    s_parts: list[np.ndarray] = []
    f_parts: list[np.ndarray] = []
    n_parts: list[np.ndarray] = []
    r_parts: list[np.ndarray] = []
    c_parts: list[np.ndarray] = []
    while True:
        kind, payload = reader.frame()
        if tee is not None:
            tee.append(kind + len(payload).to_bytes(4, "little") + payload)
        if kind == b"M":
            meta = json.loads(payload)
            if meta.get("format") != FORMAT:
                raise StreamError(f"snapshot format {meta.get('format')} is not {FORMAT}: CLI and agent differ")
            if on_meta is not None:
                on_meta(meta)
        elif kind == b"T":
            types.update((int(i), str(name)) for i, name in json.loads(payload))
        elif kind == b"R":
            roots = [Root(str(k), str(name), int(pos)) for k, name, pos in json.loads(payload)]
        elif kind == b"O":
            _start, t, s, f, nr, r = marshal.loads(payload)
            t_parts.append(np.asarray(t, dtype=np.int32))
            s_parts.append(np.asarray(s, dtype=np.int64))
            f_parts.append(np.asarray(f, dtype=bool))
            n_parts.append(np.asarray(nr, dtype=np.int64))
            r_parts.append(np.asarray(r, dtype=np.int32))
        elif kind == b"C":
            _start, c = marshal.loads(payload)
            c_parts.append(np.asarray(c, dtype=np.int64))
        elif kind == b"E":
            end = json.loads(payload)
            break
        else:
            raise StreamError(f"unknown frame kind {kind!r}")
    cat = np.concatenate
    nrefs = cat(n_parts) if n_parts else np.zeros(0, np.int64)
    offsets = np.zeros(nrefs.shape[0] + 1, np.int64)
    np.cumsum(nrefs, out=offsets[1:])
    type_of = cat(t_parts) if t_parts else np.zeros(0, np.int32)
    excess = cat(c_parts) if c_parts else np.zeros(0, np.int64)
    if excess.shape[0] != type_of.shape[0]:
        raise StreamError(f"{type_of.shape[0]} objects but {excess.shape[0]} refcounts in the stream")
    return Snapshot(meta=meta, types=[types.get(i, "?") for i in range(max(types) + 1 if types else 0)],
                    type_of=type_of, size=cat(s_parts) if s_parts else np.zeros(0, np.int64),
                    tracked=cat(f_parts) if f_parts else np.zeros(0, bool), offsets=offsets,
                    refs=cat(r_parts) if r_parts else np.zeros(0, np.int32), excess=excess, roots=roots, end=end)


def load_recorded(path: str) -> Snapshot:
    """A snapshot recorded to a file (MAGIC + frames, as streamed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_snapshot(Reader(fd, time.monotonic() + 60))
    finally:
        os.close(fd)
