"""Which server role a Python process plays (Celery / gunicorn / uWSGI master or worker), from
its command line (or setproctitle title) and its parent link alone.

Pure functions over strings and pids, no ``/proc`` and no psutil: ``procs.py`` reads the facts and
hands them here, and the tests feed synthetic command lines. ``launch_of`` says what one command
line claims; ``assign_roles`` adds what the parent links say (a master's forked child is a worker).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ROLES = ("celery-master", "celery-child", "celery-worker", "gunicorn-master", "gunicorn-worker",
         "uwsgi-master", "uwsgi-worker", "python")
# Masters whose leak lives in their worker processes: `top/growth/backrefs` point at the children.
MASTER_ROLES = ("celery-master", "gunicorn-master", "uwsgi-master")

PYTHON_NAME_RE = re.compile(r"^python(\d(\.\d+)?)?[a-z]*$")
# setproctitle titles: Celery `[celeryd: celery@host:MainProcess] -active- (-A proj worker -P
# gevent)` and `[celeryd: celery@host:ForkPoolWorker-1]`; gunicorn `gunicorn: master [app]` /
# `gunicorn: worker [app]`; uWSGI with auto-procname `uWSGI master` / `uWSGI worker 1`.
_CELERY_TITLE_RE = re.compile(r"^\[celeryd: (?:[^\]]*:)?(?P<proc>[^:\]]+)\](?:.*\((?P<argv>.*)\))?")
_GUNICORN_TITLE_RE = re.compile(r"^gunicorn: (?P<what>master|worker)\b")
_UWSGI_TITLE_RE = re.compile(r"^uWSGI (?P<what>master|worker|mule|http|spooler)\b")
# Interpreter options that take a value (`python -X dev -W error -m celery ...`).
_PY_VALUE_OPTS = {"-X", "-W", "--check-hash-based-pycs"}
# `celery` options before the subcommand that take a value (click; `celery -A proj worker`).
_CELERY_VALUE_OPTS = {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config",
                      "--workdir"}
_CELERY_POOL_ALIASES = {"processes": "prefork"}


@dataclass(frozen=True)
class Launch:
    """What a command line alone says: the server kind, the Celery pool, a title's own claim."""

    kind: str = "python"  # celery (a worker), gunicorn, uwsgi, python
    pool: str | None = None  # Celery pool (prefork when not given)
    title: str | None = None  # "master" / "worker" when a process title says so


def basename(arg: str) -> str:
    """The last component of a path (a trailing slash ignored)."""
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
    first = basename(cmdline[0])
    if not PYTHON_NAME_RE.match(first):
        return first, list(cmdline[1:])
    i = 1
    while i < len(cmdline):
        arg = cmdline[i]
        if arg == "-m":
            return (cmdline[i + 1] if i + 1 < len(cmdline) else ""), list(cmdline[i + 2 :])
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:], list(cmdline[i + 1 :])
        if arg == "-c":
            return "-c", list(cmdline[i + 2 :])
        if arg in _PY_VALUE_OPTS:
            i += 2
            continue
        if arg.startswith("-") and arg != "-":
            i += 1
            continue
        return basename(arg), list(cmdline[i + 1 :])
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
        return arg, list(args[i + 1 :])
    return None, []


def celery_pool(args: Sequence[str]) -> str:
    """The pool a ``celery worker`` command line asks for (``prefork`` when not given).

    >>> (celery_pool(["-P", "gevent"]), celery_pool(["--pool=threads"]),
    ...  celery_pool(["-Peventlet"]), celery_pool([]))
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
    if program == "uwsgi" or basename(exe) == "uwsgi":
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
    {11: ('celery-child', 'prefork'), 10: ('celery-master', 'prefork'), 20: ('celery-worker',
    'gevent')}
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


def _role(
    p: RoleInput, parent: RoleInput | None, parent_role: str | None
) -> tuple[str, str | None]:
    kind, pool, title = p.launch.kind, p.launch.pool, p.launch.title
    forked_by_master = (
        parent is not None
        and parent_role == f"{parent.launch.kind}-master"
        and _same_exe(p, parent)
    )
    if (
        title is None
        and parent is not None
        and parent.launch.kind == kind != "python"
        and _same_exe(p, parent)
        and not forked_by_master
    ):
        # a worker's own fork (a task calling os.fork()): neither master nor worker
        return "python", None
    if kind == "celery":
        if title == "worker":
            return "celery-child", "prefork"
        if pool != "prefork":
            return "celery-worker", pool
        if (
            forked_by_master
            and parent is not None
            and parent.launch.kind == "celery"
            and parent.launch.pool == "prefork"
        ):
            return "celery-child", "prefork"
        return "celery-master", "prefork"
    if kind in ("gunicorn", "uwsgi"):
        if title is not None:
            return f"{kind}-{title}", None
        if forked_by_master and parent is not None and parent.launch.kind == kind:
            return f"{kind}-worker", None
        return f"{kind}-master", None
    # A billiard child started by spawn/forkserver runs `python -c ...`: still the master's child.
    if (
        forked_by_master
        and parent is not None
        and parent.launch.kind == "celery"
        and parent.launch.pool == "prefork"
    ):
        return "celery-child", "prefork"
    return "python", None


def role_matches(role: str, wanted: str) -> bool:
    """``--role celery`` matches every Celery role; ``--role celery-child`` only that one.

    >>> role_matches("celery-child", "celery"), role_matches("celery-child", "celery-master")
    (True, False)
    """
    return role == wanted or role.startswith(wanted + "-")
