"""Python processes on this host: discovery, role (Celery / gunicorn / uWSGI master or worker) and
whether introspect could look inside, all read from psutil and ``/proc`` without touching anyone.

``ps`` must never attach, stop or signal a process: everything here only reads. Role
classification is pure (``launch_of`` / ``assign_roles`` over command lines and parent links) so
it can be tested on synthetic command lines.
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
from introspect.target import (
    _LIBPYTHON_RE,
    CAP_SYS_PTRACE,
    Mapping,
    Target,
    check_injectable,
    is_dumpable,
    parse_maps,
    python_version_from_maps,
    user_name,
    yama_ptrace_scope,
)

ROLES = ("celery-master", "celery-child", "celery-worker", "gunicorn-master", "gunicorn-worker",
         "uwsgi-master", "uwsgi-worker", "python")
# Masters whose leak lives in their worker processes: `top/growth/backrefs` point at the children.
MASTER_ROLES = ("celery-master", "gunicorn-master", "uwsgi-master")

_PYTHON_NAME_RE = re.compile(r"^python(\d(\.\d+)?)?[a-z]*$")
_PYTHON_VERSION_RE = re.compile(r"python(\d)\.(\d+)")
# setproctitle titles: Celery `[celeryd: celery@host:MainProcess] -active- (-A proj worker -P gevent)`
# and `[celeryd: celery@host:ForkPoolWorker-1]`; gunicorn `gunicorn: master [app]` / `gunicorn: worker
# [app]`; uWSGI with auto-procname `uWSGI master` / `uWSGI worker 1`.
_CELERY_TITLE_RE = re.compile(r"^\[celeryd: (?:[^\]]*:)?(?P<proc>[^:\]]+)\](?:.*\((?P<argv>.*)\))?")
_GUNICORN_TITLE_RE = re.compile(r"^gunicorn: (?P<what>master|worker)\b")
_UWSGI_TITLE_RE = re.compile(r"^uWSGI (?P<what>master|worker|mule|http|spooler)\b")
# Interpreter options that take a value (`python -X dev -W error -m celery ...`).
_PY_VALUE_OPTS = {"-X", "-W", "--check-hash-based-pycs"}
# `celery` options before the subcommand that take a value (click; `celery -A proj worker`).
_CELERY_VALUE_OPTS = {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir"}
_CELERY_POOL_ALIASES = {"processes": "prefork"}
# A zombie has no cmdline or maps left: only its name (comm) says what it was.
_ZOMBIE_NAMES_RE = re.compile(r"^(python\S*|celery|gunicorn|uwsgi)$")


@dataclass(frozen=True)
class Launch:
    """What a command line alone says: the server kind, the Celery pool, a title's own claim."""

    kind: str = "python"  # celery (a worker), gunicorn, uwsgi, python
    pool: str | None = None  # Celery pool (prefork when not given)
    title: str | None = None  # "master" / "worker" when a process title says so


def _basename(arg: str) -> str:
    return arg.rstrip("/").rsplit("/", 1)[-1]


def entry_point(cmdline: Sequence[str]) -> tuple[str, list[str]]:
    """The program a command line runs and the arguments it gets.

    ``python [opts] -m mod args`` -> (mod, args); ``python [opts] script args`` -> (script's
    basename, args); ``python -c ...`` -> ("-c", args); anything else -> (argv[0]'s basename, args).

    >>> entry_point(["/venv/bin/python3", "-u", "-m", "celery", "-A", "proj", "worker"])
    ('celery', ['-A', 'proj', 'worker'])
    >>> entry_point(["/venv/bin/python", "/venv/bin/gunicorn", "app:app"])
    ('gunicorn', ['app:app'])
    """
    if not cmdline:
        return "", []
    first = _basename(cmdline[0])
    if not _PYTHON_NAME_RE.match(first):
        return first, list(cmdline[1:])
    i = 1
    while i < len(cmdline):
        arg = cmdline[i]
        if arg == "-m":
            return (cmdline[i + 1] if i + 1 < len(cmdline) else ""), list(cmdline[i + 2:])
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:], list(cmdline[i + 1:])
        if arg == "-c":
            return "-c", list(cmdline[i + 2:])
        if arg in _PY_VALUE_OPTS:
            i += 2
            continue
        if arg.startswith("-") and arg != "-":
            i += 1
            continue
        return _basename(arg), list(cmdline[i + 1:])
    return first, []


def celery_subcommand(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The celery subcommand (``worker``, ``beat``...) and the arguments after it.

    >>> celery_subcommand(["-A", "worker", "--broker=redis://", "worker", "-P", "solo"])
    ('worker', ['-P', 'solo'])
    """
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _CELERY_VALUE_OPTS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg, list(args[i + 1:])
    return None, []


def celery_pool(args: Sequence[str]) -> str:
    """The pool a ``celery worker`` command line asks for (``prefork`` when not given).

    >>> celery_pool(["-P", "gevent"]), celery_pool(["--pool=threads"]), celery_pool(["-Peventlet"]), celery_pool([])
    ('gevent', 'threads', 'eventlet', 'prefork')
    """
    pool = "prefork"
    for i, arg in enumerate(args):
        value: str | None = None
        if arg in ("-P", "--pool"):
            value = args[i + 1] if i + 1 < len(args) else None
        elif arg.startswith("--pool="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-P") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:].lstrip("=")
        if value:
            pool = value  # the last one wins, as with click
    return _CELERY_POOL_ALIASES.get(pool, pool)


def _split_title(text: str) -> list[str]:
    return [a for a in text.replace("\0", " ").split(" ") if a]


def launch_of(cmdline: Sequence[str], exe: str = "") -> Launch:
    """Classify one command line (or a setproctitle title) on its own, without parent links.

    >>> launch_of(["/usr/bin/python3", "-m", "celery", "-A", "proj", "worker", "--pool=prefork"])
    Launch(kind='celery', pool='prefork', title=None)
    >>> launch_of(["gunicorn: worker [app:app]"])
    Launch(kind='gunicorn', pool=None, title='worker')
    """
    joined = " ".join(cmdline).strip()
    title = _CELERY_TITLE_RE.match(joined)
    if title:
        proc = title.group("proc")
        if proc.startswith("ForkPoolWorker") or proc.startswith("PoolWorker"):
            return Launch("celery", "prefork", "worker")
        sub, rest = celery_subcommand(_split_title(title.group("argv") or ""))
        return Launch("celery", celery_pool(rest) if sub == "worker" else "prefork", "master")
    gtitle = _GUNICORN_TITLE_RE.match(joined)
    if gtitle:
        return Launch("gunicorn", None, gtitle.group("what"))
    utitle = _UWSGI_TITLE_RE.match(joined)
    if utitle:
        return Launch("uwsgi", None, "master" if utitle.group("what") == "master" else "worker")
    program, args = entry_point(cmdline)
    program = program.removesuffix(".py")
    if program in ("celery", "celery.__main__"):
        sub, rest = celery_subcommand(args)
        if sub == "worker":
            return Launch("celery", celery_pool(rest))
        return Launch()
    if program in ("gunicorn", "gunicorn.__main__"):
        return Launch("gunicorn")
    if program == "uwsgi" or _basename(exe) == "uwsgi":
        return Launch("uwsgi")
    return Launch()


@dataclass(frozen=True)
class RoleInput:
    """What ``assign_roles`` needs to know of one process."""

    pid: int
    ppid: int
    launch: Launch
    exe: str = ""  # empty when unreadable (another user's process)


def _same_exe(a: RoleInput, b: RoleInput) -> bool:
    return not a.exe or not b.exe or a.exe == b.exe


def assign_roles(procs: Iterable[RoleInput]) -> dict[int, tuple[str, str | None]]:
    """pid -> (role, pool). A prefork Celery worker, gunicorn or uWSGI process whose parent is
    the master of the same kind, running the same executable, is that master's child/worker.

    >>> m = RoleInput(10, 1, Launch("celery", "prefork"), "/usr/bin/python3.11")
    >>> c = RoleInput(11, 10, Launch("celery", "prefork"), "/usr/bin/python3.11")
    >>> g = RoleInput(20, 1, Launch("celery", "gevent"), "/usr/bin/python3.11")
    >>> assign_roles([c, m, g])
    {11: ('celery-child', 'prefork'), 10: ('celery-master', 'prefork'), 20: ('celery-worker', 'gevent')}
    """
    by_pid = {p.pid: p for p in procs}
    roles: dict[int, tuple[str, str | None]] = {}

    def role(p: RoleInput, depth: int = 0) -> tuple[str, str | None]:
        if p.pid in roles:
            return roles[p.pid]
        parent = by_pid.get(p.ppid)
        parent_role = role(parent, depth + 1)[0] if parent is not None and depth < 64 else None
        roles[p.pid] = _role(p, parent, parent_role)
        return roles[p.pid]

    for p in by_pid.values():
        role(p)
    return {pid: roles[pid] for pid in by_pid}


def _role(p: RoleInput, parent: RoleInput | None, parent_role: str | None) -> tuple[str, str | None]:
    kind, pool, title = p.launch.kind, p.launch.pool, p.launch.title
    forked_by_master = (parent is not None and parent_role == f"{parent.launch.kind}-master"
                        and _same_exe(p, parent))
    if (title is None and parent is not None and parent.launch.kind == kind != "python" and _same_exe(p, parent)
            and not forked_by_master):
        return "python", None  # a worker's own fork (a task calling os.fork()): neither master nor worker
    if kind == "celery":
        if title == "worker":
            return "celery-child", "prefork"
        if pool != "prefork":
            return "celery-worker", pool
        if forked_by_master and parent is not None and parent.launch.kind == "celery" and parent.launch.pool == "prefork":
            return "celery-child", "prefork"
        return "celery-master", "prefork"
    if kind in ("gunicorn", "uwsgi"):
        if title is not None:
            return f"{kind}-{title}", None
        if forked_by_master and parent is not None and parent.launch.kind == kind:
            return f"{kind}-worker", None
        return f"{kind}-master", None
    # A billiard child started by spawn/forkserver runs `python -c ...`: still the master's child.
    if forked_by_master and parent is not None and parent.launch.kind == "celery" and parent.launch.pool == "prefork":
        return "celery-child", "prefork"
    return "python", None


def role_matches(role: str, wanted: str) -> bool:
    """``--role celery`` matches every Celery role; ``--role celery-child`` only that one.

    >>> role_matches("celery-child", "celery"), role_matches("celery-child", "celery-master")
    (True, False)
    """
    return role == wanted or role.startswith(wanted + "-")


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
        return {
            "pid": self.pid, "ppid": self.ppid, "user": self.user, "python": self.python, "role": self.role,
            "pool": self.pool, "rss": self.rss, "uss": self.uss, "age_s": round(max(0.0, now - self.create_time), 1),
            "cmdline": self.cmdline, "inspectable": self.inspectable, "reason": self.reason, "children": self.children,
        }


def _read_maps(pid: int) -> list[Mapping] | None:
    """The process's mappings, or None when we may not read them (another user's process)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return parse_maps(f.read())
    except OSError:
        return None


def _fallback_version(name: str, cmdline: Sequence[str]) -> tuple[tuple[int, int] | None, bool]:
    """For an unreadable process: (version from argv[0], looks like Python by name)."""
    first = _basename(cmdline[0]) if cmdline else ""
    looks = bool(_PYTHON_NAME_RE.match(first) or _PYTHON_NAME_RE.match(name) or name == "uwsgi"
                 or launch_of(cmdline).kind != "python")
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
                return Proc(pid, ppid, user, uids.real, name, "", [name], status, create_time, None, 0, None)
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
    except (psutil.AccessDenied, psutil.ZombieProcess, psutil.NoSuchProcess, AttributeError, OSError):
        uss = None  # smaps of another user's process needs privileges: shown as "-", never a failure
    return Proc(pid, ppid, user, uids.real, name, exe, cmdline, status, create_time, version, rss, uss,
                gid=gids.real, maps=tuple(maps or ()), launch=launch_of(cmdline, exe))


def discover(pids: Iterable[int] | None = None) -> list[Proc]:
    """Python processes (all, or among ``pids``), roles assigned, children linked. Never attaches."""
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
            return any(v.startswith(b"PYTHON_DISABLE_REMOTE_DEBUG=") and v != b"PYTHON_DISABLE_REMOTE_DEBUG="
                       for v in f.read().split(b"\0"))
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
    return Target(pid=p.pid, name=p.name, exe=p.exe.removesuffix(" (deleted)"), cmdline=tuple(p.cmdline), uid=p.uid,
                  gid=p.gid, status=p.status, tracer_pid=_tracer_pid(p.pid), create_time=p.create_time,
                  version=p.version, capi_object=_capi_object(p), libc_object=None, mappings=p.maps,
                  same_root=_same_root(p.pid))


def inspectability(p: Proc) -> tuple[bool, str | None]:
    """(inspectable, reason) without side effects: target.py's checks, the ptrace rules, a backend."""
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


def select(procs: Sequence[Proc], user: str | None = None, role: str | None = None, pattern: str | None = None) -> list[Proc]:
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
        for kid in sorted((by_pid[c] for c in p.children if c in by_pid), key=lambda k: (-k.rss, k.pid)):
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

