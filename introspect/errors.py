"""Error vocabulary of introspect.

Every expected failure is an :class:`IntrospectError` subclass carrying an exit code and a help
text naming the fix. The CLI prints ``message`` + ``help`` and exits with ``exit_code``; nothing
expected ever shows a traceback. Unexpected exceptions are bugs and keep theirs.
"""

from __future__ import annotations


class IntrospectError(Exception):
    """Base class: an expected failure with a plain message and a fix."""

    exit_code = 1
    help_text = ""

    def __init__(self, msg: str, *, pid: int | None = None, name: str | None = None,
                 help: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.pid = pid
        self.name = name
        self.help = help if help is not None else self.help_text

    def __str__(self) -> str:
        details = []
        if self.pid is not None:
            details.append(f"pid={self.pid}")
        if self.name:
            details.append(f"name={self.name!r}")
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{self.msg}{suffix}"


class UsageError(IntrospectError):
    exit_code = 2


class NoSuchProcess(IntrospectError):
    exit_code = 3
    help_text = "Check the pid with `ps -ef`; the process may have exited."


class NotPython(IntrospectError):
    exit_code = 4
    help_text = (
        "Point introspect at a CPython 3.8+ process (`ps -eo pid,user,cmd | grep -i python` lists "
        "them)."
    )


class AccessDenied(IntrospectError):
    exit_code = 5


class BadTargetState(IntrospectError):
    """Zombie, stopped, or already traced: we refuse rather than make it worse."""

    exit_code = 6


class TimeoutExpired(IntrospectError):
    exit_code = 7


class TargetExited(IntrospectError):
    exit_code = 8
    help_text = "The process exited while introspect was waiting; nothing was left behind."


class InjectionFailed(IntrospectError):
    exit_code = 9


class OutputError(IntrospectError):
    exit_code = 10


class AgentError(IntrospectError):
    """The agent ran inside the target but its command failed (reported, never re-raised there)."""

    exit_code = 11


class PayloadRaised(IntrospectError):
    """`introspect exec`: the user's payload raised; its traceback has been printed."""

    exit_code = 12


class UnknownType(IntrospectError):
    exit_code = 13


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error (a bug: please report it with the traceback)",
    2: "bad command line",
    3: "no such process",
    4: "not a (supported) Python process",
    5: "permission denied (ptrace rules, other user, non-dumpable)",
    6: "target in a state we refuse to touch (zombie, stopped, traced by another tool), or that "
       "cannot run Python code now",
    7: "timed out waiting for the target",
    8: "target exited while we waited",
    9: "injection failed (gdb missing, remote debugging disabled, no backend)",
    10: "cannot write output",
    11: "the agent reported an error inside the target",
    12: "exec: the payload raised an exception",
    13: "unknown type name",
    14: "the target's records break their format (refused whole; see docs/security.md)",
}
