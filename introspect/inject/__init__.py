"""Injectors: make the target run a bootstrap line at a safe point, and nothing else.

They know nothing of what they inject (``channel`` builds the bootstrap, ``agent`` the payload).

- ``pep768``: CPython 3.14+'s remote-debugging interface; stops nothing. First our own client
  (``remote.py``: writes the request from the CLI's own Python, any version, across containers),
  then ``sys.remote_exec`` driven by an interpreter of the target's own minor version.
- ``ptrace``: ours, CPython 3.8+ on x86_64 Linux (ctypes over libc, no gdb): one thread is
  stopped for a fraction of a millisecond while a trampoline queues the bootstrap with
  ``Py_AddPendingCall``; it also runs the bootstrap at once on a main thread parked in a
  blocking syscall (idle workers). See ``ptrace.py`` for the design.
- ``gdb``: CPython 3.8+, the fallback where ours cannot run (another architecture) or on request:
  gdb queues the bootstrap with ``Py_AddPendingCall`` so it runs on the main thread between
  bytecodes; every thread is stopped while gdb is attached (tens of milliseconds).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from introspect import errors
from introspect.channel import RunDir
from introspect.target import Target

METHODS = ("auto", "ptrace", "gdb", "pep768")


@dataclass
class Injection:
    method: str
    # How long the target was stopped by the injector itself (not counting the agent's run).
    attach_pause_s: float
    detail: str = ""
    # gdb: address and size of the page holding the bootstrap text, freed once the agent started.
    page: tuple[int, int] | None = None


class Injector(Protocol):
    name: str

    def inject(self, target: Target, run: RunDir, bootstrap: str) -> Injection: ...

    def release(self, target: Target, injection: Injection) -> None: ...


class ParkedRunner(Protocol):
    """An injector that can also run the bootstrap at once on a main thread parked in a syscall."""

    name: str

    def run_parked(self, target: Target, run: RunDir, bootstrap: str) -> Injection: ...


def parked_runner(
    target: Target, method: str, log: Callable[[str], None] = lambda s: None
) -> ParkedRunner | None:
    """The injector for the idle-main-thread path: ours where it can run, else gdb."""
    from introspect.inject import ptrace
    from introspect.inject.gdb import GdbInjector

    if method == "gdb":
        return GdbInjector()
    why = ptrace.available()
    if why is None:
        return ptrace.PtraceInjector()
    if method == "ptrace":
        return None
    log(f"the idle path uses gdb: our ptrace injector cannot run here ({why})")
    return GdbInjector()


def choose(
    target: Target, method: str, log: Callable[[str], None] = lambda s: None
) -> list[Injector]:
    """Injectors to try, in order. ``auto`` never falls back from a refusal the user must see.

    ``auto``: our ptrace injector (one thread stopped for about a millisecond); on 3.14+ then our
    PEP 768 client and ``sys.remote_exec`` (see below why they come second). gdb only on request or
    where ours cannot run (said through ``log``). """
    from introspect.inject import ptrace
    from introspect.inject.gdb import GdbInjector
    from introspect.inject.pep768 import RemoteExecInjector
    from introspect.inject.remote import OwnRemoteExecInjector

    if method == "gdb":
        return [GdbInjector()]
    if method == "ptrace":
        why = ptrace.available()
        if why is not None:
            raise errors.UsageError(
                f"--method ptrace cannot run here: {why}", pid=target.pid, help="Use --method gdb."
            )
        return [ptrace.PtraceInjector()]
    if method == "pep768":
        if target.version is not None and target.version < (3, 14):
            raise errors.UsageError(
                "--method pep768 needs CPython 3.14 or newer; this target runs "
                f"{target.version_str}",
                pid=target.pid,
                help="Use --method gdb (or leave --method auto).",
            )
        return [OwnRemoteExecInjector(), RemoteExecInjector()]
    if method != "auto":
        raise errors.UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    why = ptrace.available()
    own: list[Injector] = [ptrace.PtraceInjector()]
    if why is not None:
        log(f"using gdb: our ptrace injector cannot run here ({why})")
        own = [GdbInjector()]
    elif shutil.which("gdb"):
        # Only reached when ours failed on this target (a 32-bit process, no room for its code...):
        # the runner says so in -v before trying it.
        own.append(GdbInjector())
    if target.version is not None and target.version >= (3, 14):
        # ptrace first here too: CPython 3.14/3.15 open a PEP 768 script with the builtins of
        # whatever frame takes the request, and inside a namedtuple's __new__ (its __builtins__ is
        # {}) that fails with KeyError('__import__') and prints "Can't open debugger script" on the
        # target's stderr: 4 of 6 requests on a main thread creating namedtuples in a loop. Our PEP
        # 768 client (it stops nothing) when ptrace cannot run here or fails on this target.
        if why is None:
            from introspect.inject.remote import disabled_refusal, remote_debug_disabled

            if remote_debug_disabled(target):
                # The target's owner turned debuggers away: ptrace only when asked for by name.
                raise disabled_refusal(target)
            return [own[0], OwnRemoteExecInjector(other_threads=False), RemoteExecInjector(),
                    *own[1:]]
        return [OwnRemoteExecInjector(), RemoteExecInjector(), *own]
    return own
