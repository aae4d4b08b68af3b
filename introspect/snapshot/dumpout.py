"""A dump file's output: one zlib stream made of pieces compressed apart, by COMPRESSORS threads
of their own (zlib releases the GIL), written in order by the CLI's thread, at most QUEUED pieces
in flight; the JSON chunks the answers are written as. Used by dumpwrite.py (the file) and
dumplabels.py (the labels)."""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import zlib
from collections import deque
from typing import Any

QUEUED = 16  # pieces of at most a MiB being compressed or waiting to be written, at most
PIECE = 1 << 18  # bytes of small frames gathered into one piece (one hand-over to a thread)
COMPRESSORS = 2  # threads compressing pieces at once
ZLIB_HEADER = b"\x78\x01"  # deflate, a 32 KiB window, level 1: what compressobj(1) writes


def adler32_combine(a: int, b: int, len_b: int) -> int:
    """The Adler-32 of two pieces one after the other, from each one's (zlib's adler32_combine)."""
    base = 65521
    rem = len_b % base
    s1 = a & 0xFFFF
    s2 = rem * s1 % base
    s1 += (b & 0xFFFF) + base - 1
    s2 += ((a >> 16) & 0xFFFF) + ((b >> 16) & 0xFFFF) + base - rem
    s1 = s1 - base if s1 >= base else s1
    s1 = s1 - base if s1 >= base else s1
    s2 = s2 - 2 * base if s2 >= 2 * base else s2
    s2 = s2 - base if s2 >= base else s2
    return s1 | (s2 << 16)


class _Piece:
    """A piece of the stream: its bytes, then (compressed by a thread) its deflate blocks, ending
    on a byte (a sync flush: the next piece's blocks follow it), and its Adler-32."""

    __slots__ = ("data", "out", "adler", "size", "error", "done")

    def __init__(self, data: memoryview) -> None:
        self.data: memoryview | None = data
        self.size = len(data)
        self.out = b""
        self.adler = 1
        self.error: BaseException | None = None
        self.done = threading.Event()


def _compress(jobs: queue.SimpleQueue[_Piece | None]) -> None:
    while True:
        piece = jobs.get()
        if piece is None:
            return
        try:
            assert piece.data is not None
            z = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate: no header of its own
            piece.out = z.compress(piece.data) + z.flush(zlib.Z_SYNC_FLUSH)
            piece.adler = zlib.adler32(piece.data)
        except BaseException as exc:  # noqa: BLE001 - raised in the CLI's thread (_drain)
            piece.error = exc
        piece.data = None
        piece.done.set()


class _Out:
    """A compressed, streamed file: frames are gathered into pieces, each compressed by one of
    COMPRESSORS threads (the CLI makes the next frames meanwhile: about a second of CPU per
    200 MB at 5M objects, on as many cores as there are), written in order as one zlib stream
    (each piece's deflate blocks end on a byte: they follow one another; the Adler-32s of the
    pieces combined); at most QUEUED pieces in flight."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = 0
        self.written = 0
        self.adler = 1
        self.started = False  # the zlib header written
        self.jobs: queue.SimpleQueue[_Piece | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.pending: deque[_Piece] = deque()
        self.small: list[bytes] = []  # small frames' bytes not handed over yet
        self.gathered = 0  # their bytes

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n

    def _drain(self, keep: int) -> None:
        """Pieces written, oldest first, until at most ``keep`` are in flight."""
        while len(self.pending) > keep:
            piece = self.pending.popleft()
            piece.done.wait()
            if piece.error is not None:
                raise piece.error
            self._write(piece.out)
            self.adler = adler32_combine(self.adler, piece.adler, piece.size)

    def _submit(self, data: memoryview) -> None:
        if not self.threads:
            for k in range(COMPRESSORS):
                t = threading.Thread(
                    target=_compress, args=(self.jobs,), name=f"dump-zlib-{k}", daemon=True
                )
                t.start()
                self.threads.append(t)
        if not self.started:
            self._write(ZLIB_HEADER)
            self.started = True
        piece = _Piece(data)
        self.pending.append(piece)
        self.jobs.put(piece)
        self._drain(QUEUED)

    def put(self, data: bytes) -> None:
        self.raw += len(data)
        if len(data) < PIECE:  # gathered: a hand-over per PIECE
            self.small.append(data)
            self.gathered += len(data)
            if self.gathered >= PIECE:
                self._hand()
            return
        self._hand()
        view = memoryview(data)
        for a in range(0, len(view), 1 << 20):  # a big frame a MiB at a time
            self._submit(view[a : a + (1 << 20)])

    def _hand(self) -> None:
        """The small frames gathered handed to a compressing thread, as one piece."""
        if self.small:
            self._submit(memoryview(b"".join(self.small)))
            self.small, self.gathered = [], 0

    def stop(self) -> None:
        """The compressing threads gone (what they were given finished, not written)."""
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()
        self.threads = []
        self.pending.clear()

    def frame(self, kind: bytes, payload: bytes) -> None:
        self.put(kind + len(payload).to_bytes(4, "little"))
        self.put(payload)

    def json(self, kind: bytes, doc: Any) -> None:
        self.frame(kind, json.dumps(doc, separators=(",", ":")).encode())

    def finish(self) -> None:
        """Everything put written, then the stream's end: a last (empty) block and the
        Adler-32 of everything put."""
        self._hand()
        if not self.started:
            self._write(ZLIB_HEADER)
            self.started = True
        self._drain(0)
        self.stop()
        self._write(zlib.compressobj(1, zlib.DEFLATED, -15).flush())
        self._write(self.adler.to_bytes(4, "big"))


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
