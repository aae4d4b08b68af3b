"""gdb injector for CPython 3.8+ (stripped distro builds included).

Rules learnt the hard way (DESIGN.md):
- every call is made through an explicit function-pointer cast of a pre-resolved address: a
  stripped build has no debug info and gdb refuses "unknown return type" calls;
- no string literal is ever handed to a target function (gdb would malloc it *inside* the target,
  which deadlocks if the stopped thread holds the allocator's lock): the text goes into a page we
  ``mmap`` and fill with ``restore``;
- ``Py_AddPendingCall(PyRun_SimpleString, page)`` runs the bootstrap on the main thread, between
  bytecodes; the bootstrap cannot raise (see ``channel.bootstrap_source``);
- no symbol loading (``auto-solib-add off``, ``--readnever``): the target stays stopped for
  milliseconds only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from introspect import errors
from introspect.channel import RunDir
from introspect.inject import Injection, symbols
from introspect.target import Target, explain_ptrace_denied

GDB_TIMEOUT_S = 20.0
PAGE = 4096
_PY_FUNCS = ["Py_AddPendingCall", "PyRun_SimpleString", "PyGILState_Check", "PyGILState_Ensure",
             "PyGILState_Release"]
# x86_64 syscalls in which a thread parks with the GIL released (Python wraps each in
# Py_BEGIN_ALLOW_THREADS), never inside the allocator. futex is left out on purpose: a thread
# waiting *for the GIL* sits in futex too.
BLOCKING_SYSCALLS = {
    0: "read",
    7: "poll",
    23: "select",
    34: "pause",
    35: "nanosleep",
    43: "accept",
    45: "recvfrom",
    47: "recvmsg",
    61: "wait4",
    230: "clock_nanosleep",
    232: "epoll_wait",
    247: "waitid",
    270: "pselect6",
    271: "ppoll",
    281: "epoll_pwait",
    288: "accept4",
    441: "epoll_pwait2",
    # poll/nanosleep interrupted by a ptrace stop (our own first attach) resume as this
    219: "restart_syscall",
}
# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK, -EINTR: the values rax
# holds when ptrace stopped a thread inside a blocking syscall.
_RESTART = (-512, -513, -514, -516, -4)
_LIBC_FUNCS = ["mmap", "munmap"]
_PROT_RW = 0x3
_MAP_PRIVATE_ANON = 0x22

# gdb before 14 reads and writes the AVX-512 parts of the XSAVE area at Intel's offsets; AMD Zen 3+
# lays them out elsewhere (no MPX gap). An inferior call then "restores" zmm16-31/k0-7 with wrong
# values: a thread stopped inside glibc's EVEX memset/memcpy resumes with zeroed vector registers
# and writes zeros (measured: a dict's index table zeroed, the target spinning in dictresize; a
# SIGSEGV). Our calls (mmap, Py_AddPendingCall, munmap) use no AVX-512, and across the parked
# thread's libc call every vector register is dead by the ABI, so gdb is told to leave those
# registers alone: the target description it uses is its own minus the avx512 and pkeys features.
# It needs gdb's Python; never raises (a failing python block would end the script).
_TRIM_TDESC = """\
python
try:
    import os as _os, re as _re, tempfile as _tf
    _x = gdb.execute("maint print xml-tdesc", to_string=True)
    _y = _re.sub(r'[ \\t]*<feature name="org\\.gnu\\.gdb\\.i386\\.(?:avx512|pkeys)">'
                 r'.*?</feature>\\n', '', _x, flags=_re.S)
    if _y != _x and "<?xml" in _y:
        _fd, _p = _tf.mkstemp(prefix="introspect-tdesc-", suffix=".xml")
        try:
            _os.write(_fd, _y[_y.index("<?xml"):].encode())
            _os.close(_fd)
            gdb.execute("set tdesc filename " + _p)
        finally:
            _os.unlink(_p)
        print("INTROSPECT_TDESC trimmed")
except Exception as _e:
    print("INTROSPECT_TDESC failed: %s" % _e)
    # Where the trim is what protects the target: stop here (gdb skips the rest, detaches).
    if STRICT:
        raise gdb.GdbError("introspect: stopping before any call into the target")
end
"""

_PREAMBLE = """\
set auto-solib-add off
set unwindonsignal on
set confirm off
set pagination off
set width 0
"""


def _amd_avx512() -> bool:
    """An AMD CPU with AVX-512: where gdb < 14 misplaces the AVX-512 state (see _TRIM_TDESC)."""
    try:
        with open("/proc/cpuinfo") as f:
            head = f.read(8192)
    except OSError:
        return True  # cannot tell: assume the risk
    return "AuthenticAMD" in head and " avx512f" in head


def gdb_path() -> str:
    path = shutil.which("gdb")
    if path is None:
        raise errors.InjectionFailed(
            "gdb is not installed, and this target needs it (CPython < 3.14, or remote debugging "
            "unavailable)",
            help="Install it: `apt-get install gdb` (Debian/Ubuntu), `dnf install gdb` "
                 "(Fedora/RHEL), `apk add gdb` (Alpine).",
        )
    return path


class GdbInjector:
    name = "gdb"

    def _addresses(self, target: Target) -> dict[str, int]:
        if target.capi_object is None or target.libc_object is None:
            raise errors.InjectionFailed(
                "cannot find the Python C API or libc in the target's memory map", pid=target.pid,
                name=target.name,
                help="Is this a static or unusual build? `--method pep768` works for 3.14+.",
            )
        try:
            addrs = symbols.resolve(target.pid, target.mappings, target.capi_object, _PY_FUNCS)
            addrs.update(
                symbols.resolve(target.pid, target.mappings, target.libc_object, _LIBC_FUNCS)
            )
        except (LookupError, OSError) as exc:
            raise errors.InjectionFailed(
                f"cannot resolve functions in the target: {exc}", pid=target.pid, name=target.name
            ) from None
        return addrs

    def _run(self, target: Target, script: str) -> tuple[str, float]:
        """Run a gdb script attached to the target; return its output and how long it was
        stopped."""
        gdb = gdb_path()
        timing = 'python import time; print("INTROSPECT_T0 %r" % time.monotonic())\n'
        timing_end = 'python print("INTROSPECT_T1 %r" % time.monotonic())\n'
        for with_timing in (True, False):
            trim = _TRIM_TDESC.replace("STRICT", repr(_amd_avx512())) if with_timing else ""
            body = (
                _PREAMBLE
                + (timing if with_timing else "")
                + f"attach {target.pid}\n"
                + trim
                + script
                + "detach\n"
                + (timing_end if with_timing else "")
            )
            with tempfile.NamedTemporaryFile("w", prefix="introspect-gdb-", suffix=".gdb") as f:
                f.write(body)
                f.flush()
                t0 = time.monotonic()
                try:
                    proc = subprocess.run(
                        [gdb, "-nx", "-nh", "-batch", "--readnever", "-x", f.name],
                        stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=GDB_TIMEOUT_S, env={**os.environ, "LC_ALL": "C"},
                    )
                except subprocess.TimeoutExpired:
                    raise errors.InjectionFailed(
                        f"gdb did not finish within {GDB_TIMEOUT_S:g} s",
                        pid=target.pid,
                        name=target.name,
                        help="The process may be in an uninterruptible state (D); check `cat "
                             "/proc/PID/stack`.",
                    ) from None
                wall = time.monotonic() - t0
            out = proc.stdout + proc.stderr
            if with_timing and "Python scripting is not supported" in out:
                # A gdb built without Python stopped before attaching. Untimed it works, but it
                # cannot trim the target description, so refuse where that trim is what keeps the
                # target's AVX-512 registers intact.
                if _amd_avx512():
                    raise errors.InjectionFailed(
                        "this gdb has no Python support, which introspect needs on this AMD CPU "
                        "with AVX-512 (without it, gdb before 14 corrupts vector registers of the "
                        "target when it calls a function)",
                        pid=target.pid,
                        name=target.name,
                        help="Install a gdb built with Python (Debian's and Ubuntu's gdb package "
                             "is), or gdb 14 or newer.",
                    )
                continue  # retry untimed
            self._check(target, out)
            m0 = re.search(r"INTROSPECT_T0 ([\d.]+)", out)
            m1 = re.search(r"INTROSPECT_T1 ([\d.]+)", out)
            pause = float(m1.group(1)) - float(m0.group(1)) if m0 and m1 else wall
            return out, pause
        raise AssertionError("unreachable")

    def _run_staged(
        self, target: Target, run: RunDir, name: str, bootstrap: str, script: Callable[[str], str]
    ) -> tuple[str, float]:
        """Write the bootstrap text (NUL-terminated) where gdb's `restore` reads it, run the
        script."""
        text_path = run.host_file(name)
        with open(text_path, "wb") as f:
            f.write(bootstrap.encode() + b"\0")
        try:
            return self._run(target, script(text_path))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(text_path)

    def _check(self, target: Target, out: str) -> None:
        failed = any(k in out for k in ("INTROSPECT_TDESC failed", "ptrace:",
                                        "The program is not being run")) or (
            "INTROSPECT_ATTACHED" not in out)
        if failed and not target.is_alive():  # whatever gdb said of it ("Couldn't get registers")
            raise errors.TargetExited(
                "the process exited while gdb was attaching", pid=target.pid, name=target.name
            )
        if "INTROSPECT_TDESC failed" in out and _amd_avx512():
            why = out.split("INTROSPECT_TDESC failed:", 1)[1].splitlines()[0].strip()
            raise errors.InjectionFailed(
                f"gdb could not be kept away from the target's AVX-512 registers ({why}); it "
                "stopped before calling anything, and the target was left as it was",
                pid=target.pid,
                name=target.name,
                help="On this AMD CPU gdb before 14 corrupts those registers when it calls a "
                     "function in the target. Use gdb 14 or newer, or `--method pep768` for Python "
                     "3.14+.",
            )
        if "ptrace: Operation not permitted" in out:
            if target.tracer_pid or _traced_now(target.pid):
                raise errors.BadTargetState("another tracer attached to the process",
                                            pid=target.pid, name=target.name,
                                            help="Detach the other debugger or strace first.")
            raise explain_ptrace_denied(target)
        if "ptrace: No such process" in out or "The program is not being run" in out:
            raise errors.TargetExited(
                "the process exited before gdb could attach", pid=target.pid, name=target.name
            )
        if "INTROSPECT_ATTACHED" not in out:
            raise errors.InjectionFailed(
                f"gdb could not attach: {_last_lines(out)}", pid=target.pid, name=target.name
            )

    def inject(self, target: Target, run: RunDir, bootstrap: str) -> Injection:
        addrs = self._addresses(target)
        size = _page_size(bootstrap)

        # restore writes the file into target memory directly: nothing is allocated inside it.
        def script(text_path: str) -> str:
            return (
                'printf "INTROSPECT_ATTACHED\\n"\n'
                "set $buf = (unsigned long)"
                f"((void*(*)(void*,unsigned long,int,int,int,long)){addrs['mmap']})"
                f"(0,{size},{_PROT_RW},{_MAP_PRIVATE_ANON},-1,0)\n"
                'printf "INTROSPECT_BUF %lu\\n", $buf\n'
                "if $buf != (unsigned long)-1\n"
                f"  restore {text_path} binary $buf\n"
                f"  set $rc = (int)((int(*)(void*,void*)){addrs['Py_AddPendingCall']})"
                f"((void*){addrs['PyRun_SimpleString']}, (void*)$buf)\n"
                '  printf "INTROSPECT_RC %d\\n", $rc\n'
                "  if $rc != 0\n"
                f"    call (int)((int(*)(void*,unsigned long)){addrs['munmap']})"
                f"((void*)$buf, {size})\n"
                "  end\n"
                "end\n"
            )

        out, pause = self._run_staged(target, run, "bootstrap.txt", bootstrap, script)
        buf = re.search(r"INTROSPECT_BUF (\d+)", out)
        rc = re.search(r"INTROSPECT_RC (-?\d+)", out)
        if not buf or int(buf.group(1)) in (0, 2**64 - 1):
            raise errors.InjectionFailed(f"could not map memory in the target: {_last_lines(out)}",
                                         pid=target.pid, name=target.name)
        if not rc or int(rc.group(1)) != 0:
            raise errors.InjectionFailed(
                "Py_AddPendingCall refused the request (its queue is full or the interpreter is "
                "finalizing)",
                pid=target.pid,
                name=target.name,
                help="Try again in a moment.",
            )
        return Injection("gdb", pause, "Py_AddPendingCall(PyRun_SimpleString) on the main thread",
                         page=(int(buf.group(1)), size))

    def run_parked(self, target: Target, run: RunDir, bootstrap: str) -> Injection:
        """Run the bootstrap *now* on the main thread, parked in a blocking syscall (an idle
        worker).

        The legal "C callback re-enters Python" pattern: PyGILState_Ensure, run, Release. gdb checks
        at the stopped moment that the thread sits in a blocking syscall (so not in the allocator)
        and does not hold the GIL; otherwise it touches nothing. The target stays stopped while the
        agent runs; other threads are resumed by gdb during the call, so a GIL holder can finish.
        """
        addrs = self._addresses(target)
        size = _page_size(bootstrap)
        parked = " || ".join(f"$nr == {n}" for n in BLOCKING_SYSCALLS)
        restart = " || ".join(f"$ret == {n}" for n in _RESTART)

        def script(text_path: str) -> str:
            return (
                'printf "INTROSPECT_ATTACHED\\n"\n'
                "set $nr = (long)$orig_rax\n"
                "set $ret = (long)$rax\n"
                'printf "INTROSPECT_SYSCALL %ld %ld\\n", $nr, $ret\n'
                f"if ({parked}) && ({restart})\n"
                f"  set $held = (int)((int(*)(void)){addrs['PyGILState_Check']})()\n"
                '  printf "INTROSPECT_HELD %d\\n", $held\n'
                "  if $held == 0\n"
                "    set $buf = (unsigned long)"
                f"((void*(*)(void*,unsigned long,int,int,int,long)){addrs['mmap']})"
                f"(0,{size},{_PROT_RW},{_MAP_PRIVATE_ANON},-1,0)\n"
                "    if $buf != (unsigned long)-1\n"
                f"      restore {text_path} binary $buf\n"
                f"      set $st = (int)((int(*)(void)){addrs['PyGILState_Ensure']})()\n"
                f"      set $rc = (int)((int(*)(void*)){addrs['PyRun_SimpleString']})"
                "((void*)$buf)\n"
                f"      call (void)((void(*)(int)){addrs['PyGILState_Release']})($st)\n"
                '      printf "INTROSPECT_RC %d\\n", $rc\n'
                f"      call (int)((int(*)(void*,unsigned long)){addrs['munmap']})"
                f"((void*)$buf, {size})\n"
                "    end\n"
                "  end\n"
                "end\n"
            )

        out, pause = self._run_staged(target, run, "bootstrap-parked.txt", bootstrap, script)
        sysc = re.search(r"INTROSPECT_SYSCALL (-?\d+) (-?\d+)", out)
        held = re.search(r"INTROSPECT_HELD (\d+)", out)
        rc = re.search(r"INTROSPECT_RC (-?\d+)", out)
        if rc is None:
            if held and held.group(1) != "0":
                why = "the main thread holds the GIL"
            elif sysc:
                nr = int(sysc.group(1))
                why = (
                    "the main thread is not parked in a blocking system call "
                    f"(syscall {BLOCKING_SYSCALLS.get(nr, nr)})"
                )
            else:
                why = "gdb could not read the main thread's registers"
            raise errors.InjectionFailed(
                f"cannot run on the parked main thread: {why}", pid=target.pid, name=target.name
            )
        nr = int(sysc.group(1)) if sysc else -1
        return Injection(
            "gdb",
            pause,
            f"PyGILState_Ensure + PyRun_SimpleString on the main thread parked in "
            f"{BLOCKING_SYSCALLS.get(nr, nr)}()",
        )

    def release(self, target: Target, injection: Injection) -> None:
        """Unmap the bootstrap page. Only call once the agent has started: the text is parsed by
        then."""
        if injection.page is None or not target.is_alive():
            return
        addrs = self._addresses(target)
        addr, size = injection.page
        script = (
            'printf "INTROSPECT_ATTACHED\\n"\n'
            f"call (int)((int(*)(void*,unsigned long)){addrs['munmap']})((void*){addr}, {size})\n"
        )
        _out, pause = self._run(target, script)
        injection.attach_pause_s += pause
        injection.page = None


def _page_size(bootstrap: str) -> int:
    """Bytes to mmap for the NUL-terminated bootstrap text: whole pages."""
    return (len(bootstrap.encode()) + 1 + PAGE - 1) // PAGE * PAGE


def _traced_now(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
    except OSError:
        return False


def _last_lines(out: str, n: int = 3) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln and not ln.startswith("INTROSPECT_")]
    return " / ".join(lines[-n:]) or "(no output)"
