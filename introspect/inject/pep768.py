"""PEP 768 injector (CPython 3.14+): ``sys.remote_exec`` from an interpreter of the same minor
version.

``sys.remote_exec`` refuses a controller of another minor version ("Can't send commands from a
Python 3.14 process to a Python 3.15 process"), so we drive it with the target's own executable
when it is runnable from here, else a ``python3.X`` on PATH. The target is never stopped: the
script path is written into its thread state and it runs the file at its next safe point.

Containers (own mount namespace): ``sys.remote_exec`` checks that the script exists in the
*caller's* filesystem, yet the target opens the path in its own; and it finds ``PyRuntime`` by
opening the ELF files named in /proc/PID/maps, again in the caller's filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

from introspect import errors
from introspect.channel import RunDir
from introspect.inject import Injection
from introspect.inject.remote import disabled_refusal
from introspect.target import Target, explain_ptrace_denied

TIMEOUT_S = 20.0

# Runs in the controller interpreter. Exit codes: 3 wrong version, 4 remote_exec failed.
_CONTROLLER = """\
import sys
want = tuple(int(x) for x in sys.argv[3].split("."))
if sys.version_info[:2] != want or not hasattr(sys, "remote_exec"):
    print("VERSION %d.%d" % sys.version_info[:2], file=sys.stderr)
    sys.exit(3)
try:
    sys.remote_exec(int(sys.argv[1]), sys.argv[2])
except BaseException as exc:
    print("FAILED %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
    sys.exit(4)
"""


def controllers(target: Target) -> list[str]:
    """Interpreters that may match the target's version, best first."""
    out = []
    if target.same_root:
        out.append(target.exe)
    else:
        out.append(target.host_path(target.exe))
    if target.version:
        found = shutil.which(f"python{target.version[0]}.{target.version[1]}")
        if found:
            out.append(found)
    return list(dict.fromkeys(p for p in out if os.access(p, os.X_OK)))


class RemoteExecInjector:
    name = "pep768"

    def inject(self, target: Target, run: RunDir, bootstrap: str) -> Injection:
        boot_path = run.write("boot.py", bootstrap.encode(), 0o400)
        tried = []
        for exe in controllers(target):
            try:
                with _stand_in(target, boot_path):
                    proc = subprocess.run(
                        [exe, "-I", "-S", "-c", _CONTROLLER, str(target.pid), boot_path,
                         target.version_str],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        text=True,
                        timeout=TIMEOUT_S,
                    )
            except (OSError, subprocess.TimeoutExpired) as exc:
                tried.append(f"{exe}: {exc}")
                continue
            err = proc.stderr.strip()
            if proc.returncode == 0:
                return Injection("pep768", 0.0, f"sys.remote_exec via {exe}")
            if proc.returncode == 4:
                self._raise_for(target, err)
            tried.append(f"{exe}: {err.splitlines()[-1] if err else f'exit {proc.returncode}'}")
        raise errors.InjectionFailed(
            f"no Python {target.version_str} interpreter runnable from here to drive "
            "sys.remote_exec"
            + (f" (tried {'; '.join(tried)})" if tried else ""),
            pid=target.pid,
            name=target.name,
            help=f"Install python{target.version_str} here, or use --method gdb.",
        )

    def _raise_for(self, target: Target, err: str) -> None:
        low = err.lower()
        if "not enabled" in low or "disabled" in low:
            raise disabled_refusal(target)
        if "permission" in low or "operation not permitted" in low:
            raise explain_ptrace_denied(target)
        if "no such process" in low:
            raise errors.TargetExited("the process exited", pid=target.pid, name=target.name)
        if not target.same_root and ("pyruntime" in low or "elf file" in low):
            # sys.remote_exec opens the target's binary by the path in /proc/PID/maps, here.
            where = (
                "does not exist at that path here"
                if not os.path.exists(target.exe)
                else "is another file here"
            )
            raise errors.InjectionFailed(
                "sys.remote_exec cannot read the target's Python binary: the target runs in a "
                f"container (its own filesystem) and {target.exe} {where}",
                pid=target.pid,
                name=target.name,
                help="Use `--method gdb` (or --method auto, which falls back to it), or run "
                     "introspect inside the container.",
            )
        raise errors.InjectionFailed(
            f"sys.remote_exec failed: {err.splitlines()[-1] if err else '?'}", pid=target.pid,
            name=target.name,
        )

    def release(self, target: Target, injection: Injection) -> None:
        return None


@contextlib.contextmanager
def _stand_in(target: Target, boot_path: str) -> Iterator[None]:
    """An empty file at ``boot_path`` in *our* filesystem while ``sys.remote_exec`` runs.

    It only checks that the script exists here; the target then opens the same path in its own
    mount namespace and runs the real bootstrap. The stand-in is private (0700 directory, empty)
    and removed at once. Nothing is done when the path already exists here (same filesystem).
    """
    run_dir = os.path.dirname(boot_path)
    if target.same_root or os.path.lexists(run_dir):
        yield
        return
    os.mkdir(run_dir, 0o700)
    try:
        fd = os.open(boot_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        os.close(fd)
        yield
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
