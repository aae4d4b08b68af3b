"""pid -> facts about the target process, read from psutil and ``/proc``.

Nothing here stops or touches the target; these facts choose the backend and word the errors.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass

import psutil

from introspect import errors
from introspect.maps import Mapping, parse_maps

# Version from the mapped files, not only /proc/PID/exe: a renamed or loader-started binary
# exists in the wild (DESIGN.md), and libpython or lib-dynload paths still tell the truth.
_LIBPYTHON_RE = re.compile(r"/libpython(\d)\.(\d+)[a-z]*\.so")
_EXE_RE = re.compile(r"/python(\d)\.(\d+)[a-z]*$")
_STDLIB_RE = re.compile(r"/lib(?:64)?/python(\d)\.(\d+)[a-z]*/")
_LIBC_RE = re.compile(
    r"/(libc\.so\.6|libc-2\.\d+\.so|ld-musl-[^/]+\.so\.1|libc\.musl-[^/]+\.so\.1)$"
)


@dataclass(frozen=True)
class Target:
    pid: int
    name: str
    exe: str
    cmdline: tuple[str, ...]
    uid: int
    gid: int
    status: str
    tracer_pid: int
    create_time: float
    version: tuple[int, int] | None
    # Path (as the target sees it) of the ELF object exporting the C API: libpython or the exe.
    capi_object: str | None
    libc_object: str | None
    mappings: tuple[Mapping, ...]
    # The target sees the same filesystem root as we do (not in a container): read once, because
    # /proc/PID/root is gone as soon as the target dies and clean-up must still work.
    same_root: bool = True

    @property
    def root(self) -> str:
        """The target's filesystem, as reachable from here (containers have their own)."""
        return f"/proc/{self.pid}/root"

    def host_path(self, path: str) -> str:
        """Turn a path as the target sees it into one we can open."""
        return self.root + path

    @property
    def version_str(self) -> str:
        return f"{self.version[0]}.{self.version[1]}" if self.version else "unknown"

    def is_alive(self) -> bool:
        """Still the same process (not a reused pid), and not a zombie."""
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.create_time and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return os.path.exists(f"/proc/{self.pid}")


def python_version_from_maps(maps: list[Mapping], exe: str) -> tuple[int, int] | None:
    for regex in (_LIBPYTHON_RE, _EXE_RE, _STDLIB_RE):
        for m in maps:
            found = regex.search(m.path)
            if found:
                return int(found.group(1)), int(found.group(2))
    found = _EXE_RE.search(exe)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _status_field(pid: int, field: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def inspect_target(pid: int) -> Target:
    """Gather facts; raise a plain error for no such pid, zombie, or no permission."""
    if pid <= 0:
        raise errors.NoSuchProcess(f"{pid} is not a valid pid", pid=pid)
    if pid == 1:
        raise errors.BadTargetState(
            "refusing to attach to PID 1 (init): stopping it, even briefly, can hang the machine",
            pid=pid,
            help="Pick the worker process itself: `ps -eo pid,user,cmd | grep -i python` lists "
                 "Python processes.",
        )
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            status = proc.status()
            uids = proc.uids()
            gids = proc.gids()
            create_time = proc.create_time()
    except psutil.ZombieProcess:
        raise errors.BadTargetState(
            "the process is a zombie: it has exited and waits for its parent to reap it",
            pid=pid,
            help="There is no heap left to inspect. Look at its parent, or the worker that "
                 "replaced it.",
        ) from None
    except psutil.NoSuchProcess:
        raise errors.NoSuchProcess("no such process", pid=pid) from None
    except psutil.AccessDenied:
        raise errors.AccessDenied(
            "cannot read the process's details", pid=pid,
            help="Run introspect as the process's user or as root (sudo -E introspect ...).",
        ) from None
    if status == psutil.STATUS_ZOMBIE:
        raise errors.BadTargetState(
            "the process is a zombie: it has exited and waits for its parent to reap it",
            pid=pid,
            name=name,
            help="There is no heap left to inspect. Look at its parent, or the worker that "
                 "replaced it.",
        )
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/maps") as f:
            maps = parse_maps(f.read())
        with open(f"/proc/{pid}/cmdline", "rb") as fb:
            cmdline = tuple(a.decode(errors="replace") for a in fb.read().split(b"\0") if a)
    except FileNotFoundError:
        raise errors.NoSuchProcess("no such process", pid=pid) from None
    except PermissionError:
        # The same ptrace access check guards /proc/PID/exe and /maps as attaching does.
        raise access_denied(pid, name, uids.real, f"reading /proc/{pid}/maps") from None
    exe = exe.removesuffix(" (deleted)")
    version = python_version_from_maps(maps, exe)
    capi = _find_capi_object(maps, exe, pid)
    libc = next((m.path for m in maps if _LIBC_RE.search(m.path)), None)
    tracer = _status_field(pid, "TracerPid")
    return Target(pid=pid, name=name, exe=exe, cmdline=cmdline, uid=uids.real, gid=gids.real,
                  status=status, tracer_pid=int(tracer) if tracer.isdigit() else 0,
                  create_time=create_time, version=version, capi_object=capi, libc_object=libc,
                  mappings=tuple(maps), same_root=_same_root(pid))


def _same_root(pid: int) -> bool:
    """Same root directory *and* same mount namespace: a container that shares our root but mounts
    its own /tmp (``unshare --mount``) has the same root inode, yet its /tmp is not ours."""
    try:
        a, b = os.stat(f"/proc/{pid}/root"), os.stat("/")
        ns_a, ns_b = os.stat(f"/proc/{pid}/ns/mnt"), os.stat("/proc/self/ns/mnt")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and (ns_a.st_dev, ns_a.st_ino) == (
        ns_b.st_dev, ns_b.st_ino,
    )


def _find_capi_object(maps: list[Mapping], exe: str, pid: int) -> str | None:
    """The mapped ELF that exports Py_AddPendingCall: libpython if mapped, else the executable."""
    from introspect.inject import symbols  # lazy (test_layers.py pins it as a lazy import)

    candidates = [m.path for m in maps if _LIBPYTHON_RE.search(m.path)]
    candidates.append(exe)
    seen = set()
    for path in candidates:
        if path in seen:
            continue
        seen.add(path)
        if symbols.exports(f"/proc/{pid}/root{path}", "Py_AddPendingCall"):
            return path
    return None


def check_injectable(target: Target) -> None:
    """Refuse states in which touching the target could make things worse."""
    if target.capi_object is None:
        raise errors.NotPython(
            f"{target.exe} is not a CPython interpreter: it exports no Py_AddPendingCall",
            pid=target.pid, name=target.name,
        )
    if target.version is not None and target.version < (3, 8):
        raise errors.NotPython(
            f"Python {target.version_str} is not supported (introspect needs CPython 3.8 or newer)",
            pid=target.pid, name=target.name,
        )
    if target.status == psutil.STATUS_STOPPED:
        raise errors.BadTargetState(
            "the process is stopped (SIGSTOP or Ctrl-Z): its code cannot run until it is resumed",
            pid=target.pid, name=target.name,
            help=f"Resume it with `kill -CONT {target.pid}` and run introspect again.",
        )
    if target.tracer_pid:
        tracer = process_name(target.tracer_pid)
        raise errors.BadTargetState(
            f"the process is already traced by pid {target.tracer_pid} ({tracer}); "
            "only one tracer can be attached at a time",
            pid=target.pid,
            name=target.name,
            help=f"Detach {tracer} (pid {target.tracer_pid}) first, e.g. quit the debugger or "
                 "strace.",
        )


CAP_SYS_PTRACE = 19


def _our_capabilities() -> int:
    value = _status_field(os.getpid(), "CapEff")
    try:
        return int(value, 16)
    except ValueError:
        return 0


YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"


def yama_ptrace_scope() -> int | None:
    """``kernel.yama.ptrace_scope``, or None when the kernel has no Yama LSM (the file is
    absent)."""
    try:
        with open(YAMA_SCOPE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def is_dumpable(pid: int, uid: int) -> bool:
    """False for a process that is not dumpable (prctl(PR_SET_DUMPABLE, 0), or it changed uid).

    The kernel then makes its /proc/PID *files* owned by root; the /proc/PID directory keeps the
    task's uid (so ``ps`` shows the right user), so the directory tells nothing.
    """
    try:
        return uid == 0 or os.stat(f"/proc/{pid}/maps").st_uid == uid
    except OSError:
        return True


def login_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def user_name(uid: int) -> str:
    """'nobody (uid 65534)': the name an on-call engineer knows, and the number."""
    login = login_name(uid)
    return f"{login} (uid {uid})" if login else f"uid {uid}"


def _capabilities(pid: int, field: str) -> int:
    try:
        return int(_status_field(pid, field), 16)
    except ValueError:
        return 0


def ptrace_denied_cause(*, me: int, target_uid: int, has_cap: bool, yama: int | None,
                        dumpable: bool, caps_exceed: bool = False) -> tuple[str, str]:
    """(cause, fix) for a ptrace refusal, from the facts alone: the kernel's rules in order.

    ``caps_exceed``: the process holds permitted capabilities we lack (the commoncap rule: only a
    tracer whose permitted set covers the tracee's, or with CAP_SYS_PTRACE, may attach).
    """
    if me != target_uid and not has_cap:
        if me == 0:
            return (
                "introspect runs as root but without CAP_SYS_PTRACE (in a container?), and the "
                f"process runs as another user, {user_name(target_uid)}",
                "Give introspect the capability (docker run --cap-add=SYS_PTRACE ..., or "
                "kubernetes securityContext.capabilities.add: [SYS_PTRACE]), or run it on the host "
                "with sudo -E.",
            )
        return (
            f"the process runs as {user_name(target_uid)} and introspect as {user_name(me)}",
            "Run introspect as root (sudo -E introspect ...) or as the process's own user "
            f"(sudo -u {login_name(target_uid) or f'#{target_uid}'} ...).",
        )
    if yama is not None and yama >= 3:
        return ("kernel.yama.ptrace_scope is 3: no process may attach to another until reboot",
                "Nothing short of a reboot with ptrace_scope < 3 allows it.")
    if yama == 2 and not has_cap:
        return ("kernel.yama.ptrace_scope is 2: only root (CAP_SYS_PTRACE) may attach",
                "Run introspect with sudo -E, or `sysctl kernel.yama.ptrace_scope=1`.")
    if yama == 1 and not has_cap:
        return ("kernel.yama.ptrace_scope is 1: only a parent may attach to its descendants",
                "Run introspect with sudo -E, or `sysctl kernel.yama.ptrace_scope=0` (less safe).")
    cap_fix = (
        "Give introspect CAP_SYS_PTRACE (docker run --cap-add=SYS_PTRACE ...) or run it on the "
        "host with sudo -E."
    )
    if not dumpable and not has_cap:
        return (
            "the process is not dumpable (it changed uid or called prctl(PR_SET_DUMPABLE, 0)), "
            "so only a tracer with CAP_SYS_PTRACE may attach",
            cap_fix if me == 0 else "Run introspect as root (sudo -E introspect ...).",
        )
    if caps_exceed and not has_cap:
        return (
            "the process holds capabilities introspect lacks (introspect runs without "
            "CAP_SYS_PTRACE, in a container?); only a tracer with at least the same capabilities "
            "may attach",
            cap_fix,
        )
    return (
        "the kernel refused ptrace (a seccomp or LSM policy?)",
        "Run introspect as root on the host with CAP_SYS_PTRACE (sudo -E, --cap-add=SYS_PTRACE).",
    )


def access_denied(pid: int, name: str, uid: int, doing: str) -> errors.AccessDenied:
    """Say which ptrace rule refused us ``doing`` something to the process, and how to lift it."""
    cause, fix = ptrace_denied_cause(
        me=os.geteuid(), target_uid=uid, has_cap=bool(_our_capabilities() & (1 << CAP_SYS_PTRACE)),
        yama=yama_ptrace_scope(), dumpable=is_dumpable(pid, uid),
        caps_exceed=bool(_capabilities(pid, "CapPrm") & ~_capabilities(os.getpid(), "CapPrm")),
    )
    return errors.AccessDenied(f"permission denied {doing}: {cause}", pid=pid, name=name, help=fix)


def explain_ptrace_denied(target: Target) -> errors.AccessDenied:
    """Say which ptrace rule refused us, and how to lift it."""
    return access_denied(target.pid, target.name, target.uid, "attaching to the process")
