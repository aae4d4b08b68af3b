"""Python processes on this host: discovery, their tree, and whether introspect could look
inside, all read from psutil and ``/proc`` without touching anyone.

``ps`` must never attach, stop or signal a process: everything here only reads. Which role a
process plays (Celery / gunicorn / uWSGI master or worker) is decided in ``roles.py`` from the
command lines and parent links read here.
"""

from __future__ import annotations

import mmap
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import psutil

from introspect import errors
from introspect.maps import Mapping, parse_maps
from introspect.roles import (
    PYTHON_NAME_RE,
    Launch,
    RoleInput,
    assign_roles,
    basename,
    launch_of,
    role_matches,
)
from introspect.target import (
    _LIBPYTHON_RE,
    CAP_SYS_PTRACE,
    Target,
    check_injectable,
    is_dumpable,
    python_version_from_maps,
    user_name,
    yama_ptrace_scope,
)

_PYTHON_VERSION_RE = re.compile(r"python(\d)\.(\d+)")
# A zombie has no cmdline or maps left: only its name (comm) says what it was.
_ZOMBIE_NAMES_RE = re.compile(r"^(python\S*|celery|gunicorn|uwsgi)$")


# -- discovery (reads /proc; never attaches) ----------------------------------------------------


@dataclass
class Proc:
    pid: int
    ppid: int
    user: str
    uid: int
    name: str
    exe: str
    cmdline: list[str]
    status: str
    create_time: float
    version: tuple[int, int] | None
    rss: int
    uss: int | None
    gid: int = 0
    maps: tuple[Mapping, ...] = ()
    launch: Launch = field(default_factory=Launch)
    role: str = "python"
    pool: str | None = None
    inspectable: bool = False
    reason: str | None = None
    children: list[int] = field(default_factory=list)

    @property
    def python(self) -> str | None:
        return f"{self.version[0]}.{self.version[1]}" if self.version else None

    def doc(self, now: float) -> dict[str, object]:
        return {"pid": self.pid, "ppid": self.ppid, "user": self.user, "python": self.python,
                "role": self.role, "pool": self.pool, "rss": self.rss, "uss": self.uss,
                "age_s": round(max(0.0, now - self.create_time), 1), "cmdline": self.cmdline,
                "inspectable": self.inspectable, "reason": self.reason, "children": self.children}


def _read_maps(pid: int) -> list[Mapping] | None:
    """The process's mappings, or None when we may not read them (another user's process)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return parse_maps(f.read())
    except OSError:
        return None


def _fallback_version(name: str, cmdline: Sequence[str]) -> tuple[tuple[int, int] | None, bool]:
    """For an unreadable process: (version from argv[0], looks like Python by name)."""
    first = basename(cmdline[0]) if cmdline else ""
    looks = bool(
        PYTHON_NAME_RE.match(first)
        or PYTHON_NAME_RE.match(name)
        or name == "uwsgi"
        or launch_of(cmdline).kind != "python"
    )
    found = _PYTHON_VERSION_RE.search(first) or _PYTHON_VERSION_RE.search(name)
    return ((int(found.group(1)), int(found.group(2))) if found else None), looks


def _excluded_pids() -> set[int]:
    """introspect itself and what it started (its gdb, a sys.remote_exec controller)."""
    me = os.getpid()
    out = {me}
    try:
        out.update(c.pid for c in psutil.Process(me).children(recursive=True))
    except psutil.Error:
        pass
    return out


def _one(proc: psutil.Process) -> Proc | None:
    """Facts of one process if it is a Python process, else None. Reads only."""
    try:
        with proc.oneshot():
            pid, ppid, name, status = proc.pid, proc.ppid(), proc.name(), proc.status()
            uids, gids, create_time = proc.uids(), proc.gids(), proc.create_time()
            try:
                user = proc.username()
            except (KeyError, psutil.AccessDenied):
                user = str(uids.real)
            if status == psutil.STATUS_ZOMBIE:
                if not _ZOMBIE_NAMES_RE.match(name):
                    return None
                return Proc(
                    pid, ppid, user, uids.real, name, "", [name], status, create_time, None, 0, None
                )
            cmdline = proc.cmdline()
            try:
                exe = proc.exe()
            except psutil.AccessDenied:
                exe = ""
            rss = proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None
    maps = _read_maps(pid)
    if maps is None:
        version, looks = _fallback_version(name, cmdline)
        if not looks:
            return None
    else:
        # The same rule target.py uses: a mapped libpython, python executable or stdlib module.
        version = python_version_from_maps(maps, exe)
        if version is None:
            return None
    try:
        uss: int | None = proc.memory_full_info().uss
    except (psutil.AccessDenied, psutil.ZombieProcess, psutil.NoSuchProcess, AttributeError,
            OSError):
        # smaps of another user's process needs privileges: shown as "-", never a failure
        uss = None
    return Proc(pid, ppid, user, uids.real, name, exe, cmdline, status, create_time, version, rss,
                uss, gid=gids.real, maps=tuple(maps or ()), launch=launch_of(cmdline, exe))


def discover(pids: Iterable[int] | None = None) -> list[Proc]:
    """Python processes (all, or among ``pids``), roles assigned, children linked. Never
    attaches."""
    excluded = _excluded_pids()
    found: list[Proc] = []
    candidates: Iterable[psutil.Process]
    if pids is None:
        candidates = psutil.process_iter()
    else:
        candidates = []
        for pid in pids:
            try:
                candidates.append(psutil.Process(pid))
            except psutil.Error:
                continue
    for proc in candidates:
        if proc.pid in excluded:
            continue
        info = _one(proc)
        if info is not None:
            found.append(info)
    roles = assign_roles(RoleInput(p.pid, p.ppid, p.launch, p.exe) for p in found)
    listed = {p.pid for p in found}
    for p in found:
        p.role, p.pool = roles[p.pid]
        p.children = sorted(c.pid for c in found if c.ppid == p.pid and c.pid in listed)
        p.inspectable, p.reason = inspectability(p)
    return found


# -- can we look inside? -------------------------------------------------------------------------


def _caps(pid: int | str, name: str) -> int:
    """A capability set (CapEff, CapPrm) of a process from /proc/PID/status; 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split(":", 1)[1].strip(), 16)
    except (OSError, ValueError):
        pass
    return 0


def ptrace_refusal(pid: int, uid: int) -> str | None:
    """Why the kernel would refuse us ptrace/remote_exec on the process, in a few words (or None).

    The rules of ``target.ptrace_denied_cause`` (which words a refusal after the fact), decided up
    front from the same facts.
    """
    me = os.geteuid()
    has_cap = bool(_caps("self", "CapEff") & (1 << CAP_SYS_PTRACE))
    yama = yama_ptrace_scope()
    if has_cap and (yama is None or yama < 3):
        return None
    if me != uid and not has_cap:
        if me == 0:
            return "permission: no CAP_SYS_PTRACE (container?)"
        return f"permission: runs as {user_name(uid)}, needs root (sudo -E)"
    if yama is not None and yama >= 3:
        return "permission: ptrace_scope is 3"
    if yama in (1, 2):
        return f"permission: ptrace_scope is {yama}, needs root (sudo -E)"
    if not is_dumpable(pid, uid):
        return "permission: not dumpable, needs CAP_SYS_PTRACE"
    if _caps(pid, "CapPrm") & ~_caps("self", "CapPrm"):
        return "permission: it holds capabilities we lack"
    return None


def _remote_debug_disabled(target: Target) -> bool:
    if any(a == "disable-remote-debug" or a == "-Xdisable-remote-debug" for a in target.cmdline):
        return True
    try:
        with open(f"/proc/{target.pid}/environ", "rb") as f:
            return any(
                v.startswith(b"PYTHON_DISABLE_REMOTE_DEBUG=")
                and v != b"PYTHON_DISABLE_REMOTE_DEBUG="
                for v in f.read().split(b"\0")
            )
    except OSError:
        return False


def backend_refusal(target: Target) -> str | None:
    """None when gdb or sys.remote_exec could be used on this target, else why not (few words)."""
    if shutil.which("gdb"):
        return None
    if target.version is None or target.version < (3, 14):
        return f"no backend: gdb not installed (needed for Python {target.version_str})"
    from introspect.inject.pep768 import controllers

    if _remote_debug_disabled(target):
        return "no backend: remote debugging disabled and gdb not installed"
    if not controllers(target):
        return f"no backend: no python{target.version_str} here for sys.remote_exec, and no gdb"
    return None


def _short_state(target: Target, exc: errors.IntrospectError) -> str:
    """A few words for a ``check_injectable`` refusal, from the facts it refused on."""
    if target.status == psutil.STATUS_STOPPED:
        return "stopped (kill -CONT)"
    if target.tracer_pid:
        return f"traced by pid {target.tracer_pid}"
    if target.capi_object is None:
        return "not CPython (no Py_AddPendingCall)"
    if target.version is not None and target.version < (3, 8):
        return f"Python {target.version_str} (needs 3.8+)"
    return exc.msg


def _tracer_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return 0


def _same_root(pid: int) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/root"), os.stat("/")
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except OSError:
        return False


def _mentions_capi(path: str) -> bool:
    """Cheap stand-in for target.py's ELF .dynsym lookup of Py_AddPendingCall.

    Parsing the symbol table of a static interpreter takes about a second; ps looks at many
    processes, so it searches the file's bytes for the name's string-table entry instead.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b"\0Py_AddPendingCall\0") >= 0
    except (OSError, ValueError):
        return False


def _capi_object(p: Proc) -> str | None:
    """As target.py's choice (libpython if mapped, else the executable), found by the cheap test."""
    candidates = [m.path for m in p.maps if _LIBPYTHON_RE.search(m.path)] + [p.exe]
    for path in dict.fromkeys(c for c in candidates if c):
        if _mentions_capi(f"/proc/{p.pid}/root{path}"):
            return path
    return None


def as_target(p: Proc) -> Target:
    """The facts ``target.check_injectable`` judges, gathered without parsing any ELF file."""
    return Target(pid=p.pid, name=p.name, exe=p.exe.removesuffix(" (deleted)"),
                  cmdline=tuple(p.cmdline), uid=p.uid, gid=p.gid, status=p.status,
                  tracer_pid=_tracer_pid(p.pid), create_time=p.create_time, version=p.version,
                  capi_object=_capi_object(p), libc_object=None, mappings=p.maps,
                  same_root=_same_root(p.pid))


def inspectability(p: Proc) -> tuple[bool, str | None]:
    """(inspectable, reason) without side effects: target.py's checks, the ptrace rules, a
    backend."""
    if p.status == psutil.STATUS_ZOMBIE:
        return False, "zombie"
    if p.pid == 1:
        return False, "PID 1 (init): introspect refuses it"
    refusal = ptrace_refusal(p.pid, p.uid)
    if refusal:
        return False, refusal
    if not p.maps:
        return False, "permission: cannot read /proc/PID/maps"
    target = as_target(p)
    try:
        check_injectable(target)
    except errors.IntrospectError as exc:
        return False, _short_state(target, exc)
    backend = backend_refusal(target)
    if backend:
        return False, backend
    return True, None


# -- the tree ------------------------------------------------------------------------------------


def select(procs: Sequence[Proc], user: str | None = None, role: str | None = None,
           pattern: str | None = None) -> list[Proc]:
    """Filters of ``ps``: user name or uid, role (or role family), a case-insensitive substring."""
    out = []
    for p in procs:
        if user is not None and user not in (p.user, str(p.uid)):
            continue
        if role is not None and not role_matches(p.role, role):
            continue
        if pattern is not None and pattern.lower() not in " ".join(p.cmdline).lower():
            continue
        out.append(p)
    # Children are re-linked among what is shown: a filtered-out parent makes its children roots.
    shown = {p.pid for p in out}
    return [replace(p, children=[c for c in p.children if c in shown]) for p in out]


def forest(procs: Sequence[Proc]) -> list[tuple[int, Proc]]:
    """(depth, process) in display order: roots and siblings by RSS, largest first.

    >>> a = Proc(1, 0, "u", 0, "py", "", [], "S", 0.0, None, 10, None, children=[3, 2])
    >>> b = Proc(2, 1, "u", 0, "py", "", [], "S", 0.0, None, 50, None)
    >>> c = Proc(3, 1, "u", 0, "py", "", [], "S", 0.0, None, 20, None)
    >>> d = Proc(4, 0, "u", 0, "py", "", [], "S", 0.0, None, 30, None)
    >>> [(depth, p.pid) for depth, p in forest([a, b, c, d])]
    [(0, 4), (0, 1), (1, 2), (1, 3)]
    """
    by_pid = {p.pid: p for p in procs}
    child_pids = {c for p in procs for c in p.children if c in by_pid}
    roots = [p for p in procs if p.pid not in child_pids]
    out: list[tuple[int, Proc]] = []
    seen: set[int] = set()

    def walk(p: Proc, depth: int) -> None:
        if p.pid in seen:
            return
        seen.add(p.pid)
        out.append((depth, p))
        for kid in sorted(
            (by_pid[c] for c in p.children if c in by_pid), key=lambda k: (-k.rss, k.pid)
        ):
            walk(kid, depth + 1)

    for root in sorted(roots, key=lambda r: (-r.rss, r.pid)):
        walk(root, 0)
    return out


def workers_of(pid: int) -> tuple[Proc | None, list[Proc]]:
    """The process ``pid`` (None if not a Python process) and its Python child processes."""
    try:
        proc = psutil.Process(pid)
        kids = [c.pid for c in proc.children(recursive=False)]
        # The parent too: a prefork child alone would look like a master.
        parent = [proc.ppid()]
    except psutil.Error:
        return None, []
    found = {p.pid: p for p in discover([*parent, pid, *kids])}
    return found.get(pid), [found[k] for k in kids if k in found]
