"""Our own PEP 768 client (CPython 3.14+): the remote-debugging write, done from the CLI's Python.

CPython documents the protocol ("Remote debugging attachment protocol"): ``_Py_DebugOffsets`` sits
at the start of the target's ``PyRuntime`` (an ELF section of the same name), opened by its cookie
``xdebugpy`` and the target's ``PY_VERSION_HEX``; it gives the offsets of the interpreter, its
thread states and their ``remote_debugger_support`` block. A controller writes the script path
into a thread state's block, sets its pending flag, and sets the eval-breaker "please stop" bit;
that thread runs the file at its next safe point, in a fresh namespace.

Unlike ``sys.remote_exec`` this needs no interpreter of the target's minor version here (from a 3.11
CLI into a 3.15 target, from a host into a container: the ELF file is read through
``/proc/PID/root``, memory through ``process_vm_readv/writev``), it can pick the thread (the main
one, or with --method pep768 another thread running Python while the main one is parked), and it
withdraws a request the target has not taken when the CLI gives up. The target is never stopped.

Every offset comes from the target's own table, and the table is only trusted where its layout is
known (``LAYOUTS``: where ``debugger_support`` sits for each minor version) and its values pass
sanity checks; anything else is refused with a clear message, never written blindly.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

from introspect import errors
from introspect.channel import RunDir
from introspect.inject import Injection, symbols
from introspect.inject.linux import vm_read, vm_write
from introspect.target import Target, explain_ptrace_denied

COOKIE = b"xdebugpy"
# Index (in 8-byte words after cookie, version, free_threaded) of the groups we use, per minor
# version: runtime_state.interpreters_head, interpreter_state.threads_head / threads_main,
# thread_state.next / current_frame / native_thread_id, and the debugger_support group.
# From CPython's Include/internal/pycore_debug_offsets.h of each version; checked against the
# 3.14 and 3.15 builds here (debugger_support = (eval_breaker, remote_debugger_support,
# remote_debugging_enabled, 0, 4, 512)).
LAYOUTS: dict[tuple[int, int], dict[str, int]] = {
    (3, 14): {"interpreters_head": 2, "threads_head": 6, "threads_main": 7, "tstate_next": 21,
              "current_frame": 23, "native_thread_id": 25, "debugger_support": 86},
    (3, 15): {"interpreters_head": 2, "threads_head": 6, "threads_main": 7, "tstate_next": 21,
              "current_frame": 23, "native_thread_id": 28, "debugger_support": 102},
}
PLEASE_STOP_BIT = 1 << 5  # _PY_EVAL_PLEASE_STOP_BIT in pycore_ceval.h, 3.13+


@dataclass(frozen=True)
class Offsets:
    version_hex: int
    free_threaded: bool
    interpreters_head: int
    threads_head: int
    threads_main: int
    tstate_next: int
    current_frame: int
    native_thread_id: int
    eval_breaker: int
    support: int
    enabled: int
    pending: int
    path: int
    path_size: int


def _refuse(target: Target, why: str) -> errors.InjectionFailed:
    return errors.InjectionFailed(
        f"cannot use the remote-debugging interface of this Python {target.version_str}: {why}",
        pid=target.pid, name=target.name, help="Use --method ptrace (or --method gdb).",
    )


@functools.lru_cache(maxsize=16)
def _runtime_section(path: str, _key: tuple[int, int, float]) -> tuple[int, int]:
    """(vaddr of the .PyRuntime section, first PT_LOAD page) of an ELF file."""
    elf = symbols.read_headers(path)
    sec = elf.section(".PyRuntime")
    if sec is None:
        raise LookupError(f"{path} has no .PyRuntime section")
    return sec.addr, elf.first_load_page()


def runtime_address(target: Target) -> int:
    assert target.capi_object is not None
    host = target.host_path(target.capi_object)
    st = os.stat(host)
    vaddr, first = _runtime_section(host, (st.st_dev, st.st_ino, st.st_mtime))
    base = min((m.start for m in target.mappings if m.path == target.capi_object and m.offset == 0),
               default=None)
    if base is None:
        raise LookupError(f"{target.capi_object} is not mapped at offset 0")
    return base - first + vaddr


def read_offsets(target: Target, runtime: int) -> Offsets:
    if target.version not in LAYOUTS:
        raise _refuse(
            target,
            "introspect knows the debug-offsets layout of "
            f"{', '.join(f'{a}.{b}' for a, b in LAYOUTS)} only",
        )
    lay = LAYOUTS[target.version]
    words = 3 + lay["debugger_support"] + 6
    raw = vm_read(target.pid, runtime, 8 * words)
    if raw[:8] != COOKIE:
        raise _refuse(target, "its PyRuntime does not start with the debug-offsets cookie")
    w = struct.unpack_from(f"<{words - 1}Q", raw, 8)
    version_hex, free_threaded = w[0], w[1]
    if (version_hex >> 24, (version_hex >> 16) & 0xFF) != target.version:
        raise _refuse(
            target,
            f"its debug offsets are for version {version_hex >> 24}.{(version_hex >> 16) & 0xFF}",
        )

    def at(name: str) -> int:
        return int(w[2 + lay[name]])

    ds = w[2 + lay["debugger_support"] : 2 + lay["debugger_support"] + 6]
    off = Offsets(version_hex, bool(free_threaded), at("interpreters_head"), at("threads_head"),
                  at("threads_main"), at("tstate_next"), at("current_frame"),
                  at("native_thread_id"), *(int(x) for x in ds))
    tstate_size = int(w[2 + lay["tstate_next"] - 2])  # thread_state.size precedes prev, next
    sane = (
        off.pending == 0
        and off.path == 4
        and 256 <= off.path_size <= 65536
        and max(
            off.eval_breaker, off.support, off.current_frame, off.native_thread_id, off.tstate_next
        )
        < tstate_size
        and off.support + off.path + off.path_size <= tstate_size
        and 0 < off.enabled < 1 << 24
    )
    if not sane:
        raise _refuse(
            target,
            "its debug-offsets table does not have the expected layout (a build introspect does "
            "not know)",
        )
    return off


def _ptr(target: Target, addr: int) -> int:
    return int(struct.unpack("<Q", vm_read(target.pid, addr, 8))[0])


def _i32(target: Target, addr: int) -> int:
    return int(struct.unpack("<i", vm_read(target.pid, addr, 4))[0])


def disabled_refusal(target: Target) -> errors.InjectionFailed:
    """The refusal for a target that turned remote debugging off (every method that would honour
    it)."""
    return errors.InjectionFailed(
        "the target has remote debugging disabled (started with PYTHON_DISABLE_REMOTE_DEBUG "
        "or -X disable-remote-debug, or built with --without-remote-debug)",
        pid=target.pid,
        name=target.name,
        help="Use `--method ptrace` (one thread stopped for about a millisecond) or `--method gdb` "
             "if you accept that the process is briefly stopped.",
    )


def remote_debug_disabled(target: Target) -> bool:
    """Did the target turn remote debugging off (PYTHON_DISABLE_REMOTE_DEBUG, -X
    disable-remote-debug, --without-remote-debug)? Read from its own interpreter state; False when
    that cannot be read (an unknown layout: the injector that runs says what it finds)."""
    try:
        runtime = runtime_address(target)
        off = read_offsets(target, runtime)
        interp = _ptr(target, runtime + off.interpreters_head)
        return bool(interp) and _i32(target, interp + off.enabled) == 0
    except (LookupError, ValueError, OSError):
        return False


def _task_state(pid: int, tid: int) -> tuple[str, str]:
    """(state letter, syscall field) of a thread, from /proc."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            sysc = f.read().split()[0]
    except (OSError, IndexError):
        return "?", ""
    return state, sysc


@dataclass
class Request:
    tstate: int
    tid: int
    where: str


class OwnRemoteExecInjector:
    name = "pep768"

    def __init__(self, other_threads: bool = True) -> None:
        self.request: Request | None = None
        self.offsets: Offsets | None = None
        # May a request go to another thread when the main one is parked? Only where nothing else
        # can run the agent (--method pep768): a thread takes the request wherever it checks its
        # eval breaker, and CPython opens the script with the builtins of that frame's globals;
        # inside a namedtuple's __new__ (a lambda whose __builtins__ is {}, common in gRPC's
        # threads) that fails with KeyError('__import__') and CPython prints "Can't open debugger
        # script" on the target's stderr (seen on 3.14 and 3.15). With ptrace at hand (auto), the
        # request stays on the main thread and the parked-thread path runs the agent there after
        # withdrawing it.
        self.other_threads = other_threads

    def _threads(self, target: Target, off: Offsets, interp: int) -> list[tuple[int, int, int]]:
        """(tstate, native tid, current frame) of every thread state, at most 4096."""
        out: list[tuple[int, int, int]] = []
        ts = _ptr(target, interp + off.threads_head)
        while ts and len(out) < 4096:
            out.append(
                (ts, _ptr(target, ts + off.native_thread_id), _ptr(target, ts + off.current_frame))
            )
            ts = _ptr(target, ts + off.tstate_next)
        return out

    def pick_thread(self, target: Target, off: Offsets, interp: int) -> Request:
        """The main thread, unless it is parked in a syscall while another thread runs Python."""
        main_ts = _ptr(target, interp + off.threads_main)
        threads = self._threads(target, off, interp)
        main = next(((ts, tid, fr) for ts, tid, fr in threads if ts == main_ts), None)
        if main is None and main_ts:
            main = (main_ts, _ptr(target, main_ts + off.native_thread_id), 0)
        if main is not None:
            state, sysc = _task_state(target.pid, main[1])
            parked = state == "S" and sysc not in ("", "running", "202")
            if not parked:
                return Request(main[0], main[1], "the main thread")
            if not self.other_threads:
                return Request(main[0], main[1],
                               "the main thread (parked: the parked-thread path runs the agent)")
        for ts, tid, frame in threads:
            if main is not None and ts == main[0] or not frame:
                continue
            state, sysc = _task_state(target.pid, tid)
            # Running only: a thread in futex may wait for the GIL, or sit on a lock for minutes
            # (introspect trace's own timer thread does): a request given to it would not run.
            if state == "R":
                return Request(
                    ts, tid, f"thread {tid} (the main thread is parked in a system call)"
                )
        if main is None:
            raise _refuse(target, "it has no main thread state")
        return Request(main[0], main[1], "the main thread")

    def inject(self, target: Target, run: RunDir, bootstrap: str) -> Injection:
        boot_path = run.write("boot.py", bootstrap.encode(), 0o400)
        try:
            runtime = runtime_address(target)
            off = read_offsets(target, runtime)
            if off.free_threaded:
                raise _refuse(target, "free-threaded builds are not supported yet")
            interp = _ptr(target, runtime + off.interpreters_head)
            if not interp:
                raise _refuse(target, "it has no interpreter (still starting, or finalizing)")
            if _i32(target, interp + off.enabled) == 0:
                raise disabled_refusal(target)
            path = boot_path.encode()
            if len(path) >= off.path_size:
                raise _refuse(
                    target, f"the script path is longer than its {off.path_size}-byte buffer"
                )
            req = self.pick_thread(target, off, interp)
            support = req.tstate + off.support
            if _i32(target, support + off.pending):
                raise errors.InjectionFailed(
                    "another remote-debugging request is pending in that thread", pid=target.pid,
                    name=target.name, help="Try again in a moment.",
                )
            vm_write(target.pid, support + off.path, path + b"\0")
            vm_write(target.pid, support + off.pending, struct.pack("<i", 1))
            breaker = _ptr(target, req.tstate + off.eval_breaker)
            vm_write(target.pid, req.tstate + off.eval_breaker,
                     struct.pack("<Q", breaker | PLEASE_STOP_BIT))
        except (LookupError, ValueError) as exc:
            raise _refuse(target, str(exc)) from None
        except PermissionError:
            raise explain_ptrace_denied(target) from None
        except ProcessLookupError:
            raise errors.TargetExited(
                "the process exited", pid=target.pid, name=target.name
            ) from None
        except OSError as exc:
            raise _refuse(target, f"reading or writing its memory failed: {exc}") from None
        self.request, self.offsets = req, off
        return Injection(
            "pep768", 0.0, f"remote-debugging request (our own PEP 768 client) on {req.where}"
        )

    def withdraw(self, target: Target) -> bool:
        """Take back a request the target has not taken yet (the CLI gives up). True if
        withdrawn."""
        req, off = self.request, self.offsets
        if req is None or off is None:
            return False
        self.request = None
        try:
            support = req.tstate + off.support
            if _i32(target, support + off.pending) != 1:
                return False
            # The path first: a thread taking the request at this instant copies an empty path
            # after clearing the flag, and CPython runs nothing for an empty path.
            vm_write(target.pid, support + off.path, b"\0")
            vm_write(target.pid, support + off.pending, struct.pack("<i", 0))
            return True
        except OSError:
            return False

    def release(self, target: Target, injection: Injection) -> None:
        return None
