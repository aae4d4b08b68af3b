"""The live walker after its stream (snapshot.collect): the forked copy answers questions about
the objects of its snapshot -- edge labels, names, container lengths, previews of builtin
values, duplicates, allocation sites, the allocators' figures -- over a control FIFO, one JSON
answer frame each, every answer checked (the walker is data from the target), then it is gone.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from introspect.snapshot.records import Reader


def _is_int(x: object) -> bool:
    return type(x) is int


def _is_str(x: object) -> bool:
    return isinstance(x, str) and len(x) <= 1 << 16


def _is_site(x: object) -> bool:
    """An allocation site as the walker answers it: [file, line, ...], or nothing."""
    if x is None or x == []:
        return True
    return isinstance(x, list) and len(x) >= 2 and _is_str(x[0]) and type(x[1]) is int


def _start_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return -1


def host_pid(target_pid: int, pid: int, start_ticks: int) -> int:
    """The walker's pid as this CLI sees it, from the pid it reported (its own getpid()).

    The same number, unless the target is in a pid namespace of its own (a container): then it
    is the process of the target's pid namespace whose NSpid (/proc/PID/status) ends in that
    number, started at the walker's start time. 0 when none is (the walker is gone): nothing is
    then killed by a number that names another process here.
    """
    try:
        ns = os.readlink(f"/proc/{target_pid}/ns/pid")
        if ns == os.readlink("/proc/self/ns/pid"):
            return pid
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return pid
    for name in entries:
        try:
            if os.readlink(f"/proc/{name}/ns/pid") != ns:
                continue
            with open(f"/proc/{name}/status", "rb") as f:
                nspid = next((ln.split()[1:] for ln in f if ln.startswith(b"NSpid:")), [])
        except OSError:
            continue
        if nspid and nspid[-1] == str(pid).encode() and _start_ticks(int(name)) == start_ticks:
            return int(name)
    return 0


class Walker:
    """The live walker after its stream: edge labels and names on demand, then gone."""

    def __init__(
        self, reader: Reader, control_host: str, pid: int, start_ticks: int, deadline: float
    ) -> None:
        self.reader = reader
        self.control_host = control_host
        self.pid = pid
        self.start_ticks = start_ticks
        self.deadline = deadline
        self.cfd = -1
        self.n = -1  # objects in the snapshot, once read: bounds the positions the walker answers

    def _ask(
        self, line: str, count: int | None = None, item: Callable[[Any], bool] = lambda x: True
    ) -> list[Any]:
        """The walker's answer to one question: a JSON list of ``count`` entries (if given), each
        passing ``item``; anything else is a FormatError (the walker is data from the target)."""
        from introspect.snapshot.records import FormatError, StreamError, _json

        if self.cfd < 0:
            while True:  # the walker opens its end after its last frame; never block on a dead one
                try:
                    self.cfd = os.open(self.control_host, os.O_WRONLY | os.O_NONBLOCK)
                    os.set_blocking(self.cfd, True)
                    break
                except OSError as exc:
                    if (
                        exc.errno != errno.ENXIO
                        or time.monotonic() > self.deadline
                        or not self.alive()
                    ):
                        raise StreamError("the snapshot walker stopped answering") from None
                    time.sleep(0.005)
        os.write(self.cfd, line.encode() + b"\n")
        kind, payload = self.reader.frame()
        if kind != b"L":
            raise FormatError("answer frame", f"a {kind!r} frame where an answer ('L') belongs")
        answer = _json(kind, payload)
        if not isinstance(answer, list) or (count is not None and len(answer) != count):
            raise FormatError(
                "answer shape",
                f"the walker's answer to {line[:1]!r} is not a list of {count} entries",
            )
        if not all(item(x) for x in answer):
            raise FormatError(
                "answer type", f"an entry of the walker's answer to {line[:1]!r} has the wrong type"
            )
        return answer

    def labels(self, edges: Sequence[tuple[int, int]]) -> list[str]:
        out: list[str] = []
        for k in range(0, len(edges), 2000):
            chunk = edges[k : k + 2000]
            out += self._ask("L " + " ".join(f"{a} {b}" for a, b in chunk), len(chunk), _is_str)
        return out

    def names(self, positions: Sequence[int]) -> list[str]:
        out: list[str] = []
        for k in range(0, len(positions), 4000):
            chunk = positions[k : k + 4000]
            out += self._ask("N " + " ".join(str(p) for p in chunk), len(chunk), _is_str)
        return out

    def counts(self, positions: Sequence[int]) -> list[int]:
        """Items of each builtin container (dict: its keys, whatever the walk saw of them); -1 for
        others."""
        out: list[int] = []
        for k in range(0, len(positions), 4000):
            chunk = positions[k : k + 4000]
            out += self._ask("C " + " ".join(str(p) for p in chunk), len(chunk), _is_int)
        return out

    def previews(self, positions: Sequence[int]) -> list[str]:
        """Short texts of builtin values (str, bytes, numbers, containers of those), made in the
        frozen copy; any other object is named by its type, never repr()'d."""
        out: list[str] = []
        for k in range(0, len(positions), 1000):
            chunk = positions[k : k + 1000]
            out += self._ask("P " + " ".join(str(p) for p in chunk), len(chunk), _is_str)
        return out

    def duplicates(self, min_len: int = 8, top: int = 50) -> list[list[Any]]:
        """Equal str/bytes values held as distinct objects: [type, length, copies, bytes of one,
        [positions of up to 5 copies]], most wasted bytes first."""

        n = self.n if self.n >= 0 else 1 << 31  # every position one of the snapshot's

        def group(g: Any) -> bool:
            return (
                isinstance(g, list)
                and len(g) == 5
                and _is_str(g[0])
                and all(map(_is_int, g[1:4]))
                and isinstance(g[4], list)
                and all(_is_int(q) and 0 <= q < n for q in g[4])
            )

        answer = self._ask(f"W {int(min_len)} {int(top)}", None, group)
        return answer[: max(0, int(top))]

    def freevars(self, positions: Sequence[int]) -> list[list[str]]:
        out: list[list[str]] = []
        for k in range(0, len(positions), 4000):
            chunk = positions[k : k + 4000]
            out += self._ask(
                "V " + " ".join(str(p) for p in chunk),
                len(chunk),
                lambda x: isinstance(x, list) and all(_is_str(v) for v in x),
            )
        return out

    def traces(self, depth: int) -> dict[str, Any]:
        """tracemalloc's facts and live traces grouped by ``depth`` frames, read in the walker."""
        answer: dict[str, Any] = self._ask(f"G {depth}", 1, lambda x: isinstance(x, dict))[0]
        if "error" in answer:
            from introspect.snapshot.records import StreamError

            err = answer["error"] if isinstance(answer["error"], dict) else {}
            raise StreamError(
                f"reading the traces failed in the walker: {err.get('type')}: {err.get('message')} "
                f"{str(err.get('frames', []))[-300:]}"
            )
        return answer

    def memory(self) -> dict[str, Any]:
        """The allocators' figures the walker read before its walk (asked for with memory=True),
        checked field by field (breakdown.checked_copy): a wrong shape is a FormatError."""
        from introspect.breakdown import checked_copy
        from introspect.snapshot.records import FormatError

        answer = self._ask("B", 1, lambda x: isinstance(x, dict))[0]
        try:
            return checked_copy(answer)
        except ValueError as exc:
            raise FormatError("memory answer", str(exc)) from None

    def tracing(self) -> bool:
        """Does the target trace allocations (tracemalloc on in the frozen copy)?"""
        return bool(self._ask("A", 3)[0])

    def allocated(self, positions: Sequence[int]) -> tuple[bool, list[list[Any] | None], str]:
        """(tracing on?, the innermost allocation frame of each object as [file, line] or, where
        an object it alone holds stands in (CPython 3.11), [file, line, "held"], None when
        untraced; how the copy walked: "paused" when it traced none of its own allocations)."""
        tracing_on = False
        walk = ""
        out: list[list[Any] | None] = []
        for k in range(0, len(positions), 4000):
            chunk = positions[k : k + 4000]
            answer = self._ask("A " + " ".join(str(p) for p in chunk), 3)
            if not answer[0]:
                return False, [], ""
            sites = answer[1]
            if not (
                isinstance(sites, list) and len(sites) == len(chunk) and all(map(_is_site, sites))
            ):
                from introspect.snapshot.records import FormatError

                raise FormatError(
                    "answer type", "the walker's allocation sites are not [[file, line] or null]"
                )
            tracing_on = True
            walk = str(answer[2])
            out += [[str(x[0]), int(x[1]), *x[2:3]] if x else None for x in sites]
        return tracing_on, out, walk

    def alive(self) -> bool:
        return self.pid > 0 and _start_ticks(self.pid) == self.start_ticks

    def close(self) -> None:
        if self.cfd >= 0:
            try:
                os.write(self.cfd, b"Q\n")
            except OSError:
                pass
            os.close(self.cfd)
            self.cfd = -1

    def kill(self) -> None:
        """SIGKILL the walker if it is still this walker (pid and start time both match)."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
