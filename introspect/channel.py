"""The channel between CLI and agent: a private run directory, a request, a wait, a result.

The run directory lives in the *target's* ``/tmp`` (reached through ``/proc/PID/root`` so a target
in its own mount namespace works), is owned by the target's user with mode 0700, and is removed
when we are done. The request carries a nonce and a deadline: a bootstrap that runs after the CLI
gave up finds either no directory (removed) or an expired deadline, and does nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from introspect import codecache, errors
from introspect.agent import agent_files, code_name, compiled_walker, walker_files
from introspect.target import Target

MAGIC = "#introspect-bootstrap"
# A run directory's name; its CLI holds an flock on CLI_LOCK inside it for as long as it lives.
RUN_DIR_RE = re.compile(r"introspect-\d+-[0-9a-f]{16}")
CLI_LOCK = "cli.lock"
# Poll period while waiting for the agent: short enough to notice a dead target "at once".
POLL_S = 0.02
# result.json is data from the target: read at most this much (the largest real ones, `top -n 0`
# or `trace show` on a big heap, are a few MiB).
RESULT_MAX_BYTES = 64 << 20


@dataclass
class RunDir:
    target: Target
    nonce: str
    path: str  # as the target sees it
    removed: bool = False
    lock_fd: int = -1  # flock held on CLI_LOCK: tells a later run that this directory is in use

    @property
    def host(self) -> str:
        # Same filesystem view as ours: use the plain path, which (unlike /proc/PID/root) still
        # works for clean-up after the target has died.
        return self.path if self.target.same_root else self.target.host_path(self.path)

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def host_file(self, name: str) -> str:
        return f"{self.host}/{name}"

    def write(self, name: str, data: bytes, mode: int = 0o600) -> str:
        """Write a file the target will read; return its path as the target sees it."""
        dest = self.host_file(name)
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            raise self._planted(name) from None
        try:
            os.write(fd, data)
            if os.geteuid() == 0:
                os.fchown(fd, self.target.uid, self.target.gid)
        finally:
            os.close(fd)
        return self.file(name)

    def mkfifo(self, name: str) -> str:
        """A FIFO the target's process will open (a pipe: its data never lands on a filesystem)."""
        dest = self.host_file(name)
        try:
            os.mkfifo(dest, 0o600)
        except FileExistsError:
            raise self._planted(name) from None
        if os.geteuid() == 0:
            os.chown(dest, self.target.uid, self.target.gid, follow_symlinks=False)
        return self.file(name)

    def _planted(self, name: str) -> errors.IntrospectError:
        return errors.BadTargetState(
            f"something made {name} in introspect's private run directory {self.path} first",
            pid=self.target.pid,
            name=self.target.name,
            help="Only the process's own user (or root) can write there: the process itself, or "
                 "another of its user's, is interfering. Nothing was run in it; the run directory "
                 "is removed.",
        )

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.host_file(name))

    def read_json(self, name: str, limit: int) -> Any:
        """A JSON file the target wrote, read through a descriptor that follows no link, at most
        ``limit`` bytes (a larger one is refused: ValueError)."""
        data = self.read_bytes(name, limit)
        if len(data) > limit:
            raise ValueError(f"{name} is larger than {limit:,} bytes")
        return json.loads(data.decode("utf-8", "replace"))

    def read_bytes(self, name: str, limit: int) -> bytes:
        fd = os.open(self.host_file(name), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read(limit + 1)

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        # rmtree is symlink-safe (fd based) on Linux: a hostile target cannot redirect it.
        shutil.rmtree(self.host, ignore_errors=True)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


# A CLI killed between creating its lock (as CLI_LOCK.new) and renaming it leaves only that
# file; a directory with it alone, unlocked and older than this, is a dead CLI's.
NEW_LOCK_STALE_S = 60.0


def _open_lock(run_dir: str) -> int:
    """The run directory's lock file, opened; OSError if there is none the sweep may judge."""
    try:
        return os.open(f"{run_dir}/{CLI_LOCK}", os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = os.open(f"{run_dir}/{CLI_LOCK}.new", os.O_RDWR | os.O_NOFOLLOW)
        if time.time() - os.fstat(fd).st_mtime < NEW_LOCK_STALE_S:  # being made right now
            os.close(fd)
            raise
        return fd


def sweep_run_dirs(tmp_host: str) -> list[str]:
    """Remove run directories left in ``tmp_host`` by an introspect that was killed (SIGKILL, a
    closed terminal): those whose CLI_LOCK nobody holds (or whose CLI_LOCK.new nobody holds and
    that is over a minute old: killed before the rename). A directory without either (an older
    introspect) and anything not ours is left alone."""
    removed: list[str] = []
    euid = os.geteuid()
    try:
        entries = list(os.scandir(tmp_host))
    except OSError:
        return removed
    for entry in entries:
        if not RUN_DIR_RE.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or (euid != 0 and st.st_uid != euid):
                continue
            fd = _open_lock(entry.path)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its introspect is alive
        finally:
            os.close(fd)
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def make_run_dir(target: Target) -> RunDir:
    nonce = secrets.token_hex(8)
    tmp = "/tmp"
    path = f"{tmp}/introspect-{target.pid}-{nonce}"
    host = target.host_path(path)
    sweep_run_dirs(target.host_path(tmp))
    try:
        os.mkdir(host, 0o700)
    except FileExistsError:
        # The name holds 64 random bits: something there already was put there to meet us (a
        # link to redirect our files, a directory to read them); never follow or reuse it.
        raise errors.AccessDenied(
            f"{path} already exists in the target's {tmp} before introspect made it",
            pid=target.pid,
            name=target.name,
            help="Another process is interfering with introspect's run directories; look at who "
                 f"owns it (ls -ld {host}). Nothing was done to the target.",
        ) from None
    except FileNotFoundError:
        if not target.is_alive():
            raise errors.TargetExited(
                "the process exited", pid=target.pid, name=target.name
            ) from None
        raise errors.InjectionFailed(
            f"the target has no {tmp} directory we can reach through {target.root}", pid=target.pid,
            name=target.name,
            help="introspect needs a writable /tmp inside the target's filesystem.",
        ) from None
    except PermissionError:
        raise errors.AccessDenied(
            f"cannot create a run directory in the target's {tmp} ({target.root}{tmp})",
            pid=target.pid, name=target.name,
            help="Run introspect as root (sudo -E introspect ...) or as the process's own user.",
        ) from None
    run = RunDir(target, nonce, path)
    try:
        if os.geteuid() == 0 and target.uid != 0:
            os.chown(host, target.uid, target.gid)
        st = os.lstat(host)
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o700:
            raise errors.InjectionFailed(f"run directory {host} is not a private directory")
        # Made under another name, locked, then renamed: another introspect's sweep_run_dirs
        # must never find CLI_LOCK unlocked between its creation and our flock (it took such a
        # directory for a killed CLI's and removed it under us: seen with two CLIs at once).
        run.lock_fd = os.open(
            f"{host}/{CLI_LOCK}.new", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
        )
        fcntl.flock(run.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(f"{host}/{CLI_LOCK}.new", f"{host}/{CLI_LOCK}")
        if os.geteuid() == 0:
            os.fchown(run.lock_fd, target.uid, target.gid)
    except BaseException:
        run.remove()
        raise
    return run


@dataclass
class Request:
    command: str
    params: dict[str, Any]
    timeout: float
    run: RunDir
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.time() + self.timeout

    def literal(self) -> dict[str, Any]:
        return {"nonce": self.run.nonce, "deadline": self.deadline, "dir": self.run.path,
                "command": self.command, "params": self.params}


BOOTSTRAP_NAME = "<introspect-bootstrap>"
AGENT_NAME = codecache.AGENT_PREFIX  # the agent's __file__: its namespace holds every file shipped


def bootstrap_source(
    agent_paths: list[tuple[str, str]], request: Request, code_path: str = ""
) -> str:
    """The code the injector makes the target run: it cannot raise, and binds no name anywhere.

    A raising bootstrap would make ``PyRun_SimpleString`` return -1 and the target's *own* code
    fail with SystemError (DESIGN.md), so everything is inside try/except; the agent runs in a
    fresh dict, never in ``__main__``'s globals. ``repr`` of plain literals is valid Python.

    Stage 1 loads the agent's precompiled code from ``code_path`` (a tuple of code objects, one
    per file) if its header is exactly the target's own bytecode (see codecache), else compiles
    each file of ``agent_paths`` ([(path, name its code gets)], in order). It executes each code
    object in turn in one fresh dict (the last, run.py, runs the request). What it compiled stays
    in the target: nothing a target makes is ever shipped to another (docs/security.md). It reads
    ``sys`` and ``marshal`` from ``sys.modules`` (both always there), and imports ``gc`` only if
    nothing did (a builtin module: the agent reports it as imported).

    The garbage collector is disabled while the agent loads and runs, and enabled again after (if
    it was): the agent's own allocations would otherwise trigger the target's collections in the
    middle of our run -- a full one at a million objects is 30-40 ms, measured as the largest part
    of a forked snapshot's pause in scripts/bench-snapshot -- and promote our short-lived objects
    to an older generation. Held off, they are freed before any collection sees them, and the
    collector's counts end where they began. The agent reports and uses the state it found
    (``_GC``); `exec` runs the user's code with the collector as the target had it.
    """
    globs = {"__name__": "__introspect_agent__", "__file__": AGENT_NAME,
             "REQUEST": request.literal()}
    # Stage 1 runs in its own fresh dict: the file handles and data bind there, not in __main__,
    # and the files are closed (an unclosed file's ResourceWarning would plant __warningregistry__
    # in __main__).
    stage1 = (
        "import sys\n"
        "M=sys.modules;T=M.get('time');t=T.perf_counter() if T else 0.0\n"
        # The collector is held off while our code loads and runs (see the docstring).
        "n=[] if 'gc' in M else ['gc'];G=M.get('gc') or __import__('gc');e=G.isenabled()\n"
        "if e:G.disable()\n"
        "try:\n"
        " c=k=None\n"
        " try:\n"
        "  k=M['_frozen_importlib_external'].MAGIC_NUMBER"
        "+(' %x %s\\n'%(sys.hexversion,getattr(sys,'abiflags','?'))).encode()\n"
        f"  with open({code_path!r},'rb') as f:d=f.read()\n"
        "  if d[:len(k)]==k:c=M['marshal'].loads(d[len(k):])\n"
        "  d=None\n"
        "  if type(c) is not tuple:c=None\n"
        " except Exception:c=None\n"
        " h='loaded'\n"
        " if c is None:\n"
        "  h='compiled';c=[]\n"
        f"  for p,q in {agent_paths!r}:\n"
        "   with open(p,'rb') as f:c.append(compile(f.read(),q,'exec'))\n"
        f" g={globs!r}\n"
        " g['_LOADED']=(h,T.perf_counter()-t if T else 0.0);g['_GC']=e;g['_NEW']=n\n"
        " for x in c:exec(x,g)\n"
        "finally:\n"
        " if e:G.enable()\n"
    )
    # Stage 1 is compiled under its own name: tracemalloc attributes the agent's source and code
    # objects to it, and `trace show` leaves them out (a plain exec would file them under <string>).
    return (
        f"{MAGIC}\ntry:exec(compile({stage1!r},{BOOTSTRAP_NAME!r},'exec'),{{}})\n"
        "except BaseException:pass\n"
    )


def prepare(target: Target, command: str, params: dict[str, Any], timeout: float,
            files: dict[str, bytes] | None = None,
            fifos: tuple[str, ...] = ()) -> tuple[Request, str]:
    """Create the run dir with the agent (and ``files``, and FIFOs named in ``fifos``, whose target
    paths go into ``params`` under their names); return the request and the bootstrap text."""
    run = make_run_dir(target)
    try:
        agent = agent_files(command)
        agent_paths = [(run.write(name, data, 0o400), code_name(name)) for name, data in agent]
        code, _how = codecache.for_target(target, agent)
        code_path = run.write(codecache.CODE_FILE, code, 0o400) if code is not None else ""
        params = dict(params)
        if command == "snapshot":  # compiled by the forked walker only, in this order
            params["walker"] = [run.write(name, data, 0o400) for name, data in walker_files()]
            so, why = compiled_walker()
            if so is not None:
                params["cwalk"] = run.write("cwalk.so", so, 0o400)
            else:
                params["cwalk_why"] = why
        for name, data in (files or {}).items():
            params[name] = run.write(name, data, 0o400)
        for name in fifos:
            params[name] = run.mkfifo(name)
        request = Request(command, params, timeout, run)
        return request, bootstrap_source(agent_paths, request, code_path)
    except BaseException:
        run.remove()
        raise


Progress = Callable[[str], None]

# The steps the agent marks (agent/core.py _phase), as the timeout message names them.
PHASES = {"collect": "a full gc.collect() (--collect)", "settle": "a young-generation collection",
          "walk": "the walk over the heap (by size)", "referrers": "the referrer search"}


_NUM = (int, float)
Check = Callable[[Any], bool]


def _is(*types: type) -> Check:
    return lambda v: isinstance(v, types) and (bool in types or not isinstance(v, bool))


def _map_of(ok: Check) -> Check:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and ok(x) for k, x in v.items())


def _list_of(ok: Check) -> Check:
    return lambda v: isinstance(v, list) and all(ok(x) for x in v)


_INT, _NUMBER, _STR, _BOOL, _DICT, _LIST = (_is(int), _is(int, float), _is(str), _is(bool),
                                            _is(dict), _is(list))
_STR_OR_NONE, _INTS = _is(str, type(None)), _map_of(_is(int))


def gc_facts_ok(v: Any) -> bool:
    """The agent's collector facts (agent._gc_facts), as the CLI prints them."""
    return (
        isinstance(v, dict)
        and _BOOL(v.get("enabled", False))
        and _list_of(_INT)(v.get("counts", []))
        and _INT(v.get("frozen", 0))
    )


# The envelope's fields the CLI reads (agent/run.py run() and _answer() write them).
ENVELOPE_FIELDS: dict[str, Check] = {
    "ok": _BOOL,
    "command": _STR,
    "pid": _INT,
    "result": _is(dict, type(None)),
    "error": _DICT,
    "agent_s": _NUMBER,
    "code": lambda v: (
        v is None or (isinstance(v, list) and len(v) == 2 and _STR(v[0]) and _NUMBER(v[1]))
    ),
    "python": _STR,
    "imported": _list_of(_STR),
}
# Each command's result fields the CLI reads: (checks, fields always present). Fields not listed
# are passed on untouched (the tracing commands' own, issue 22; nested chains and graphs are
# checked for their shape only).
RESULT_FIELDS: dict[str, tuple[dict[str, Check], tuple[str, ...]]] = {
    "snapshot": (
        {"forked": _BOOL, "pause_s": _NUMBER, "fork_s": _NUMBER, "error": _STR, "child": _INT},
        ("forked",),
    ),
    "top": (
        {"objects": _INT, "types": _INTS, "gc": gc_facts_ok, "scan_s": _NUMBER,
         "untracked_objects": _INT, "sizes": _map_of(_list_of(_NUMBER)), "opaque": _INTS,
         "partial": _BOOL, "stopped": _STR_OR_NONE, "walked": _is(int, type(None)),
         "levels": _is(int, type(None)), "tracked_total": _is(int, type(None)), "budget": _NUMBER},
        ("objects", "types", "gc", "scan_s"),
    ),
    "growth": (
        {"objects": _INT, "counts": _INTS, "now": _NUMBER, "gc": gc_facts_ok, "scan_s": _NUMBER},
        ("objects", "counts", "now", "gc", "scan_s"),
    ),
    "backrefs": (
        {
            "status": _STR,
            "type": _STR,
            "found": _INT,
            "sampled": _INT,
            "unrooted": _INT,
            "chains": _list_of(_DICT),
            "graph": _DICT,
            "partial": _BOOL,
            "reason": _STR_OR_NONE,
            "opaque": _INTS,
            "levels": _INT,
            "scan_s": _NUMBER,
            "search_s": _NUMBER,
            "allocated": _LIST,
            "names": _list_of(_STR),
            "candidates": _list_of(
                lambda c: isinstance(c, list) and len(c) == 2 and _STR(c[0]) and _INT(c[1])
            ),
        },
        ("status",),
    ),
    "exec": ({"stdout": _STR, "stderr": _STR, "exception": _is(dict, type(None)), "run_s": _NUMBER},
             ("stdout", "stderr", "run_s")),
}
# backrefs: the fields each status needs
_BACKREFS_NEEDS = {
    "ok": ("type", "found", "sampled", "unrooted", "chains", "graph", "partial", "levels"),
    "unknown": ("names",), "ambiguous": ("candidates",),
}


def checked_envelope(envelope: dict[str, Any], pid: int) -> dict[str, Any]:
    """``envelope`` if every field the CLI reads has its type, else AgentError naming the field:
    result.json is written by the target, and a wrong type must not become a traceback."""

    def bad(what: str) -> errors.AgentError:
        return errors.AgentError(
            f"the agent's result breaks its format: {what}", pid=pid,
            help="The target wrote a result introspect cannot trust; nothing of it was used.",
        )

    if "ok" not in envelope:
        raise bad("no field 'ok'")
    for key, ok in ENVELOPE_FIELDS.items():
        if key in envelope and not ok(envelope[key]):
            raise bad(f"field {key!r} has the wrong type ({type(envelope[key]).__name__})")
    if envelope["ok"] and not isinstance(envelope.get("result"), dict):
        raise bad("a successful run carries no result object")
    err = envelope.get("error")
    if err is not None:
        frames = err.get("frames", [])
        if not (
            _STR(err.get("type", ""))
            and _STR(err.get("message", ""))
            and isinstance(frames, list)
            and all(
                isinstance(f, list) and len(f) == 3 and _STR(f[0]) and _INT(f[1]) and _STR(f[2])
                for f in frames
            )
        ):
            raise bad(
                "field 'error' is not {type: str, message: str, frames: [[file, line, function]]}"
            )
    result = envelope.get("result")
    checks, needed = RESULT_FIELDS.get(str(envelope.get("command")), ({}, ()))
    if envelope["ok"] and isinstance(result, dict):
        if envelope.get("command") == "backrefs":
            needed = needed + _BACKREFS_NEEDS.get(str(result.get("status")), ())
        missing = [k for k in needed if k not in result]
        if missing:
            raise bad(
                f"the {envelope.get('command')} result has no {', '.join(map(repr, missing))}"
            )
        for key, ok in checks.items():
            if key in result and not ok(result[key]):
                raise bad(
                    f"result field {key!r} has the wrong type or shape "
                    f"({type(result[key]).__name__})"
                )
    return envelope


def last_phase(run: RunDir) -> str:
    """The last step the agent marked in the run dir ('' if none)."""
    try:
        names = [n[len("phase-") :] for n in os.listdir(run.host) if n.startswith("phase-")]
    except OSError:
        return ""
    order = list(PHASES)
    return max(names, key=lambda n: order.index(n) if n in order else -1, default="")


def wait_for_result(request: Request, *, on_stall: Callable[[float], None] | None = None,
                    stall_after: float = 2.0,
                    on_tick: Callable[[float, bool], None] | None = None,
                    parked: Callable[[float], bool] | None = None) -> dict[str, Any]:
    """Wait for the agent's result; notice at once when the target exits; respect the deadline.
    ``on_stall`` is called once, after ``stall_after`` s or as soon as ``parked`` says the main
    thread cannot take the request until it wakes."""
    run = request.run
    target = run.target
    stalled = False
    started_seen = False
    t_start = time.monotonic()
    while True:
        if run.exists("result.json"):
            try:
                result = run.read_json("result.json", RESULT_MAX_BYTES)
            except (OSError, ValueError) as exc:
                raise errors.AgentError(
                    f"unreadable result from the agent: {exc}", pid=target.pid
                ) from None
            if not isinstance(result, dict) or result.get("nonce") != run.nonce:
                raise errors.AgentError(
                    "result does not carry our nonce; refusing it", pid=target.pid
                )
            return checked_envelope(result, target.pid)
        if not target.is_alive():
            raise errors.TargetExited("the process exited while introspect waited for it",
                                      pid=target.pid, name=target.name)
        started_seen = started_seen or run.exists("started")
        waited = time.monotonic() - t_start
        if on_tick is not None:
            on_tick(waited, started_seen)
        if (not started_seen and not stalled and on_stall is not None
                and (waited > stall_after or (parked is not None and parked(waited)))):
            stalled = True
            on_stall(waited)
        if time.time() > request.deadline:
            if started_seen:
                phase = last_phase(run)
                raise errors.TimeoutExpired(
                    f"the agent started but did not finish within {request.timeout:g} s"
                    + (f": it was in {PHASES.get(phase, phase)}" if phase else ""),
                    pid=target.pid,
                    name=target.name,
                    help=(
                        "The request is now void: the agent stops at its next check and leaves "
                        "nothing behind. "
                        + (
                            "A full collection is one call that cannot be interrupted: leave out "
                            "--collect, or run it when the process is quieter."
                            if phase == "collect"
                            else "Its walks check their --budget between batches, so one step ran "
                                 "far longer than a batch should (a main thread starved by other "
                                 "threads?): run it again; `-v` shows the timings."
                        )
                    ),
                )
            raise errors.TimeoutExpired(
                f"the target did not run our code within {request.timeout:g} s",
                pid=target.pid,
                name=target.name,
                help=(
                    "Its main thread never reached a point where Python code can run (a long call "
                    "in C code, or waiting for a lock). The queued request is now void and will do "
                    "nothing if it runs later. Try again when that call has returned; a larger "
                    "--timeout helps only if it returns soon."
                ),
            )
        time.sleep(POLL_S)
