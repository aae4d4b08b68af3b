"""The kernel calls the injectors make, through ctypes: ptrace, process_vm_readv/writev, and what
``/proc/PID/task`` says of a thread (its state, its tracer, its shadow stack).

Thin wrappers that raise ``OSError`` with the errno; the decisions are in ``ptrace.py`` (our
ptrace injector) and ``remote.py`` (our PEP 768 client, which writes the target's memory).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

# -- ptrace ------------------------------------------------------------------------------------
PTRACE_PEEKDATA, PTRACE_POKEDATA = 2, 5
PTRACE_GETREGS, PTRACE_SETREGS = 12, 13
PTRACE_CONT, PTRACE_SYSCALL, PTRACE_DETACH = 7, 24, 17
PTRACE_GETREGSET = 0x4204
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_O_TRACESYSGOOD = 1
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000
SYS_GETPID = 39


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    for fn in (libc.process_vm_readv, libc.process_vm_writev):
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(Iovec), ctypes.c_ulong, ctypes.POINTER(Iovec),
                       ctypes.c_ulong, ctypes.c_ulong]
    return libc


class PtraceError(OSError):
    pass


def ptrace(req: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    rc = _libc().ptrace(req, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if rc == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(err, f"ptrace({req:#x}, {tid}): {os.strerror(err)}")
    return int(rc)


def vm_read(pid: int, addr: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    local = Iovec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = Iovec(addr, size)
    n = _libc().process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n != size:
        err = ctypes.get_errno() if n < 0 else errno.EFAULT
        raise OSError(err, f"reading {size} bytes at {addr:#x} in {pid}: {os.strerror(err)}")
    return buf.raw


def vm_write(pid: int, addr: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    local = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = Iovec(addr, len(data))
    n = _libc().process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n != len(data):
        err = ctypes.get_errno() if n < 0 else errno.EFAULT
        raise OSError(err, f"writing {len(data)} bytes at {addr:#x} in {pid}: {os.strerror(err)}")


def _thread_state(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def busy_candidates(pid: int) -> list[int]:
    """Threads for the busy path, best first: running non-main threads, other non-main, main."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return [pid]
    others = [(t, _thread_state(pid, t)) for t in tids if t != pid]
    running = [t for t, s in others if s == "R"]
    sleeping = [t for t, s in others if s == "S"]
    return running + sleeping + [pid]


def shadow_stack(pid: int, tid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return any(line.startswith("x86_Thread_features:") and "shstk" in line for line in f)
    except OSError:
        return False


def tracer_of(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
