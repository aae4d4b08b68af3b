"""Run one agent command inside a target: facts -> run dir -> inject -> wait -> clean up.

This is the one path every subcommand takes, so every safety rule lives here once: refuse bad
states before touching the target, one injection at a time per target, the run dir always
removed, the gdb bootstrap page always released once it is safe to.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from introspect import errors
from introspect.channel import RunDir, prepare, wait_for_result
from introspect.inject import Injection, choose, parked_runner
from introspect.progress import Progress
from introspect.target import Target, check_injectable, inspect_target

LOCK_DIR = "/tmp/introspect-locks"
# A pending call normally runs within milliseconds; after this long the main thread is parked.
STALL_S = 1.0
# Sooner when /proc shows it parked: in one blocking system call (not futex: waiting for the GIL or
# a lock, which ends by itself) and not scheduled once over PARKED_SEEN_S. It cannot take a pending
# call before that call returns; the parked path is as safe now as after STALL_S, and an idle
# worker's every command no longer waits out a second first. The parked path decides from the
# thread's own stopped state, never from these timings (a thread that woke meanwhile is refused
# there and takes the queued call), so they only trade a needless parked run (a sub-millisecond
# stop of a thread that would have woken soon) against waiting: 0.05 s lets the thread our
# injector interrupted settle back into its call, then 0.05 s unscheduled is ~3 polls (POLL_S)
# without a context switch. Detected at ~0.12 s instead of 0.3 s (0.15 + 0.15 before).
PARKED_AFTER_S = 0.05
PARKED_SEEN_S = 0.05
# Once we know the request can only run when the parked main thread wakes up (traffic), how long
# to keep waiting for that before failing with the cause, instead of the whole --timeout.
WAKE_GRACE_S = 4.0

# x86_64 syscall numbers a blocked main thread usually sits in.
_SYSCALLS = {
    0: "read",
    7: "poll",
    23: "select",
    35: "nanosleep",
    43: "accept",
    45: "recvfrom",
    61: "wait4",
    202: "futex",
    219: "restart_syscall",
    230: "clock_nanosleep",
    232: "epoll_wait",
    270: "pselect6",
    271: "ppoll",
    281: "epoll_pwait",
    288: "accept4",
    441: "epoll_pwait2",
}


class Session(Protocol):
    """Work done while the run dir still exists: ``open`` before injecting, ``finish`` once the
    agent's result is in (e.g. reading a forked walker's stream through FIFOs of the run dir)."""

    def open(self, run: RunDir) -> None: ...

    def finish(self, run: RunDir, envelope: dict[str, Any]) -> Any: ...

    def close(self) -> None: ...


@dataclass
class Outcome:
    target: Target
    injection: Injection
    envelope: dict[str, Any]
    wall_s: float
    extra: Any = None

    @property
    def result(self) -> dict[str, Any]:
        return self.envelope.get("result") or {}

    @property
    def paused_s(self) -> float:
        """Time the target could not run its own code: gdb attached, plus the agent's run."""
        return self.injection.attach_pause_s + float(self.envelope.get("agent_s", 0.0))

    def meta(self) -> dict[str, Any]:
        return {
            "pid": self.target.pid,
            "name": self.target.name,
            "python": self.envelope.get("python") or self.target.version_str,
            "method": self.injection.method,
            "paused_s": round(self.paused_s, 6),
            "attach_pause_s": round(self.injection.attach_pause_s, 6),
            "agent_s": round(float(self.envelope.get("agent_s", 0.0)), 6),
            "wall_s": round(self.wall_s, 6),
            **code_meta(self.envelope),
        }


def code_meta(envelope: dict[str, Any]) -> dict[str, Any]:
    """How the target got the agent's code: "loaded" (precompiled, see codecache) or "compiled",
    and how long it took."""
    code = envelope.get("code")
    if not (isinstance(code, list) and len(code) == 2 and isinstance(code[1], (int, float))):
        return {}
    return {"agent_code": str(code[0]), "agent_code_s": round(float(code[1]), 6)}


def _main_thread_rest(pid: int) -> tuple[int, int, int] | None:
    """(syscall, voluntary, involuntary context switches) of a main thread blocked in a system call
    other than futex, else None (running, futex, or /proc unreadable)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            first = f.read().split(maxsplit=1)
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    if not first or not first[0].isdigit() or int(first[0]) == 202:
        return None
    switches = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            switches[key] = int(value)
    if len(switches) != 2:
        return None
    return (int(first[0]), switches["voluntary_ctxt_switches"],
            switches["nonvoluntary_ctxt_switches"])


class _ParkWatch:
    """Whether the main thread has sat in one blocking system call, never scheduled, for
    PARKED_SEEN_S: then it is parked now and waiting out STALL_S cannot help."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.since: tuple[float, tuple[int, int, int]] | None = None

    def __call__(self, waited: float) -> bool:
        if waited < PARKED_AFTER_S:
            return False
        rest = _main_thread_rest(self.pid)
        if rest is None or self.since is None or self.since[1] != rest:
            self.since = (waited, rest) if rest is not None else None
            return False
        return waited - self.since[0] >= PARKED_SEEN_S


def main_thread_activity(pid: int) -> str:
    """What the main thread is doing, from /proc: used to explain a request that does not run."""
    try:
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        fields = []
    try:
        with open(f"/proc/{pid}/task/{pid}/wchan") as f:
            wchan = f.read().strip()
    except OSError:
        wchan = ""
    if not fields or fields[0] == "running":
        return "running (busy in C code that does not return to the interpreter?)"
    try:
        nr = int(fields[0])
    except ValueError:
        return fields[0]
    name = _SYSCALLS.get(nr, f"syscall {nr}")
    return f"blocked in {name}()" + (f" [{wchan}]" if wchan and wchan != "0" else "")


class _TargetLock:
    """One injection at a time per target: a second introspect waits for the first.

    The lock file is removed by its holder on the way out, and files of pids that no longer exist
    (left by an introspect that was killed) by the next run. Removing is safe because a file is
    only unlinked while its flock is held, and a locker checks after ``flock`` that its file is
    still the one at the path (or starts over): it never holds a lock on an unlinked file.
    """

    def __init__(self, pid: int) -> None:
        # Root's lock dir is 0700: any other user keeps its own, or it could not lock at all.
        euid = os.geteuid()
        lock_dir = LOCK_DIR if euid == 0 else f"{LOCK_DIR}-{euid}"
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        st = os.lstat(lock_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid:
            raise errors.AccessDenied(
                f"{lock_dir} is not a directory of ours (uid {euid})",
                help=f"Remove it (rm -r {lock_dir}) and run introspect again.",
            )
        self.dir = lock_dir
        self.path = f"{lock_dir}/{pid}.lock"
        self.fd = -1

    def __enter__(self) -> _TargetLock:
        sweep_locks(self.dir)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, self.path):
                self.fd = fd
                return self
            os.close(fd)  # its holder removed it while we waited: lock the new file instead

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.path)  # still holding the lock: no one else holds this file
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def sweep_locks(lock_dir: str) -> list[str]:
    """Remove ``<pid>.lock`` files of pids that no longer exist; a file someone holds is left
    alone."""
    removed: list[str] = []
    try:
        names = os.listdir(lock_dir)
    except OSError:
        return removed
    for name in names:
        stem, dot, ext = name.partition(".")
        if not (stem.isdigit() and dot and ext == "lock") or os.path.exists(f"/proc/{stem}"):
            continue
        path = f"{lock_dir}/{name}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live introspect holds it
        try:
            if _same_file(fd, path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def run_agent(
    pid: int,
    command: str,
    params: dict[str, Any],
    *,
    method: str = "auto",
    timeout: float = 30.0,
    log: Callable[[str], None] = lambda s: None,
    files: dict[str, bytes] | None = None,
    fifos: tuple[str, ...] = (),
    session: Session | None = None,
) -> Outcome:
    """Run ``command`` in the target and return its result envelope. Raises IntrospectError."""
    t0 = time.monotonic()
    inspect_target(pid)  # plain errors (no such pid, zombie...) before we wait on any lock
    # Facts are read again under the lock: while another introspect holds it, its gdb is the
    # target's tracer, and that must not be mistaken for a foreign debugger.
    with _TargetLock(pid):
        target = inspect_target(pid)
        check_injectable(target)
        injectors = choose(target, method, log)
        request, bootstrap = prepare(target, command, params, timeout, files, fifos)
        run = request.run
        injection: Injection | None = None
        injector = None
        extra = None
        try:
            if session is not None:
                session.open(run)
            last_error: errors.IntrospectError | None = None
            for injector in injectors:
                try:
                    log(
                        f"injecting with {injector.name} into pid {pid} (Python "
                        f"{target.version_str})"
                    )
                    injection = injector.inject(target, run, bootstrap)
                    break
                except errors.InjectionFailed as exc:
                    last_error = exc
                    if "remote debugging disabled" in exc.msg or injector is injectors[-1]:
                        raise
                    log(f"{injector.name} failed ({exc.msg}); trying the next method")
            if injection is None:
                assert last_error is not None
                raise last_error
            log(
                f"injected: {injection.detail}; target stopped "
                f"{injection.attach_pause_s * 1000:.1f} ms by the injector"
            )

            progress = Progress()
            # what the main thread was doing, and when to give up on it waking
            stall: dict[str, Any] = {}

            def on_stall(waited: float) -> None:
                progress.done()  # the verbose log lines below start on a clean line
                activity = main_thread_activity(pid)
                stall["activity"] = activity
                log(
                    f"the main thread has not run our request after {waited:.1f} s: it is "
                    f"{activity}"
                )
                parked = activity.startswith("blocked in") and "futex" not in activity
                if parked and method == "pep768":
                    stall["why"] = (
                        f"its main thread is {activity} and --method pep768 runs code only when "
                        "that thread runs Python again",
                        "--method auto (or ptrace) can run the agent on a main thread parked with "
                        "the GIL released.",
                    )
                if not parked or method == "pep768":
                    log(f"waiting up to --timeout {timeout:g} s for it to run Python code again")
                    return
                runner = parked_runner(target, method, log)
                if runner is None:
                    log(f"waiting up to --timeout {timeout:g} s for it to run Python code again")
                    return
                # Never two agents for one request: a PEP 768 request still queued on another thread
                # is taken back first; if that thread has taken it meanwhile, it runs the agent.
                withdraw = getattr(injector, "withdraw", None)
                if withdraw is not None and not withdraw(target):
                    log("the queued request was taken meanwhile: waiting for it to run")
                    return
                try:
                    parked_run = runner.run_parked(target, run, bootstrap)
                except errors.InjectionFailed as exc:
                    if "holds the GIL" in exc.msg:
                        stall["why"] = (
                            f"its main thread is {activity} while holding the GIL: no Python "
                            "code, ours included, can run "
                            "in this process until that call returns",
                            "A C call that blocks without releasing the GIL does this (with "
                            "--method gdb, an idle uWSGI "
                            "without --enable-threads too; the default ptrace injector handles "
                            "that one). Run introspect "
                            "while the process serves traffic (send it a request).",
                        )
                        log(f"{exc.msg}; waiting {WAKE_GRACE_S:g} s for it to wake up")
                        return
                    log(f"{exc.msg}; waiting up to --timeout {timeout:g} s")
                    return
                assert injection is not None
                # The queued pending call still points at its page: it must stay mapped (4 KiB)
                # until that call runs, finds no agent file, and does nothing.
                injection.page = None
                injection.attach_pause_s += parked_run.attach_pause_s
                injection.detail += f"; idle, so ran via {parked_run.detail}"
                log(
                    f"ran via {parked_run.detail} (target stopped "
                    f"{parked_run.attach_pause_s * 1000:.1f} ms by the injector); "
                    "the queued request will find nothing to do when the thread next runs Python"
                )

            def on_tick(waited: float, started: bool) -> None:
                if not started and "why" in stall:
                    # Waiting cannot help unless the process wakes up by itself: a short grace,
                    # then the cause.
                    stall.setdefault("give_up", waited + WAKE_GRACE_S)
                    if waited >= stall["give_up"]:
                        why, fix = stall["why"]
                        raise errors.BadTargetState(
                            f"cannot run code in the process now: {why} (still so after "
                            f"{waited:.0f} s)",
                            pid=pid,
                            name=target.name,
                            help=f"{fix} Nothing was done to it; the queued request is void.",
                        )
                doing = {
                    "top": "counting objects",
                    "growth": "counting objects",
                    "backrefs": "walking referrers",
                    "snapshot": "forking",
                    "trace_show": "reading traces",
                    "trace_stop": "reading traces",
                }.get(command, "running")
                waiting = (
                    f"waiting for the main thread ({stall['activity']})"
                    if "activity" in stall
                    else "waiting for the main thread to reach a safe point"
                )
                progress.update(f"pid {pid}: {doing}" if started else f"pid {pid}: {waiting}")

            try:
                envelope = wait_for_result(
                    request, on_stall=on_stall, stall_after=STALL_S, on_tick=on_tick,
                    parked=_ParkWatch(pid),
                )
            except errors.TimeoutExpired as exc:
                if "activity" in stall and not run.exists("started"):
                    exc.msg += f"; its main thread was {stall['activity']}"
                raise
            finally:
                progress.done()
            code = code_meta(envelope)
            if code:
                log(
                    f"the agent's code was {code['agent_code']} in the target in "
                    f"{code['agent_code_s'] * 1000:.2f} ms"
                )
            if session is not None and envelope.get("ok"):
                extra = session.finish(run, envelope)
        except OSError as exc:
            # The run dir lives under /proc/PID/root: it vanishes with the target.
            if not target.is_alive():
                raise errors.TargetExited(
                    "the process exited while introspect was working on it",
                    pid=pid,
                    name=target.name,
                ) from None
            raise errors.InjectionFailed(
                f"I/O error in the run directory {run.host}: {exc}", pid=pid, name=target.name
            ) from None
        finally:
            if session is not None:
                session.close()
            started = run.exists("started") or run.exists("result.json")
            if injection is not None and injector is not None:
                # A request the target never took (it timed out, or the parked path ran instead)
                # is taken back, so it does not run later and find its script gone.
                withdraw = getattr(injector, "withdraw", None)
                if withdraw is not None and withdraw(target):
                    log("withdrew the request the target had not taken yet")
            run.remove()
            if injection is not None and injector is not None and started:
                try:
                    injector.release(target, injection)
                except errors.IntrospectError as exc:
                    log(f"could not release the bootstrap page: {exc}")
    if not envelope.get("ok"):
        err = envelope.get("error") or {}
        if err.get("type") == "AgentBusy":
            raise errors.BadTargetState(
                "an introspect agent of an earlier run is still working in the process (its CLI "
                "gave up on it)",
                pid=pid,
                name=target.name,
                help="Nothing was done now. It stops at its next check; run the command again in "
                "a few seconds.",
            )
        where = "; ".join(
            f"{os.path.basename(f)}:{line} in {fn}" for f, line, fn in err.get("frames", [])[-3:]
        )
        raise errors.AgentError(
            f"the agent failed inside the target: {err.get('type')}: {err.get('message')} "
            f"[{where}]",
            pid=pid,
            name=target.name,
            help="This is a bug in introspect; the target was not harmed. Please report it.",
        )
    return Outcome(target, injection, envelope, time.monotonic() - t0, extra)
