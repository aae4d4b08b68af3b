"""Injectors: make the target run a bootstrap line at a safe point, and nothing else.

They know nothing of what they inject (``channel`` builds the bootstrap, ``agent`` the payload).

- ``pep768``: ``sys.remote_exec`` (CPython 3.14+), driven by an interpreter of the target's own
  minor version. Does not stop the target at all.
- ``gdb``: CPython 3.8+ (and the fallback for newer): gdb queues the bootstrap with
  ``Py_AddPendingCall`` so it runs on the main thread between bytecodes; the target is stopped
  only while gdb is attached (milliseconds, symbols pre-resolved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from introspect import errors
from introspect.channel import RunDir
from introspect.target import Target

METHODS = ("auto", "gdb", "pep768")


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


def choose(target: Target, method: str) -> list[Injector]:
    """Injectors to try, in order. ``auto`` never falls back from a refusal the user must see."""
    from introspect.inject.gdb import GdbInjector
    from introspect.inject.pep768 import RemoteExecInjector

    if method == "gdb":
        return [GdbInjector()]
    if method == "pep768":
        if target.version is not None and target.version < (3, 14):
            raise errors.UsageError(
                f"--method pep768 needs CPython 3.14 or newer; this target runs {target.version_str}",
                pid=target.pid,
                help="Use --method gdb (or leave --method auto).",
            )
        return [RemoteExecInjector()]
    if method != "auto":
        raise errors.UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if target.version is not None and target.version >= (3, 14):
        return [RemoteExecInjector(), GdbInjector()]
    return [GdbInjector()]
