"""A stopped thread's registers as the kernel's x86_64 signal frame.

The ptrace injector puts a thread back with ``rt_sigreturn`` (see ``ptrace.py``): this module
holds the register layout of ``PTRACE_GETREGS``, what the kernel would resume a thread stopped in
a system call with (the syscall restart), and the ``ucontext`` and ``fpstate`` bytes of the frame
``rt_sigreturn`` restores. Pure functions over integers and bytes; no system call is made here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SS_INVALID = 0x7FF0  # not SS_ONSTACK, SS_DISABLE or 0
SYS_RESTART = 219
# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND: restarted as is; -ERESTART_RESTARTBLOCK: via
# restart_syscall. -EINTR: the syscall returns EINTR (what a ptrace stop does to epoll_wait & co).
_RESTART_SAME = (-512, -513, -514)
_RESTART_BLOCK = -516
_EINTR = -4
REG_NAMES = (
    "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
    "fs_base gs_base ds es fs gs"
).split()
REGS = struct.Struct("<27Q")
IDX = {n: i for i, n in enumerate(REG_NAMES)}
XFEATURE_AMX = (1 << 17) | (1 << 18)


@dataclass
class Stopped:
    """What the tracer saw when T stopped."""

    regs: list[int]
    xstate: bytes

    @property
    def syscall(self) -> int:
        nr = self.regs[IDX["orig_rax"]]
        return nr - (1 << 64) if nr >= 1 << 63 else nr

    @property
    def ret(self) -> int:
        v = self.regs[IDX["rax"]]
        return v - (1 << 64) if v >= 1 << 63 else v

    @property
    def in_syscall(self) -> bool:
        """Stopped inside a syscall that was interrupted (or ended with EINTR) by our stop."""
        return self.syscall >= 0 and self.ret in (*_RESTART_SAME, _RESTART_BLOCK, _EINTR)


def resume_frame(st: Stopped) -> list[int]:
    """The registers the kernel would resume T with: a syscall interrupted by our stop restarts."""
    regs = list(st.regs)
    nr, ret = st.syscall, st.ret
    if nr >= 0 and ret in _RESTART_SAME:
        regs[IDX["rax"]] = nr
        regs[IDX["rip"]] -= 2
    elif nr >= 0 and ret == _RESTART_BLOCK:
        # The kernel would resume with restart_syscall, which runs the restart block the
        # interrupted call left. Our way back is rt_sigreturn, and rt_sigreturn resets that block
        # ("pending restarted system calls return -EINTR"): restart_syscall would then return
        # EINTR to code that never saw a signal (seen: a C poll(fds, n, -1) holding the GIL
        # returned -1/EINTR). A call whose restart does not depend on the time already spent is
        # issued again, exactly; one with a relative timeout returns EINTR, as after a signal.
        if _restartable_as_is(nr, regs):
            regs[IDX["rax"]] = nr
        else:
            regs[IDX["rax"]] = _EINTR & ((1 << 64) - 1)
            return regs
        regs[IDX["rip"]] -= 2
    return regs


def _restartable_as_is(nr: int, regs: list[int]) -> bool:
    """True when issuing syscall ``nr`` again with the same arguments is exactly its restart:
    no timeout, or an absolute one (x86_64 numbers and argument registers)."""

    def arg(name: str) -> int:
        return regs[IDX[name]]

    if nr == 7:  # poll(fds, nfds, int timeout_ms): a negative timeout waits forever
        t = arg("rdx") & 0xFFFFFFFF
        return t >= 1 << 31
    if nr == 271:  # ppoll(fds, nfds, tsp, sigmask, size): no timeout
        return arg("rdx") == 0
    if nr == 230:  # clock_nanosleep(clock, flags, req, rem): TIMER_ABSTIME
        return bool(arg("rsi") & 1)
    # futex(uaddr, op, val, timeout, ...): FUTEX_WAIT without timeout, WAIT_BITSET (absolute)
    if nr == 202:
        cmd = arg("rsi") & ~(128 | 256)
        return (cmd == 0 and arg("r10") == 0) or cmd == 9
    return False


def ucontext(regs: list[int], fpstate_addr: int) -> bytes:
    """ucontext (without the signal mask, which the trampoline reads on T)."""
    r = {n: regs[i] for i, n in enumerate(REG_NAMES)}
    mctx = struct.pack("<18Q4H5Q8Q", r["r8"], r["r9"], r["r10"], r["r11"], r["r12"], r["r13"],
                       r["r14"], r["r15"], r["rdi"], r["rsi"], r["rbp"], r["rbx"], r["rdx"],
                       r["rax"], r["rcx"], r["rsp"], r["rip"], r["eflags"], r["cs"] & 0xFFFF, 0, 0,
                       r["ss"] & 0xFFFF, 0, 0, 0, 0, fpstate_addr, *([0] * 8))
    assert len(mctx) == 256
    # uc_flags: UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, as the kernel's own frames.
    # uc_stack: an invalid mode, so rt_sigreturn's restore_altstack fails, silently by design
    # ("squash all but EFAULT"), and leaves the thread's alternate signal stack as it is.
    stack = struct.pack("<QiiQ", 0, _SS_INVALID, 0, 0)
    uc = struct.pack("<QQ", 0x7, 0) + stack + mctx + bytes(8)
    return uc


def fpstate(xstate: bytes) -> bytes:
    """The saved XSTATE bytes as a signal frame's fpstate: the ptrace form keeps XCR0 in the
    software bytes (464..511); a frame wants magic1, sizes and features there, and magic2 after."""
    size = len(xstate)
    xcr0 = struct.unpack_from("<Q", xstate, 464)[0]
    sw = struct.pack("<IIQI7I", 0x46505853, size + 4, xcr0, size, *([0] * 7))
    return xstate[:464] + sw + xstate[512:] + struct.pack("<I", 0x46505845)
