"""A dump file's output: zlib and the writes in a thread of their own (both release the GIL), at
most QUEUED pieces waiting, a write error handed back to the CLI's thread; the JSON chunks the
answers are written as. Used by dumpwrite.py (the file) and dumplabels.py (the labels)."""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import zlib
from typing import Any

QUEUED = 16  # pieces of at most a MiB waiting for the writer thread, at most
PIECE = 1 << 18  # bytes of small frames gathered into one piece (one hand-over to the thread)


class _Out:
    """A compressed, streamed file: frames go through zlib to disk as they are made, by a thread
    of its own (zlib and the writes release the GIL: the CLI makes the next frames meanwhile,
    about a second of CPU per 200 MB at 5M objects); at most QUEUED pieces wait for it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.z = zlib.compressobj(1)  # level 6: 6 % smaller, 5x the CPU
        self.raw = 0
        self.written = 0
        self.queue: queue.Queue[memoryview | None] = queue.Queue(QUEUED)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.small: list[bytes] = []  # small frames' bytes not handed over yet
        self.gathered = 0  # their bytes

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                out = self.z.compress(item)
                if out:
                    self._write(out)
        except BaseException as exc:  # noqa: BLE001 - raised in the CLI's thread (put, finish)
            self.error = exc
            while self.queue.get() is not None:  # whatever comes is dropped: put never blocks
                pass

    def put(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="dump-writer", daemon=True)
            self.thread.start()
        self.raw += len(data)
        if len(data) < PIECE:  # gathered: a hand-over to the thread (and zlib) per PIECE
            self.small.append(data)
            self.gathered += len(data)
            if self.gathered >= PIECE:
                self._hand()
            return
        self._hand()
        view = memoryview(data)
        for a in range(0, len(view), 1 << 20):  # a big frame a MiB at a time
            self.queue.put(view[a : a + (1 << 20)])

    def _hand(self) -> None:
        """The small frames gathered handed to the writer thread, as one piece."""
        if self.small:
            self.queue.put(memoryview(b"".join(self.small)))
            self.small, self.gathered = [], 0

    def stop(self) -> None:
        """The writer thread done with everything put (and gone)."""
        if self.thread is not None:
            if self.error is None:
                self._hand()
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def frame(self, kind: bytes, payload: bytes) -> None:
        self.put(kind + len(payload).to_bytes(4, "little"))
        self.put(payload)

    def json(self, kind: bytes, doc: Any) -> None:
        self.frame(kind, json.dumps(doc, separators=(",", ":")).encode())

    def finish(self) -> None:
        self.stop()
        if self.error is not None:
            raise self.error
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
