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

Where the pieces live: the trampoline's listing and bytes, the context block's layout and the
cave in ``trampoline.py``; the register layout, the syscall restart and the signal frame's bytes
in ``sigframe.py``; the ctypes calls (ptrace, process_vm_readv/writev, ``/proc/PID/task``) in
``linux.py``. This file seizes the thread, writes the block, runs the trampoline and detaches.
"""

from __future__ import annotations

import ctypes
import errno
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
from introspect.inject.linux import (
    NT_X86_XSTATE,
    PTRACE_CONT,
    PTRACE_DETACH,
    PTRACE_EVENT_STOP,
    PTRACE_GETREGS,
    PTRACE_GETREGSET,
    PTRACE_INTERRUPT,
    PTRACE_O_TRACESYSGOOD,
    PTRACE_POKEDATA,
    PTRACE_SEIZE,
    PTRACE_SETREGS,
    PTRACE_SYSCALL,
    SYS_GETPID,
    WALL,
    Iovec,
    PtraceError,
    busy_candidates,
    ptrace,
    shadow_stack,
    tracer_of,
    vm_read,
    vm_write,
)
from introspect.inject.sigframe import IDX, XFEATURE_AMX, Stopped, fpstate, resume_frame, ucontext
from introspect.inject.trampoline import (
    FPSTATE,
    MODE_BUSY,
    MODE_PARKED,
    P_BLOB,
    P_FUNCS,
    PY_FUNCS,
    R_FRAME,
    R_HELD,
    R_MMAP,
    R_PROT,
    R_RC,
    R_STAGE,
    TEXT_OFFSET,
    TRAMPOLINE,
    UC,
    find_cave,
    page_size,
    wrapper_code,
)
from introspect.maps import Mapping
from introspect.target import Target, explain_ptrace_denied

BUSY_STACK = 16 * 1024  # C stack the busy trampoline may use below its block (Py_AddPendingCall)
PARKED_STACK = 512 * 1024  # the agent runs there in parked mode: deep Python C stacks
HIJACK_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
SPIN_S = 0.005  # see Session._wait

# Tests set this to observe (or SIGKILL the CLI at) each step: "busy:stopped", "parked:resumed"...
STAGE_HOOK: Callable[[str], None] | None = None


def available() -> str | None:
    """None when this injector can run from here, else why not."""
    if platform.machine() != "x86_64" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return f"it is written for x86_64 Linux and this is {platform.machine()}"
    if not os.path.exists("/proc/self/mem"):
        return "/proc is not mounted"
    return None


@dataclass
class HijackResult:
    results: dict[str, int]
    stop_s: float  # T stopped (no code of anyone running on it)
    total_s: float  # T not running its own code: stop + trampoline up to the marker
    tid: int
    syscall: int


class Refused(Exception):
    """The stopped thread's state does not allow what was asked; nothing was changed."""


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
            ptrace(PTRACE_SEIZE, self.tid, 0, PTRACE_O_TRACESYSGOOD)
        except PtraceError as exc:
            raise self._explain(exc) from None
        self.attached = True

    def _explain(self, exc: OSError) -> errors.IntrospectError:
        t = self.target
        if exc.errno == errno.ESRCH:
            return errors.TargetExited(
                "the process exited before it could be attached", pid=t.pid, name=t.name
            )
        if exc.errno == errno.EPERM:
            tracer = tracer_of(self.pid, self.tid)
            if tracer:
                from introspect.target import process_name

                return errors.BadTargetState(
                    f"the process is already traced by pid {tracer} ({process_name(tracer)}); only "
                    "one tracer can be attached at a time",
                    pid=t.pid,
                    name=t.name,
                    help=f"Detach it (pid {tracer}) first, e.g. quit the debugger or strace.",
                )
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
        """Stop T; return when it stopped and its saved state. Signals meanwhile are
        re-delivered."""
        t0 = time.monotonic()
        ptrace(PTRACE_INTERRUPT, self.tid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while True:
            try:
                status = self._wait(deadline)
            except TimeoutError:
                raise errors.InjectionFailed(
                    f"thread {self.tid} did not stop within {STOP_TIMEOUT_S:g} s (uninterruptible "
                    "sleep, D state?)",
                    pid=self.pid,
                    name=self.target.name,
                    help="Check `cat /proc/PID/stack`; try again when the process is not blocked "
                         "in the kernel.",
                ) from None
            self._check_alive(status)
            sig, event = os.WSTOPSIG(status), status >> 16
            if event == PTRACE_EVENT_STOP and sig == signal.SIGTRAP:
                break
            if event == PTRACE_EVENT_STOP:
                # A group-stop (someone sent SIGSTOP): leave it stopped, as they asked.
                self.stopped = True
                raise errors.BadTargetState(
                    "the process was stopped (SIGSTOP) while introspect attached", pid=self.pid,
                    name=self.target.name,
                    help=f"Resume it with `kill -CONT {self.pid}` and run introspect again.",
                )
            # A signal-delivery-stop: deliver it and keep waiting for our interrupt's stop.
            ptrace(PTRACE_CONT, self.tid, 0, sig)
        self.stopped = True
        regs = (ctypes.c_ulonglong * 27)()
        ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(regs))
        buf = ctypes.create_string_buffer(64 * 1024)
        iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(buf))
        ptrace(PTRACE_GETREGSET, self.tid, NT_X86_XSTATE, ctypes.addressof(iov))
        return t0, Stopped(list(regs), buf.raw[: iov.len])

    def _check_alive(self, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.attached = False
            raise errors.TargetExited("the process exited while introspect was attached",
                                      pid=self.pid, name=self.target.name)

    def hijack(self, regs: list[int], marker_rdi: int, deadline_s: float) -> None:
        """Resume T with ``regs`` under syscall tracing until it makes the marker syscall (raises
        TimeoutError at the deadline). T is left stopped at the marker, still ours to read."""
        arr = (ctypes.c_ulonglong * 27)(*regs)
        ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(arr))
        sig = 0
        first = True
        deadline = time.monotonic() + deadline_s
        while True:
            ptrace(PTRACE_SYSCALL, self.tid, 0, sig)
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
                ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(now))
                if now[IDX["orig_rax"]] == SYS_GETPID and now[IDX["rdi"]] == marker_rdi:
                    return
                continue
            if event == PTRACE_EVENT_STOP:
                if wsig == signal.SIGTRAP:
                    continue
                raise errors.BadTargetState(
                    "the process was stopped (SIGSTOP) while introspect worked on it", pid=self.pid,
                    name=self.target.name,
                    help=f"Resume it with `kill -CONT {self.pid}`; the request completes then.",
                )
            sig = wsig  # re-deliver

    def detach(self) -> None:
        if not self.attached:
            return
        try:
            if not self.stopped:
                # Detaching needs a stopped tracee: stop it (our trampoline goes on by itself
                # after).
                ptrace(PTRACE_INTERRUPT, self.tid)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while True:
                    status = self._wait(deadline)
                    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                        self.attached = False
                        return
                    sig, event = os.WSTOPSIG(status), status >> 16
                    if event == PTRACE_EVENT_STOP or sig == signal.SIGTRAP | 0x80:
                        break
                    ptrace(PTRACE_CONT, self.tid, 0, sig)  # re-deliver, keep waiting for our stop
            ptrace(PTRACE_DETACH, self.tid, 0, 0)
        except (OSError, TimeoutError):
            pass  # gone, or the kernel will detach it when we exit
        self.attached = False


def _stage(name: str) -> None:
    if STAGE_HOOK is not None:
        STAGE_HOOK(name)


def _stack_ok(mappings: tuple[Mapping, ...] | list[Mapping], rsp: int, low: int) -> bool:
    m = next((m for m in mappings if m.start <= rsp - 1 < m.end), None)
    if m is None or not m.perms.startswith("rw"):
        return False
    return m.start <= low or m.path == "[stack]"


class PtraceInjector:
    name = "ptrace"

    def _addresses(self, target: Target) -> dict[str, int]:
        if target.capi_object is None or target.libc_object is None:
            raise errors.InjectionFailed(
                "cannot find the Python C API or libc in the target's memory map", pid=target.pid,
                name=target.name, help="Try --method gdb.",
            )
        try:
            addrs = symbols.resolve(target.pid, target.mappings, target.capi_object, PY_FUNCS)
            addrs.update(
                symbols.resolve(target.pid, target.mappings, target.libc_object, ["munmap"])
            )
            addrs["cave"] = find_cave(target, target.libc_object)
        except (LookupError, OSError, ValueError) as exc:
            raise errors.InjectionFailed(f"cannot prepare the injection: {exc}", pid=target.pid,
                                         name=target.name, help="Try --method gdb.") from None
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
            word = int.from_bytes(data[off : off + 8], "little")
            if off + 8 > len(TRAMPOLINE):
                old = vm_read(target.pid, addr + off, 8)
                keep = len(TRAMPOLINE) - off
                word = int.from_bytes(data[off : off + keep] + old[keep:], "little")
            ptrace(PTRACE_POKEDATA, target.pid, addr + off, word)
        if vm_read(target.pid, addr, len(TRAMPOLINE)) != TRAMPOLINE:
            raise OSError(errno.EIO, "the trampoline could not be written")

    def _run(
        self, target: Target, tid: int, mode: int, bootstrap: str, addrs: dict[str, int]
    ) -> HijackResult:
        text = bootstrap.encode() + b"\0"
        if mode == MODE_BUSY:
            wrapper = wrapper_code(addrs["PyRun_SimpleString"], addrs["munmap"], page_size(text))
            blob = wrapper.ljust(TEXT_OFFSET, b"\xcc") + text
        else:
            blob = text
        if shadow_stack(target.pid, tid):
            raise Refused(
                f"thread {tid} runs with an x86 shadow stack, which this injector does not support"
            )
        session = Session(target, tid)
        label = session.label = "busy" if mode == MODE_BUSY else "parked"
        session.seize()
        try:
            _stage(f"{label}:seized")
            try:
                self._install_cave(target, addrs["cave"])
            except OSError as exc:
                raise errors.InjectionFailed(f"cannot write the trampoline into the target: {exc}",
                                             pid=target.pid, name=target.name,
                                             help="Try --method gdb.") from None
            t0, st = session.interrupt()
            _stage(f"{label}:stopped")
            xcr0 = struct.unpack_from("<Q", st.xstate, 464)[0] if len(st.xstate) >= 576 else 0
            if len(st.xstate) < 576 or xcr0 & XFEATURE_AMX:
                raise Refused(
                    "the thread's vector state is not one this injector restores (AMX, or no XSAVE)"
                )
            if mode == MODE_PARKED:
                _check_parked(st)
            fp = fpstate(st.xstate)
            size = FPSTATE + len(fp) + 63 & ~63
            size += len(blob)
            rsp = st.regs[IDX["rsp"]]
            ctx = (rsp - 256 - size) & ~63
            stack_low = ctx - 64 - (PARKED_STACK if mode == MODE_PARKED else BUSY_STACK)
            if not _stack_ok(target.mappings, rsp, stack_low):
                raise Refused(f"thread {tid}'s stack has too little room below its stack pointer")
            blob_addr = ctx + (FPSTATE + len(fp) + 63 & ~63)
            block = bytearray(size)
            struct.pack_into(
                "<3Q", block, 0, mode, page_size(text) if mode == MODE_BUSY else 0, len(blob)
            )
            struct.pack_into("<6Q", block, P_FUNCS, *(addrs[n] for n in PY_FUNCS))
            struct.pack_into("<Q", block, P_BLOB, blob_addr)
            uc = ucontext(resume_frame(st), ctx + FPSTATE)
            block[UC : UC + len(uc)] = uc
            block[FPSTATE : FPSTATE + len(fp)] = fp
            block[blob_addr - ctx :] = blob
            try:
                vm_write(target.pid, ctx, bytes(block))
            except OSError as exc:
                raise Refused(f"cannot write below thread {tid}'s stack pointer: {exc}") from None
            _stage(f"{label}:written")
            regs = list(st.regs)
            regs[IDX["rip"]] = addrs["cave"]
            regs[IDX["rsp"]] = ctx - 64
            regs[IDX["rdi"]] = ctx
            regs[IDX["orig_rax"]] = (1 << 64) - 1
            regs[IDX["eflags"]] &= ~0x500  # DF and TF clear for C calls
            t_resume = time.monotonic()
            try:
                session.hijack(regs, ctx, HIJACK_TIMEOUT_S)
            except TimeoutError:
                raise errors.InjectionFailed(
                    f"the injected call on thread {tid} did not finish within {HIJACK_TIMEOUT_S:g} "
                    "s; it will finish by itself and restore the thread",
                    pid=target.pid,
                    name=target.name,
                ) from None
            _stage(f"{label}:marker")
            raw = vm_read(target.pid, ctx, 0x78)
            words = struct.unpack("<15Q", raw)
            t_end = time.monotonic()
            res = {"mmap": words[R_MMAP // 8], "mprotect": _signed(words[R_PROT // 8]),
                   "rc": _signed(words[R_RC // 8]), "held": _signed(words[R_HELD // 8]),
                   "frame": words[R_FRAME // 8], "stage": words[R_STAGE // 8]}
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
                raise errors.InjectionFailed(
                    f"mmap failed in the target: {os.strerror(-_signed(r['mmap']))}",
                    pid=target.pid, name=target.name,
                )
            if r["mprotect"] != 0:
                raise errors.InjectionFailed(
                    "the target may not map executable memory (mprotect: "
                    f"{os.strerror(-r['mprotect'])}; an SELinux or seccomp policy?)",
                    pid=target.pid,
                    name=target.name,
                    help="Try --method gdb.",
                )
            if r["rc"] != 0:
                raise errors.InjectionFailed(
                    "Py_AddPendingCall refused the request (its queue is full or the interpreter "
                    "is finalizing)",
                    pid=target.pid,
                    name=target.name,
                    help="Try again in a moment.",
                )
            who = "main thread" if tid == target.pid else f"thread {tid}"
            return Injection(
                "ptrace",
                hr.total_s,
                f"Py_AddPendingCall from {who} (stopped {hr.stop_s * 1e3:.2f} ms, "
                f"{hr.total_s * 1e3:.2f} ms with the call); runs on the main thread",
            )
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
            raise errors.InjectionFailed(
                f"cannot run on the parked main thread: {exc}", pid=target.pid, name=target.name
            ) from None
        r = hr.results
        nr = hr.syscall
        where = f"{BLOCKING_SYSCALLS.get(nr, nr)}()"
        if r["stage"] != 1:
            raise errors.InjectionFailed(
                f"cannot run on the main thread: it holds the GIL while blocked in {where} inside "
                "C code called from Python (a Python frame is executing), so there is no safe "
                "point until that call returns",
                pid=target.pid,
                name=target.name,
                help="It will answer once that call returns; if it never returns, nothing can run "
                     "Python there safely.",
            )
        held = "holding the GIL outside any Python frame" if r["held"] else "with the GIL released"
        return Injection(
            "ptrace", hr.total_s,
            f"PyGILState_Ensure + PyRun_SimpleString on the main thread parked in {where} {held}",
        )

    def release(self, target: Target, injection: Injection) -> None:
        return None  # the page unmaps itself after the pending call ran


# x86_64 syscalls in which a thread parks with the GIL released (Python wraps each in
# Py_BEGIN_ALLOW_THREADS) or in a C event loop, never inside the allocator. futex is left out on
# purpose: a thread waiting for the GIL, or for malloc's lock, sits in futex too.
BLOCKING_SYSCALLS = {0: "read", 7: "poll", 23: "select", 34: "pause", 35: "nanosleep", 43: "accept",
                     45: "recvfrom", 47: "recvmsg", 61: "wait4", 230: "clock_nanosleep",
                     232: "epoll_wait", 247: "waitid", 270: "pselect6", 271: "ppoll",
                     281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2"}


def _check_parked(st: Stopped) -> None:
    nr = st.syscall
    if nr < 0:
        raise Refused(
            "the main thread is running code outside any system call (a long C loop?); "
            "the queued request runs when it returns to the interpreter"
        )
    if nr == 202:
        raise Refused(
            "the main thread waits on a lock (futex): that may be the GIL, or a lock inside the "
            "allocator, where running Python would deadlock; the queued request runs once it is "
            "released"
        )
    if nr not in BLOCKING_SYSCALLS or not st.in_syscall:
        raise Refused(f"the main thread is in system call {nr}, not one it parks in")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
