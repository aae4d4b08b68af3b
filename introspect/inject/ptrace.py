"""Our own injector for x86_64 Linux: ptrace through ctypes, one thread stopped for well under a ms.

What it does, per injection (no gdb, no compiled part, nothing loaded into the target):

1. ``PTRACE_SEIZE`` one thread T (nothing stops yet; no SIGSTOP is ever sent, so nothing is
   left pending if we die), write the trampoline (below) into the *cave*, then
   ``PTRACE_INTERRUPT`` T and wait for its stop. Only T stops; every other thread keeps running.
2. Save T's state: ``PTRACE_GETREGS`` and the whole ``NT_X86_XSTATE`` regset, as bytes.
3. Below T's stack pointer (past the 128-byte red zone) write a context block: parameters,
   pre-resolved addresses (``symbols``: ``.dynsym``, so stripped builds work), the bootstrap text,
   and a complete ``rt_sigframe`` built from the saved state -- general registers as they were
   (with the syscall restart applied, below) and, as its FPU state, the saved XSTATE bytes
   themselves (only the 48 software bytes at offset 464 are rewritten into the signal-frame form
   the kernel checks, plus its end marker); the vector registers are never interpreted.
4. ``PTRACE_SETREGS``: rip = trampoline, rsp below the block, ``orig_rax = -1`` (so the kernel
   does not "restart" into our code), then ``PTRACE_SYSCALL`` to watch its system calls.
5. The trampoline, on T: reads T's signal mask into the frame (the frame's alternate-stack
   field holds an invalid mode, which the kernel ignores, so that setting is never touched), then
     - busy mode: ``mmap`` a page (a raw syscall: no libc lock, no malloc), copies a small wrapper
       plus the bootstrap text into it, ``mprotect`` it read+exec, ``Py_AddPendingCall(wrapper,
       page)``; the wrapper later runs ``PyRun_SimpleString(text)`` on the main thread at a safe
       point and tail-calls ``munmap(page)``: the page frees itself, no second stop;
     - parked mode (main thread idle in a blocking syscall): ``PyGILState_Check``; if this thread
       holds the GIL, ``PyEval_GetFrame`` must be NULL (no Python frame executing: uWSGI's C loop,
       an embedding application); then ``PyGILState_Ensure`` -> ``PyRun_SimpleString(text)`` ->
       ``PyGILState_Release`` right there, the text living in the block (no page at all);
   then makes a marker syscall (``getpid`` with the block's address) where the tracer reads the
   results and detaches, and ends with ``rt_sigreturn`` on the prepared frame: the kernel itself
   puts back every register, flags, the FPU/vector state and the signal mask
   in one step, with no window in which a signal could see half-restored state.

Design points:
- **SIGKILL of the CLI at any instant**: the kernel detaches T with whatever registers it has.
  Before SETREGS nothing of T is changed (the block lies in unused stack, the cave in unused
  text). After it, T runs the trampoline, whose way back (``rt_sigreturn`` on a frame already in
  its memory) never depends on the tracer: no breakpoint, no single-step, no int3 whose SIGTRAP
  would kill an untraced process. Syscall tracing is dropped by the kernel with the tracer.
- **Syscall restart**: a thread stopped inside a blocking syscall has rax = -ERESTART* and
  orig_rax = its number. The frame gets what the kernel would do when resuming it without a
  handler: rax = orig_rax (or ``restart_syscall`` for -ERESTART_RESTARTBLOCK) and rip - 2.
- **Locks**: the only functions called on T are ``Py_AddPendingCall`` (its own pending-calls lock:
  held only for a few instructions by a thread in that code, never across a syscall) and, in
  parked mode, the GIL-state calls on a thread parked in a blocking syscall other than futex (so
  not inside malloc or any lock). T is, in order of preference, a non-main thread that is
  running, another non-main thread, the main thread: non-main threads never run pending calls,
  so they never hold that lock.
- **The cave**: the trampoline (267 constant bytes, no per-run data) sits in the unused tail of
  the last executable page of libc's text segment (past the end of its ``PF_X`` segment, never
  executed by anyone). It is written through ``/proc/PID/mem`` (``PTRACE_POKEDATA`` as fallback)
  while T is seized, becoming a private copy of that one page; it is not removed afterwards (a
  killed run's trampoline may still be in it; the next run finds the same bytes and writes
  nothing). That is the one trace left: a 4 KiB private copy of a libc page whose unused tail
  holds our code.
- **Signals** arriving while T is traced are re-delivered with the next resume, never dropped.
  A group-stop (SIGSTOP from someone) makes us detach at once, leaving the process stopped.
- Refusals come from ptrace's own errors (EPERM: another tracer, Yama, capabilities, other user;
  ESRCH: gone) and are explained with ``target.explain_ptrace_denied``.

Not handled (refused, so ``auto`` falls back to gdb): other architectures, 32-bit targets, a
thread with an x86 shadow stack enabled (``rt_sigreturn`` would need a shadow-stack token), AMX
state (its size is not what the signal frame carries).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from introspect import errors
from introspect.channel import RunDir
from introspect.inject import Injection, symbols
from introspect.target import Mapping, Target, explain_ptrace_denied

# -- the machine code --------------------------------------------------------------------------
# Assembled with GNU as from the listing below (tests/unit/test_ptrace_code.py reassembles it when
# `as` is installed and compares). r15 = the context block, rbx = the page / the GIL state.
TRAMPOLINE_ASM = """\
    mov r15, rdi
    cld
    xor edi, edi                 ; rt_sigprocmask(SIG_BLOCK, NULL, &uc_sigmask, 8): read the mask
    xor esi, esi
    lea rdx, [r15+0x230]
    mov r10d, 8
    mov eax, 14
    syscall
    cmp qword ptr [r15], 2
    je idle
    xor edi, edi                 ; mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)
    mov rsi, [r15+0x08]
    mov edx, 3
    mov r10d, 0x22
    mov r8, -1
    xor r9d, r9d
    mov eax, 9
    syscall
    mov [r15+0x48], rax
    cmp rax, -4095
    jae done
    mov rbx, rax
    mov rdi, rax                 ; copy wrapper + text into the page
    mov rsi, [r15+0x78]
    mov rcx, [r15+0x10]
    rep movsb
    mov rdi, rbx                 ; mprotect(page, size, PROT_READ|PROT_EXEC)
    mov rsi, [r15+0x08]
    mov edx, 5
    mov eax, 10
    syscall
    mov [r15+0x50], rax
    test rax, rax
    jnz unmap
    mov rdi, rbx                 ; Py_AddPendingCall(page, page)
    mov rsi, rbx
    call qword ptr [r15+0x18]
    cdqe
    mov [r15+0x58], rax
    test eax, eax
    jz done
unmap:
    mov rdi, rbx                 ; munmap(page, size)
    mov rsi, [r15+0x08]
    mov eax, 11
    syscall
    jmp done
idle:
    call qword ptr [r15+0x28]    ; PyGILState_Check()
    cdqe
    mov [r15+0x60], rax
    test eax, eax
    jz run
    call qword ptr [r15+0x30]    ; PyEval_GetFrame(): NULL when no Python frame executes
    mov [r15+0x68], rax
    test rax, rax
    jnz done
run:
    mov qword ptr [r15+0x70], 1
    mov rdi, r15                 ; marker: the tracer reads the decision and detaches here
    mov eax, 39
    syscall
    call qword ptr [r15+0x38]    ; PyGILState_Ensure()
    mov ebx, eax
    mov rdi, [r15+0x78]
    call qword ptr [r15+0x20]    ; PyRun_SimpleString(text)
    cdqe
    mov [r15+0x58], rax
    mov edi, ebx
    call qword ptr [r15+0x40]    ; PyGILState_Release(state)
    jmp restore
done:
    mov rdi, r15                 ; marker
    mov eax, 39
    syscall
restore:
    lea rsp, [r15+0x108]         ; &frame.uc
    mov eax, 15                  ; rt_sigreturn: every register, the FPU state and the mask back
    syscall
    ud2
"""
TRAMPOLINE = bytes.fromhex(
    "4989fffc31ff31f6498d973002000041ba08000000b80e0000000f0549833f020f848200000031ff498b7708ba030000"
    "0041ba2200000049c7c0ffffffff4531c9b8090000000f0549894748483d01f0ffff0f83990000004889c34889c7498b"
    "7778498b4f10f3a44889df498b7708ba05000000b80a0000000f05498947504885c075144889df4889de41ff57184898"
    "4989475885c074594889df498b7708b80b0000000f05eb4941ff572848984989476085c0740d41ff5730498947684885"
    "c0752e49c74770010000004c89ffb8270000000f0541ff573889c3498b7f7841ff572048984989475889df41ff5740eb"
    "0a4c89ffb8270000000f05498da708010000b80f0000000f050f0b"
)
# The pending call, at the start of the page: PyRun_SimpleString(page + 0x100), then a tail call
# munmap(page, size), whose 0 is the pending call's "success" (the bootstrap never raises).
WRAPPER_ASM = """\
    endbr64
    push rbx
    mov rbx, rdi
    lea rdi, [rbx+0x100]
    movabs rax, PyRun_SimpleString
    call rax
    mov rdi, rbx
    mov esi, SIZE
    pop rbx
    movabs rax, munmap
    jmp rax
"""
_WRAPPER_HEX = "f30f1efa534889fb488dbb0001000048b8{run}ffd04889dfbe{size}5b48b8{unmap}ffe0"
TEXT_OFFSET = 0x100

# -- context block layout (offsets from its 64-aligned start) --------------------------------
_P_MODE, _P_SIZE, _P_BLOBLEN = 0x00, 0x08, 0x10
_P_FUNCS = 0x18  # AddPendingCall, RunSimpleString, GILState_Check, GetFrame, Ensure, Release
_R_MMAP, _R_PROT, _R_RC, _R_HELD, _R_FRAME, _R_STAGE = 0x48, 0x50, 0x58, 0x60, 0x68, 0x70
_P_BLOB = 0x78
_FRAME = 0x100  # rt_sigframe: pretcode, then ucontext at 0x108
_UC = 0x108
_MCTX = _UC + 40
_FPSTATE = 0x300
_SS_INVALID = 0x7FF0  # not SS_ONSTACK, SS_DISABLE or 0
MODE_BUSY, MODE_PARKED = 1, 2

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
SYS_RESTART = 219
# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND: restarted as is; -ERESTART_RESTARTBLOCK: via
# restart_syscall. -EINTR: the syscall returns EINTR (what a ptrace stop does to epoll_wait & co).
_RESTART_SAME = (-512, -513, -514)
_RESTART_BLOCK = -516
_EINTR = -4
_REG_NAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
              "fs_base gs_base ds es fs gs").split()
_REGS = struct.Struct("<27Q")
_IDX = {n: i for i, n in enumerate(_REG_NAMES)}
_XFEATURE_AMX = (1 << 17) | (1 << 18)
BUSY_STACK = 16 * 1024  # C stack the busy trampoline may use below its block (Py_AddPendingCall)
PARKED_STACK = 512 * 1024  # the agent runs there in parked mode: deep Python C stacks
HIJACK_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
SPIN_S = 0.005  # see Session._wait

# Tests set this to observe (or SIGKILL the CLI at) each step: "busy:stopped", "parked:resumed"...
STAGE_HOOK: Callable[[str], None] | None = None

_PY_FUNCS = ["Py_AddPendingCall", "PyRun_SimpleString", "PyGILState_Check", "PyEval_GetFrame",
             "PyGILState_Ensure", "PyGILState_Release"]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    for fn in (libc.process_vm_readv, libc.process_vm_writev):
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                       ctypes.c_ulong]
    return libc


class _PtraceError(OSError):
    pass


def _ptrace(req: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    rc = _libc().ptrace(req, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if rc == -1:
        err = ctypes.get_errno()
        if err:
            raise _PtraceError(err, f"ptrace({req:#x}, {tid}): {os.strerror(err)}")
    return int(rc)


def vm_read(pid: int, addr: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _Iovec(addr, size)
    n = _libc().process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n != size:
        err = ctypes.get_errno() if n < 0 else errno.EFAULT
        raise OSError(err, f"reading {size} bytes at {addr:#x} in {pid}: {os.strerror(err)}")
    return buf.raw


def vm_write(pid: int, addr: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = _Iovec(addr, len(data))
    n = _libc().process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n != len(data):
        err = ctypes.get_errno() if n < 0 else errno.EFAULT
        raise OSError(err, f"writing {len(data)} bytes at {addr:#x} in {pid}: {os.strerror(err)}")


def available() -> str | None:
    """None when this injector can run from here, else why not."""
    if platform.machine() != "x86_64" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return f"it is written for x86_64 Linux and this is {platform.machine()}"
    if not os.path.exists("/proc/self/mem"):
        return "/proc is not mounted"
    return None


@functools.lru_cache(maxsize=32)
def _cave_offsets(path: str, _key: tuple[int, int, float]) -> tuple[int, int]:
    """(first PT_LOAD vaddr page, end of the last executable PT_LOAD) of an ELF file."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_X86_64":
            raise ValueError(f"{path} is not an x86_64 ELF file")
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        first = min(s["p_vaddr"] for s in loads) & ~0xFFF
        ends = [s["p_vaddr"] + s["p_memsz"] for s in loads if s["p_flags"] & 1]
    if not ends:
        raise ValueError(f"{path} has no executable segment")
    return first, max(ends)


def find_cave(target: Target, path: str) -> int:
    """Address of unused executable bytes (the tail of the last text page) large enough for us."""
    host = target.host_path(path)
    st = os.stat(host)
    first, end = _cave_offsets(host, (st.st_dev, st.st_ino, st.st_mtime))
    maps = [m for m in target.mappings if m.path == path]
    base = min((m.start for m in maps if m.offset == 0), default=None)
    if base is None:
        raise LookupError(f"{path} is not mapped at offset 0")
    start = (base - first + end + 15) & ~15
    page_end = (base - first + end + 0xFFF) & ~0xFFF
    if page_end - start < len(TRAMPOLINE):
        raise LookupError(f"only {page_end - start} unused bytes at the end of {path}'s text")
    if not any(m.start <= start and page_end <= m.end and m.perms.startswith("r-x") for m in maps):
        raise LookupError(f"the end of {path}'s text is not mapped executable")
    return start


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


def _shadow_stack(pid: int, tid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return any(line.startswith("x86_Thread_features:") and "shstk" in line for line in f)
    except OSError:
        return False


@dataclass
class Stopped:
    """What the tracer saw when T stopped."""

    regs: list[int]
    xstate: bytes

    @property
    def syscall(self) -> int:
        nr = self.regs[_IDX["orig_rax"]]
        return nr - (1 << 64) if nr >= 1 << 63 else nr

    @property
    def ret(self) -> int:
        v = self.regs[_IDX["rax"]]
        return v - (1 << 64) if v >= 1 << 63 else v

    @property
    def in_syscall(self) -> bool:
        """Stopped inside a syscall that was interrupted (or ended with EINTR) by our stop."""
        return self.syscall >= 0 and self.ret in (*_RESTART_SAME, _RESTART_BLOCK, _EINTR)


@dataclass
class HijackResult:
    results: dict[str, int]
    stop_s: float  # T stopped (no code of anyone running on it)
    total_s: float  # T not running its own code: stop + trampoline up to the marker
    tid: int
    syscall: int


class Refused(Exception):
    """The stopped thread's state does not allow what was asked; nothing was changed."""


def _resume_frame(st: Stopped) -> list[int]:
    """The registers the kernel would resume T with: a syscall interrupted by our stop restarts."""
    regs = list(st.regs)
    nr, ret = st.syscall, st.ret
    if nr >= 0 and ret in _RESTART_SAME:
        regs[_IDX["rax"]] = nr
        regs[_IDX["rip"]] -= 2
    elif nr >= 0 and ret == _RESTART_BLOCK:
        # The kernel would resume with restart_syscall, which runs the restart block the
        # interrupted call left. Our way back is rt_sigreturn, and rt_sigreturn resets that block
        # ("pending restarted system calls return -EINTR"): restart_syscall would then return
        # EINTR to code that never saw a signal (seen: a C poll(fds, n, -1) holding the GIL
        # returned -1/EINTR). A call whose restart does not depend on the time already spent is
        # issued again, exactly; one with a relative timeout returns EINTR, as after a signal.
        if _restartable_as_is(nr, regs):
            regs[_IDX["rax"]] = nr
        else:
            regs[_IDX["rax"]] = _EINTR & ((1 << 64) - 1)
            return regs
        regs[_IDX["rip"]] -= 2
    return regs


def _restartable_as_is(nr: int, regs: list[int]) -> bool:
    """True when issuing syscall ``nr`` again with the same arguments is exactly its restart:
    no timeout, or an absolute one (x86_64 numbers and argument registers)."""
    def arg(name: str) -> int:
        return regs[_IDX[name]]

    if nr == 7:  # poll(fds, nfds, int timeout_ms): a negative timeout waits forever
        t = arg("rdx") & 0xFFFFFFFF
        return t >= 1 << 31
    if nr == 271:  # ppoll(fds, nfds, tsp, sigmask, size): no timeout
        return arg("rdx") == 0
    if nr == 230:  # clock_nanosleep(clock, flags, req, rem): TIMER_ABSTIME
        return bool(arg("rsi") & 1)
    if nr == 202:  # futex(uaddr, op, val, timeout, ...): FUTEX_WAIT without timeout, WAIT_BITSET (absolute)
        cmd = arg("rsi") & ~(128 | 256)
        return (cmd == 0 and arg("r10") == 0) or cmd == 9
    return False


def _sigframe(regs: list[int], fpstate_addr: int) -> bytes:
    """ucontext (without the signal mask, which the trampoline reads on T)."""
    r = {n: regs[i] for i, n in enumerate(_REG_NAMES)}
    mctx = struct.pack(
        "<18Q4H5Q8Q",
        r["r8"], r["r9"], r["r10"], r["r11"], r["r12"], r["r13"], r["r14"], r["r15"],
        r["rdi"], r["rsi"], r["rbp"], r["rbx"], r["rdx"], r["rax"], r["rcx"], r["rsp"], r["rip"],
        r["eflags"],
        r["cs"] & 0xFFFF, 0, 0, r["ss"] & 0xFFFF,
        0, 0, 0, 0, fpstate_addr,
        *([0] * 8),
    )
    assert len(mctx) == 256
    # uc_flags: UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, as the kernel's own frames.
    # uc_stack: an invalid mode, so rt_sigreturn's restore_altstack fails, silently by design
    # ("squash all but EFAULT"), and leaves the thread's alternate signal stack as it is.
    stack = struct.pack("<QiiQ", 0, _SS_INVALID, 0, 0)
    uc = struct.pack("<QQ", 0x7, 0) + stack + mctx + bytes(8)
    return uc


def _fpstate(xstate: bytes) -> bytes:
    """The saved XSTATE bytes as a signal frame's fpstate: the ptrace form keeps XCR0 in the
    software bytes (464..511); a frame wants magic1, sizes and features there, and magic2 after."""
    size = len(xstate)
    xcr0 = struct.unpack_from("<Q", xstate, 464)[0]
    sw = struct.pack("<IIQI7I", 0x46505853, size + 4, xcr0, size, *([0] * 7))
    return xstate[:464] + sw + xstate[512:] + struct.pack("<I", 0x46505845)


class Session:
    """One seized thread. Every path out detaches (the kernel does too if we die)."""

    def __init__(self, target: Target, tid: int) -> None:
        self.target = target
        self.pid = target.pid
        self.tid = tid
        self.attached = False
        self.stopped = False
        self.label = ""

    def seize(self) -> None:
        try:
            _ptrace(PTRACE_SEIZE, self.tid, 0, PTRACE_O_TRACESYSGOOD)
        except _PtraceError as exc:
            raise self._explain(exc) from None
        self.attached = True

    def _explain(self, exc: OSError) -> errors.IntrospectError:
        t = self.target
        if exc.errno == errno.ESRCH:
            return errors.TargetExited("the process exited before it could be attached", pid=t.pid, name=t.name)
        if exc.errno == errno.EPERM:
            tracer = _tracer_of(self.pid, self.tid)
            if tracer:
                from introspect.target import process_name

                return errors.BadTargetState(
                    f"the process is already traced by pid {tracer} ({process_name(tracer)}); only one tracer can be "
                    "attached at a time", pid=t.pid, name=t.name,
                    help=f"Detach it (pid {tracer}) first, e.g. quit the debugger or strace.")
            return explain_ptrace_denied(t)
        return errors.InjectionFailed(f"ptrace failed: {exc}", pid=t.pid, name=t.name)

    def _wait(self, deadline: float) -> int:
        """Next wait status of T; raises TimeoutError at the deadline.

        T is stopped or running our code while we wait, so the first milliseconds are spent
        yielding rather than sleeping: every stop of the trampoline's syscalls is one round trip,
        and a 0.2 ms sleep each would be most of the time T spends away from its own code."""
        spin_until = time.monotonic() + SPIN_S
        while True:
            wpid, status = os.waitpid(self.tid, WALL | os.WNOHANG)
            if wpid == self.tid:
                return status
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError
            if now < spin_until:
                os.sched_yield()
            else:
                time.sleep(0.0002)

    def interrupt(self) -> tuple[float, Stopped]:
        """Stop T; return when it stopped and its saved state. Signals meanwhile are re-delivered."""
        t0 = time.monotonic()
        _ptrace(PTRACE_INTERRUPT, self.tid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while True:
            try:
                status = self._wait(deadline)
            except TimeoutError:
                raise errors.InjectionFailed(
                    f"thread {self.tid} did not stop within {STOP_TIMEOUT_S:g} s (uninterruptible sleep, D state?)",
                    pid=self.pid, name=self.target.name,
                    help="Check `cat /proc/PID/stack`; try again when the process is not blocked in the kernel.") from None
            self._check_alive(status)
            sig, event = os.WSTOPSIG(status), status >> 16
            if event == PTRACE_EVENT_STOP and sig == signal.SIGTRAP:
                break
            if event == PTRACE_EVENT_STOP:
                # A group-stop (someone sent SIGSTOP): leave it stopped, as they asked.
                self.stopped = True
                raise errors.BadTargetState("the process was stopped (SIGSTOP) while introspect attached",
                                            pid=self.pid, name=self.target.name,
                                            help=f"Resume it with `kill -CONT {self.pid}` and run introspect again.")
            # A signal-delivery-stop: deliver it and keep waiting for our interrupt's stop.
            _ptrace(PTRACE_CONT, self.tid, 0, sig)
        self.stopped = True
        regs = (ctypes.c_ulonglong * 27)()
        _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(regs))
        buf = ctypes.create_string_buffer(64 * 1024)
        iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(buf))
        _ptrace(PTRACE_GETREGSET, self.tid, NT_X86_XSTATE, ctypes.addressof(iov))
        return t0, Stopped(list(regs), buf.raw[: iov.len])

    def _check_alive(self, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.attached = False
            raise errors.TargetExited("the process exited while introspect was attached", pid=self.pid,
                                      name=self.target.name)

    def hijack(self, regs: list[int], marker_rdi: int, deadline_s: float) -> None:
        """Resume T with ``regs`` under syscall tracing until it makes the marker syscall (raises
        TimeoutError at the deadline). T is left stopped at the marker, still ours to read."""
        arr = (ctypes.c_ulonglong * 27)(*regs)
        _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(arr))
        sig = 0
        first = True
        deadline = time.monotonic() + deadline_s
        while True:
            _ptrace(PTRACE_SYSCALL, self.tid, 0, sig)
            self.stopped = False
            if sig == 0 and first:
                first = False
                _stage(f"{self.label}:resumed")
            sig = 0
            status = self._wait(deadline)
            self._check_alive(status)
            self.stopped = True
            wsig, event = os.WSTOPSIG(status), status >> 16
            if wsig == signal.SIGTRAP | 0x80:
                now = (ctypes.c_ulonglong * 27)()
                _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(now))
                if now[_IDX["orig_rax"]] == SYS_GETPID and now[_IDX["rdi"]] == marker_rdi:
                    return
                continue
            if event == PTRACE_EVENT_STOP:
                if wsig == signal.SIGTRAP:
                    continue
                raise errors.BadTargetState("the process was stopped (SIGSTOP) while introspect worked on it",
                                            pid=self.pid, name=self.target.name,
                                            help=f"Resume it with `kill -CONT {self.pid}`; the request completes then.")
            sig = wsig  # re-deliver

    def detach(self) -> None:
        if not self.attached:
            return
        try:
            if not self.stopped:
                # Detaching needs a stopped tracee: stop it (our trampoline goes on by itself after).
                _ptrace(PTRACE_INTERRUPT, self.tid)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while True:
                    status = self._wait(deadline)
                    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                        self.attached = False
                        return
                    sig, event = os.WSTOPSIG(status), status >> 16
                    if event == PTRACE_EVENT_STOP or sig == signal.SIGTRAP | 0x80:
                        break
                    _ptrace(PTRACE_CONT, self.tid, 0, sig)  # re-deliver, keep waiting for our stop
            _ptrace(PTRACE_DETACH, self.tid, 0, 0)
        except (OSError, TimeoutError):
            pass  # gone, or the kernel will detach it when we exit
        self.attached = False


def _stage(name: str) -> None:
    if STAGE_HOOK is not None:
        STAGE_HOOK(name)


def _tracer_of(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _stack_ok(mappings: tuple[Mapping, ...] | list[Mapping], rsp: int, low: int) -> bool:
    m = next((m for m in mappings if m.start <= rsp - 1 < m.end), None)
    if m is None or not m.perms.startswith("rw"):
        return False
    return m.start <= low or m.path == "[stack]"


class PtraceInjector:
    name = "ptrace"

    def _addresses(self, target: Target) -> dict[str, int]:
        if target.capi_object is None or target.libc_object is None:
            raise errors.InjectionFailed("cannot find the Python C API or libc in the target's memory map",
                                         pid=target.pid, name=target.name, help="Try --method gdb.")
        try:
            addrs = symbols.resolve(target.pid, target.mappings, target.capi_object, _PY_FUNCS)
            addrs.update(symbols.resolve(target.pid, target.mappings, target.libc_object, ["munmap"]))
            addrs["cave"] = find_cave(target, target.libc_object)
        except (LookupError, OSError, ValueError) as exc:
            raise errors.InjectionFailed(f"cannot prepare the injection: {exc}", pid=target.pid, name=target.name,
                                         help="Try --method gdb.") from None
        return addrs

    def _install_cave(self, target: Target, addr: int) -> None:
        try:
            if vm_read(target.pid, addr, len(TRAMPOLINE)) == TRAMPOLINE:
                return
        except OSError:
            pass
        try:
            fd = os.open(f"/proc/{target.pid}/mem", os.O_RDWR)
            try:
                if os.pwrite(fd, TRAMPOLINE, addr) == len(TRAMPOLINE):
                    return
            finally:
                os.close(fd)
        except OSError:
            pass
        # /proc/PID/mem writes may be disabled (proc_mem.force_override=never): poke words.
        data = TRAMPOLINE + b"\0" * (-len(TRAMPOLINE) % 8)
        for off in range(0, len(data), 8):
            word = int.from_bytes(data[off:off + 8], "little")
            if off + 8 > len(TRAMPOLINE):
                old = vm_read(target.pid, addr + off, 8)
                keep = len(TRAMPOLINE) - off
                word = int.from_bytes(data[off:off + keep] + old[keep:], "little")
            _ptrace(PTRACE_POKEDATA, target.pid, addr + off, word)
        if vm_read(target.pid, addr, len(TRAMPOLINE)) != TRAMPOLINE:
            raise OSError(errno.EIO, "the trampoline could not be written")

    def _run(self, target: Target, tid: int, mode: int, bootstrap: str, addrs: dict[str, int]) -> HijackResult:
        text = bootstrap.encode() + b"\0"
        if mode == MODE_BUSY:
            wrapper = _wrapper(addrs["PyRun_SimpleString"], addrs["munmap"], _page_size(text))
            blob = wrapper.ljust(TEXT_OFFSET, b"\xcc") + text
        else:
            blob = text
        if _shadow_stack(target.pid, tid):
            raise Refused(f"thread {tid} runs with an x86 shadow stack, which this injector does not support")
        session = Session(target, tid)
        label = session.label = "busy" if mode == MODE_BUSY else "parked"
        session.seize()
        try:
            _stage(f"{label}:seized")
            try:
                self._install_cave(target, addrs["cave"])
            except OSError as exc:
                raise errors.InjectionFailed(f"cannot write the trampoline into the target: {exc}", pid=target.pid,
                                             name=target.name, help="Try --method gdb.") from None
            t0, st = session.interrupt()
            _stage(f"{label}:stopped")
            xcr0 = struct.unpack_from("<Q", st.xstate, 464)[0] if len(st.xstate) >= 576 else 0
            if len(st.xstate) < 576 or xcr0 & _XFEATURE_AMX:
                raise Refused("the thread's vector state is not one this injector restores (AMX, or no XSAVE)")
            if mode == MODE_PARKED:
                _check_parked(st)
            fp = _fpstate(st.xstate)
            size = _FPSTATE + len(fp) + 63 & ~63
            size += len(blob)
            rsp = st.regs[_IDX["rsp"]]
            ctx = (rsp - 256 - size) & ~63
            stack_low = ctx - 64 - (PARKED_STACK if mode == MODE_PARKED else BUSY_STACK)
            if not _stack_ok(target.mappings, rsp, stack_low):
                raise Refused(f"thread {tid}'s stack has too little room below its stack pointer")
            blob_addr = ctx + (_FPSTATE + len(fp) + 63 & ~63)
            block = bytearray(size)
            struct.pack_into("<3Q", block, 0, mode, _page_size(text) if mode == MODE_BUSY else 0, len(blob))
            struct.pack_into("<6Q", block, _P_FUNCS, *(addrs[n] for n in _PY_FUNCS))
            struct.pack_into("<Q", block, _P_BLOB, blob_addr)
            uc = _sigframe(_resume_frame(st), ctx + _FPSTATE)
            block[_UC:_UC + len(uc)] = uc
            block[_FPSTATE:_FPSTATE + len(fp)] = fp
            block[blob_addr - ctx:] = blob
            try:
                vm_write(target.pid, ctx, bytes(block))
            except OSError as exc:
                raise Refused(f"cannot write below thread {tid}'s stack pointer: {exc}") from None
            _stage(f"{label}:written")
            regs = list(st.regs)
            regs[_IDX["rip"]] = addrs["cave"]
            regs[_IDX["rsp"]] = ctx - 64
            regs[_IDX["rdi"]] = ctx
            regs[_IDX["orig_rax"]] = (1 << 64) - 1
            regs[_IDX["eflags"]] &= ~0x500  # DF and TF clear for C calls
            t_resume = time.monotonic()
            try:
                session.hijack(regs, ctx, HIJACK_TIMEOUT_S)
            except TimeoutError:
                raise errors.InjectionFailed(
                    f"the injected call on thread {tid} did not finish within {HIJACK_TIMEOUT_S:g} s; it will finish "
                    "by itself and restore the thread", pid=target.pid, name=target.name) from None
            _stage(f"{label}:marker")
            raw = vm_read(target.pid, ctx, 0x78)
            words = struct.unpack("<15Q", raw)
            t_end = time.monotonic()
            res = {"mmap": words[_R_MMAP // 8], "mprotect": _signed(words[_R_PROT // 8]),
                   "rc": _signed(words[_R_RC // 8]), "held": _signed(words[_R_HELD // 8]),
                   "frame": words[_R_FRAME // 8], "stage": words[_R_STAGE // 8]}
            return HijackResult(res, t_resume - t0, t_end - t0, tid, st.syscall)
        finally:
            session.detach()

    def inject(self, target: Target, run: RunDir, bootstrap: str) -> Injection:
        addrs = self._addresses(target)
        last: Exception | None = None
        for tid in busy_candidates(target.pid)[:4]:
            try:
                hr = self._run(target, tid, MODE_BUSY, bootstrap, addrs)
            except Refused as exc:
                last = exc
                continue
            except errors.TargetExited:
                if not target.is_alive():
                    raise
                last = Exception(f"thread {tid} exited")
                continue
            r = hr.results
            if r["mmap"] >= (1 << 64) - 4095:
                raise errors.InjectionFailed(f"mmap failed in the target: {os.strerror(-_signed(r['mmap']))}",
                                             pid=target.pid, name=target.name)
            if r["mprotect"] != 0:
                raise errors.InjectionFailed(
                    f"the target may not map executable memory (mprotect: {os.strerror(-r['mprotect'])}; "
                    "an SELinux or seccomp policy?)", pid=target.pid, name=target.name, help="Try --method gdb.")
            if r["rc"] != 0:
                raise errors.InjectionFailed(
                    "Py_AddPendingCall refused the request (its queue is full or the interpreter is finalizing)",
                    pid=target.pid, name=target.name, help="Try again in a moment.")
            who = "main thread" if tid == target.pid else f"thread {tid}"
            return Injection("ptrace", hr.total_s,
                             f"Py_AddPendingCall from {who} (stopped {hr.stop_s * 1e3:.2f} ms, "
                             f"{hr.total_s * 1e3:.2f} ms with the call); runs on the main thread")
        raise errors.InjectionFailed(f"no thread of the target could take the injection: {last}",
                                     pid=target.pid, name=target.name, help="Try --method gdb.")

    def run_parked(self, target: Target, run: RunDir, bootstrap: str) -> Injection:
        """Run the bootstrap *now* on the main thread, which sits idle in a blocking syscall.

        Decided on the stopped thread from its own state: it must be inside a blocking syscall
        (not futex: that may be a lock inside the allocator); then either it does not hold the
        GIL (an idle worker: PyGILState_Ensure takes it) or it holds it with no Python frame
        executing (uWSGI's C event loop, an embedding application). Anything else is refused
        with the reason, and nothing is changed.
        """
        addrs = self._addresses(target)
        try:
            hr = self._run(target, target.pid, MODE_PARKED, bootstrap, addrs)
        except Refused as exc:
            raise errors.InjectionFailed(f"cannot run on the parked main thread: {exc}", pid=target.pid,
                                         name=target.name) from None
        r = hr.results
        nr = hr.syscall
        where = f"{BLOCKING_SYSCALLS.get(nr, nr)}()"
        if r["stage"] != 1:
            raise errors.InjectionFailed(
                f"cannot run on the main thread: it holds the GIL while blocked in {where} inside C code called "
                "from Python (a Python frame is executing), so there is no safe point until that call returns",
                pid=target.pid, name=target.name,
                help="It will answer once that call returns; if it never returns, nothing can run Python there safely.")
        held = "holding the GIL outside any Python frame" if r["held"] else "with the GIL released"
        return Injection("ptrace", hr.total_s,
                         f"PyGILState_Ensure + PyRun_SimpleString on the main thread parked in {where} {held}")

    def release(self, target: Target, injection: Injection) -> None:
        return None  # the page unmaps itself after the pending call ran


# x86_64 syscalls in which a thread parks with the GIL released (Python wraps each in
# Py_BEGIN_ALLOW_THREADS) or in a C event loop, never inside the allocator. futex is left out on
# purpose: a thread waiting for the GIL, or for malloc's lock, sits in futex too.
BLOCKING_SYSCALLS = {0: "read", 7: "poll", 23: "select", 34: "pause", 35: "nanosleep", 43: "accept", 45: "recvfrom",
                     47: "recvmsg", 61: "wait4", 230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid",
                     270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2"}


def _check_parked(st: Stopped) -> None:
    nr = st.syscall
    if nr < 0:
        raise Refused("the main thread is running code outside any system call (a long C loop?); "
                      "the queued request runs when it returns to the interpreter")
    if nr == 202:
        raise Refused("the main thread waits on a lock (futex): that may be the GIL, or a lock inside the "
                      "allocator, where running Python would deadlock; the queued request runs once it is released")
    if nr not in BLOCKING_SYSCALLS or not st.in_syscall:
        raise Refused(f"the main thread is in system call {nr}, not one it parks in")


def _wrapper(run: int, unmap: int, size: int) -> bytes:
    return bytes.fromhex(_WRAPPER_HEX.format(run=run.to_bytes(8, "little").hex(),
                                               size=size.to_bytes(4, "little").hex(),
                                               unmap=unmap.to_bytes(8, "little").hex()))


def _page_size(text: bytes) -> int:
    return (TEXT_OFFSET + len(text) + 0xFFF) & ~0xFFF


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
