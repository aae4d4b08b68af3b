"""Take a forked snapshot of a live target, or say why not (then the caller runs in-process).

The target pays for one fork (plus the reap of the intermediate child): the walker, its
grandchild, streams records through a FIFO in the run dir and answers label questions through a
second one while the CLI analyses. The walker is killed by pid (checked against its start time)
whenever the CLI gives up, fails, or is interrupted; it also has its own deadline (SIGALRM).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from introspect import errors
from introspect.channel import RunDir
from introspect.runner import Outcome, run_agent
from introspect.snapshot.walker import Walker as Walker
from introspect.snapshot.walker import _start_ticks as _start_ticks
from introspect.snapshot.walker import host_pid

if TYPE_CHECKING:
    from introspect.snapshot.records import Snapshot

T = TypeVar("T")
# Deadlines that fit the work (issue 23): --timeout bounds the wait for the target to take the
# request and fork; the walk then gets WALK_BASE_S plus WALK_PER_OBJECT_S per gc-tracked object at
# the fork (it finds 1-3 objects per tracked one, walked at 0.2-0.5M/s on a loaded 2-core host:
# the budget is about 10x that, a ceiling, not a target), and a walk past it answers with what it
# has, marked partial. The analysis and the walker's answers get ANALYSE_BASE_S plus
# ANALYSE_PER_OBJECT_S per object in the snapshot.
WALK_BASE_S = 30.0
WALK_PER_OBJECT_S = 30e-6
ANALYSE_BASE_S = 60.0
ANALYSE_PER_OBJECT_S = 20e-6


def walk_budget(tracked: int) -> float:
    """Seconds the forked copy may walk a heap of ``tracked`` gc-tracked objects."""
    return WALK_BASE_S + WALK_PER_OBJECT_S * max(0, tracked)


def analyse_budget(objects: int) -> float:
    """Seconds the CLI may analyse (and the walker answer about) a snapshot of ``objects``."""
    return ANALYSE_BASE_S + ANALYSE_PER_OBJECT_S * max(0, objects)


# The walker's RSS reached about 2x the parent's (DESIGN.md, "Forked snapshot"): it copies each page
# whose refcounts it touches, plus its own tables. Ask for that much free memory before forking.
COPY_FACTOR = 1.0
TABLES_FACTOR = 0.5


@dataclass(frozen=True)
class Headroom:
    ok: bool
    need: int  # bytes the walker may allocate
    available: int  # the tightest of MemAvailable and the cgroup limits
    limited_by: str

    def why(self) -> str:
        return (
            f"{self.limited_by} leaves {self.available / 2**20:,.0f} MiB; a forked snapshot may "
            f"need {self.need / 2**20:,.0f} MiB (the target's private memory copied, plus the "
            "walker's tables)"
        )


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cgroup_room(pid: int, root: str = "/sys/fs/cgroup") -> list[tuple[str, int]]:
    """(description, bytes left) for every memory limit on the target's cgroup path, v1 and v2."""
    out: list[tuple[str, int]] = []
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "":
            base, limit_f, usage_f = (
                root if os.path.exists(f"{root}/cgroup.controllers") else f"{root}/unified",
                "memory.max",
                "memory.current",
            )
        elif "memory" in controllers.split(","):
            base, limit_f, usage_f = (
                f"{root}/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        else:
            continue
        rel = path.strip("/")
        while True:
            d = f"{base}/{rel}" if rel else base
            limit, usage = _read_int(f"{d}/{limit_f}"), _read_int(f"{d}/{usage_f}")
            if limit is not None and usage is not None and limit < 1 << 60:
                out.append((f"cgroup {d}", max(0, limit - usage)))
            if not rel:
                break
            rel = rel.rsplit("/", 1)[0] if "/" in rel else ""
    return out


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def headroom(pid: int, *, cgroup_root: str = "/sys/fs/cgroup") -> Headroom:
    private = _status_kb(pid, "RssAnon") or _status_kb(pid, "VmRSS")
    need = int(private * (COPY_FACTOR + TABLES_FACTOR))
    limits = cgroup_room(pid, cgroup_root)
    avail = mem_available()
    if avail is not None:
        limits.append(("MemAvailable", avail))
    if not limits:
        return Headroom(True, need, -1, "no limit readable")
    where, room = min(limits, key=lambda x: x[1])
    return Headroom(room >= need, need, room, where)


@dataclass
class _Session:
    analyse: Callable[[Snapshot, Walker], Any]
    timeout: float
    log: Callable[[str], None]
    fd: int = -1
    walker: Walker | None = None
    # reads the stream (records.read_snapshot's signature); None: read_snapshot, keeping it all
    read: Callable[..., Snapshot] | None = None

    def open(self, run: RunDir) -> None:
        # Opened before injecting: the walker's non-blocking open for writing needs a reader.
        self.fd = os.open(run.host_file("stream"), os.O_RDONLY | os.O_NONBLOCK)

    def finish(self, run: RunDir, envelope: dict[str, Any]) -> Any:
        res = envelope.get("result") or {}
        if not res.get("forked"):
            return None
        from introspect.progress import Progress
        from introspect.snapshot.records import (  # numpy: only when a snapshot comes
            FormatError,
            Limits,
            Reader,
            StreamError,
            read_snapshot,
            target_memory,
        )

        limits = Limits.for_memory(target_memory(run.target.pid))
        # Until the walker's first frame: --timeout. Then the walk's budget, from the heap's size.
        reader = Reader(self.fd, time.monotonic() + self.timeout, limits)
        progress = Progress()
        t0 = time.monotonic()
        tracked = [0]
        stage = ["waiting for the forked copy"]

        def on_meta(meta: dict[str, Any]) -> None:
            tracked[0] = int(meta.get("gc_objects", 0))
            # Half the budget more than the walker's own: past its budget it still lists the objects
            # found but not walked and counts every refcount (cheaper per object than the walk).
            reader.deadline = time.monotonic() + walk_budget(tracked[0]) * 1.5 + 10.0
            start_ticks = int(meta.get("start_ticks", -2))
            self.walker = Walker(
                reader,
                run.host_file("control"),
                # the walker says its own getpid(): in a container, its namespace's number
                host_pid(run.target.pid, int(meta.get("pid", 0)), start_ticks),
                start_ticks,
                reader.deadline,
            )
            self.log(
                f"walker pid {self.walker.pid} streaming; {tracked[0]:,} gc-tracked objects at "
                "the fork, "
                f"walk budget {walk_budget(tracked[0]):.0f} s"
            )
            stage[0] = "walking"

        def on_objects(objects: int, known: int) -> None:
            progress.update(
                f"walked {_short(objects)} of ~{_short(max(known, tracked[0]))} objects, "
                f"{time.monotonic() - t0:.0f} s"
            )

        try:
            snap = (self.read or read_snapshot)(reader, on_meta=on_meta, on_objects=on_objects)
            progress.done()
            walker = self.walker
            if walker is None:
                raise StreamError("the stream carried no walker facts")
            walker.n = snap.n
            reader.deadline = walker.deadline = time.monotonic() + analyse_budget(snap.n)
            stage[0] = "analysing"
            partial = str(snap.end.get("partial") or "")
            self.log(
                f"snapshot: {snap.n:,} objects, {int(snap.refs.shape[0]):,} references, "
                f"walked in {snap.end.get('walk_s', 0):.2f} s "
                f"({snap.end.get('walker', 'python')})"
                + (f"; PARTIAL: {partial}" if partial else "")
                + f"; analysis budget {analyse_budget(snap.n):.0f} s"
            )
            stats = {
                "objects": snap.n,
                "references": int(snap.refs.shape[0]),
                "walk_s": round(float(snap.end.get("walk_s", 0)), 3),
                # the walker's CPU time (format 3): what a loaded host leaves stable
                "walk_cpu_s": round(float(snap.end.get("walk_cpu_s", 0)), 3),
                # which walk step ran: "compiled" (agent/_cwalk.c) or "python (why)"
                "walker": str(snap.end.get("walker", "python")),
                "walker_pid": walker.pid,
                "partial": partial or None,
            }
            for k in ("unknown_refs", "duplicate_objects"):  # format 3's mapping, when any
                if k in snap.end:
                    stats[k] = int(snap.end[k])
            value = self.analyse(snap, walker)
            if partial and isinstance(value, dict) and "partial" in value:  # never shown as whole
                value["partial"] = True
                if value.get("reason") is None and "reason" in value:
                    value["reason"] = partial
            return value, stats
        except TimeoutError:
            what = {
                "waiting for the forked copy": "did not start streaming within --timeout "
                f"{self.timeout:g} s",
                "walking": "did not finish its walk within its budget of "
                f"{walk_budget(tracked[0]):.0f} s",
                "analysing": "did not answer within the analysis budget",
            }[stage[0]]
            raise errors.TimeoutExpired(
                f"the forked snapshot {what} (its walker was killed)",
                help="Try a larger --timeout, or --in-process.",
            ) from None
        except FormatError:
            raise
        except StreamError as exc:
            raise errors.AgentError(
                f"forked snapshot failed: {exc}",
                help="The target was not affected (only its forked copy). Try --in-process.",
            ) from None
        finally:
            progress.done()
            if self.walker is not None:
                self.walker.close()
                self.walker.kill()

    def close(self) -> None:
        if self.walker is not None:
            self.walker.kill()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Taken:
    """What a collection produced: which path ran, why, the target's pause, the analysis."""

    outcome: Outcome
    path: str  # "fork" | "in-process"
    why: str
    pause_s: float
    value: Any


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.0f}k" if n >= 1000 else str(n)


def grpc_core(pid: int) -> str | None:
    """The path of gRPC Python's C core (grpc/_cython/cygrpc*.so) if the target has it mapped.

    Its fork handlers run in the target at any fork: such a target is never forked
    (agent._grpc_refusal has the measured reasons and decides again from sys.modules). Read here
    from /proc, so that the common case costs no injection of an agent that would refuse."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.rstrip("\n").split(None, 5)
                if (
                    len(parts) == 6
                    and os.path.basename(parts[5]).startswith("cygrpc.")
                    and parts[5].endswith(".so")
                ):
                    return parts[5]
    except OSError:
        pass
    return None


def fork_or_reason(pid: int, mode: str, log: Callable[[str], None]) -> str | None:
    """None if a forked snapshot should be taken, else why not (for the in-process path)."""
    if mode == "in-process":
        return "--in-process given"
    lib = grpc_core(pid)
    if lib is not None:
        return (
            f"gRPC is loaded in the target ({os.path.basename(lib)}): its fork handlers would run "
            "there (a line on its stderr, or its threads stopped and restarted) and the forked "
            "copy may crash or hang in them; a process "
            "with gRPC loaded is never forked, even with --fork"
        )
    if mode == "fork":
        return None
    room = headroom(pid)
    if not room.ok:
        return "not enough memory to fork: " + room.why()
    log(
        "memory headroom: " + room.why()
        if room.available >= 0
        else "memory headroom: no limit readable"
    )
    return None


def snapshot(
    pid: int,
    analyse: Callable[[Snapshot, Walker], T],
    *,
    method: str = "auto",
    timeout: float = 30.0,
    collect: bool = False,
    log: Callable[[str], None] = lambda s: None,
    walk: bool = True,
    memory: bool = False,
    read: Callable[..., Snapshot] | None = None,
) -> tuple[Outcome, T | None, dict[str, Any]]:
    """Fork the target and run ``analyse`` over its snapshot while the walker can still answer.
    Returns (outcome, value, walker stats); value is None when the agent could not fork
    (outcome.result["error"] says why). ``read`` reads the stream instead of
    records.read_snapshot (a dump writes it to its file as it comes)."""
    session = _Session(analyse, timeout, log, read=read)
    params = {
        "collect": collect,
        "child_deadline": time.time() + timeout,
        "objects": walk,
        "walk_base_s": WALK_BASE_S,
        "walk_per_object_s": WALK_PER_OBJECT_S,
        "answer_s": ANALYSE_BASE_S,
        "answer_per_object_s": ANALYSE_PER_OBJECT_S,
        "memory": memory,
    }
    outcome = run_agent(
        pid,
        "snapshot",
        params,
        method=method,
        timeout=timeout,
        log=log,
        fifos=("stream", "control"),
        session=session,
    )
    res = outcome.result
    if res.get("forked"):
        fork = (
            f" (the fork itself {float(res['fork_s']) * 1000:.1f} ms)"
            if isinstance(res.get("fork_s"), (int, float))
            else ""
        )
        log(
            f"forked: target paused {res['pause_s'] * 1000:.1f} ms by the snapshot command "
            f"(start to return){fork}"
        )
    value, stats = outcome.extra if outcome.extra is not None else (None, {})
    return outcome, value, stats


def take(
    pid: int,
    mode: str,
    analyse: Callable[[Snapshot, Walker], T],
    *,
    method: str = "auto",
    timeout: float = 30.0,
    collect: bool = False,
    log: Callable[[str], None] = lambda s: None,
    walk: bool = True,
    memory: bool = False,
    read: Callable[..., Snapshot] | None = None,
) -> tuple[Outcome | None, T | None, dict[str, Any]]:
    """A forked snapshot analysed, or (None, None, why) when the in-process path must run instead.
    The third item is the JSON "collector" block: which path ran, why, the fork's pause."""
    why = fork_or_reason(pid, mode, log)
    if why is not None:
        log(f"collecting in-process: {why}")
        return None, None, {"path": "in-process", "why": why}
    outcome, value, stats = snapshot(
        pid,
        analyse,
        method=method,
        timeout=timeout,
        collect=collect,
        log=log,
        walk=walk,
        memory=memory,
        read=read,
    )
    res = outcome.result
    if not res.get("forked"):
        why = str(res.get("error") or "the agent did not fork")
        log(f"collecting in-process: {why}")
        return None, None, {"path": "in-process", "why": why}
    return (
        outcome,
        value,
        {
            "path": "fork",
            "why": "--fork given" if mode == "fork" else "memory headroom available",
            "fork_pause_s": round(float(res["pause_s"]), 6),
            **(
                {"fork_s": round(float(res["fork_s"]), 6)}
                if isinstance(res.get("fork_s"), (int, float))
                else {}
            ),
            **stats,
        },
    )
