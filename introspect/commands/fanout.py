"""``--children``: run top, growth or backrefs on every worker process of a master, side by side.

With Celery's prefork pool (and gunicorn, uWSGI) the leak lives in the worker processes, not in
the master an engineer usually finds first. Pointed at such a master without ``--children``, a
command says so in one line on stderr and carries on with the master itself. With ``--children``
it runs once per Python child process of PID, all at the same time (each one an introspect
process of its own, so one slow child holds up nobody), with one deadline for all of them; each
writes its usual files into ``DIR/child-<pid>/``. While children are pending, stderr says which
ones and what their main thread is doing; a child still pending at the deadline is stopped and
reported as timed out. The combined document has one entry per child and the master itself is not
looked into. A child that fails (it exited because of ``--max-tasks-per-child``, say) gets its
error in its column; the exit status is non-zero only when every child failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from introspect import errors, procs, roles
from introspect.commands import emit
from introspect.progress import Progress
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes, signed, table

# Failures that would be the same for every child: raised instead of shown per child.
_SAME_FOR_ALL = (errors.UsageError, errors.OutputError)
_ERROR_CELL_WIDTH = 28
# The child introspect writes its error here as JSON (set in its environment by run_children).
ERROR_FILE_ENV = "INTROSPECT_ERROR_FILE"
# Interpreter start-up and injection of a child introspect, beyond the --timeout of its own waits.
_START_S = 15.0
# After this long, name the children still pending on stderr once (a terminal also gets a live
# line).
_PENDING_NOTE_S = 5.0
_POLL_S = 0.05
# A child asked to stop (SIGINT: it withdraws its request and cleans up) gets this long before
# SIGKILL.
_STOP_GRACE_S = 5.0
# Options each child gets from run_children itself.
_NOT_PASSED = {"help", "children", "json", "output", "timeout", "verbose", "command", "handler",
               "parser"}


class _Runnable(Protocol):
    name: str

    def run(self, args: argparse.Namespace) -> int: ...


def add_children_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--children",
        action="store_true",
        help="PID is a master (Celery prefork, gunicorn, uWSGI): run on each of its Python child "
             "processes instead and show them side by side",
    )


def divert(command: _Runnable, args: argparse.Namespace) -> int | None:
    """First thing in ``run()``: None to go on with PID itself, else the exit code of a fan-out."""
    wanted = getattr(args, "children", False)
    if wanted is None:  # we are one of the fan-out's own runs
        return None
    if wanted:
        return run_children(command, args)
    note_if_master(args.pid)
    return None


def note_if_master(pid: int) -> None:
    """One line on stderr when PID is a master whose workers hold the heap that matters."""
    master, kids = procs.workers_of(pid)
    if master is None or master.role not in roles.MASTER_ROLES or not kids:
        return
    what = f"{master.role} ({master.pool})" if master.pool else master.role
    pids = ", ".join(str(k.pid) for k in kids)
    print(
        f"introspect: note: pid {pid} is a {what}; its workers are the processes that run your "
        f"code and hold the leak: {pids}. Add --children to look inside each of them.",
        file=sys.stderr,
        flush=True,
    )


@dataclass(frozen=True)
class ChildResult:
    pid: int
    doc: dict[str, Any] | None
    error: errors.IntrospectError | None

    def as_doc(self) -> dict[str, Any]:
        if self.doc is not None:
            return {"pid": self.pid, "ok": True, **self.doc}
        assert self.error is not None
        return {
            "pid": self.pid,
            "ok": False,
            "error": {"type": type(self.error).__name__, "message": str(self.error),
                      "help": self.error.help or None, "exit_code": self.error.exit_code},
        }


def run_children(command: _Runnable, args: argparse.Namespace) -> int:
    master, kids = procs.workers_of(args.pid)
    if master is None:
        raise errors.NoSuchProcess("no such Python process", pid=args.pid)
    if not kids:
        raise errors.UsageError(
            f"--children: pid {args.pid} ({master.role}) has no Python child processes",
            pid=args.pid,
            help="Run without --children, or give the pid of a Celery prefork, gunicorn or uWSGI "
                 "master (`introspect ps` shows roles and children).",
        )
    out = OutputDir(command.name, args.pid, args.output)
    results = _run_all(command.name, args, [kid.pid for kid in kids], out)
    for r in results:
        if isinstance(r.error, _SAME_FOR_ALL):
            raise r.error
    doc: dict[str, Any] = {"pid": master.pid, "role": master.role, "pool": master.pool,
                           "command": command.name, "children": [r.as_doc() for r in results],
                           "failed": sum(1 for r in results if r.error is not None)}
    for r in results:
        if r.error is not None:
            print(f"introspect: child {r.pid} failed: {r.error}", file=sys.stderr)
    emit(args, out, doc, render(command.name, args, master, results))
    failures = [r.error for r in results if r.error is not None]
    return failures[0].exit_code if len(failures) == len(results) else 0


def child_deadline_s(args: argparse.Namespace) -> float:
    """How long a child introspect may take, all its own waits included: the one deadline for all.

    >>> child_deadline_s(argparse.Namespace(command="growth", timeout=30.0, samples=3,
    ...                                     interval=10.0))
    125.0
    >>> child_deadline_s(argparse.Namespace(command="backrefs", timeout=5.0, budget=20.0,
    ...                                     samples=10))
    45.0
    """
    per_run = (
        max(args.timeout, getattr(args, "budget", 0.0) + 10)
        if args.command == "backrefs"
        else args.timeout
    )
    runs = max(1, getattr(args, "samples", 1)) if args.command == "growth" else 1
    return float(runs * per_run + (runs - 1) * getattr(args, "interval", 0.0) + _START_S)


def child_argv(args: argparse.Namespace, pid: int, out_dir: Path) -> list[str]:
    """The command line that runs this command on one child: the user's options, our own output
    ones."""
    argv = [args.command]
    for action in args.parser._actions:
        dest = action.dest
        if dest == "pid":
            argv.append(str(pid))
            continue
        if dest in _NOT_PASSED or dest == argparse.SUPPRESS:
            continue
        value = getattr(args, dest, None)
        if not action.option_strings:
            if value is not None:  # an optional positional left out (growth's NEW)
                argv.append(str(value))
        elif action.nargs == 0:  # a flag
            if value and value != action.default:
                argv.append(action.option_strings[-1])
        elif value is not None:
            argv += [action.option_strings[-1], str(value)]
    return [*argv, "--timeout", f"{args.timeout:g}", "--json", "-v", "-o", str(out_dir)]


@dataclass
class _Child:
    pid: int
    proc: subprocess.Popen[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]
    error_file: str
    result: ChildResult | None = None
    log: list[str] = field(default_factory=list)

    def last_line(self) -> str:
        self.stderr.seek(0)
        lines = [
            ln.strip()
            for ln in self.stderr.read().decode("utf-8", "replace").splitlines()
            if ln.strip()
        ]
        self.log = lines
        # "waiting up to --timeout" says less than the line before it (what the main thread is
        # doing).
        telling = [ln for ln in lines if "waiting up to --timeout" not in ln]
        last = telling[-1] if telling else lines[-1] if lines else "starting"
        return last.removeprefix("introspect: ")


def _run_all(
    name: str, args: argparse.Namespace, pids: list[int], out: OutputDir
) -> list[ChildResult]:
    """Start one introspect per child, all at once; collect their documents or errors."""
    limit = child_deadline_s(args)
    t0 = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="introspect-children-")
    children: list[_Child] = []
    progress = Progress()
    noted = False
    try:
        for pid in pids:
            error_file = os.path.join(tmp.name, f"{pid}.error.json")
            stdout, stderr = (tempfile.TemporaryFile(dir=tmp.name),
                              tempfile.TemporaryFile(dir=tmp.name))
            env = {**os.environ, ERROR_FILE_ENV: error_file}
            proc = subprocess.Popen(
                [sys.executable, "-m", "introspect",
                 *child_argv(args, pid, out.path / f"child-{pid}")],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
            )
            children.append(_Child(pid, proc, stdout, stderr, error_file))
        while True:
            pending = [c for c in children if c.result is None]
            for c in pending:
                if c.proc.poll() is not None:
                    c.result = _collect(c)
            pending = [c for c in children if c.result is None]
            if not pending:
                break
            waited = time.monotonic() - t0
            if waited > limit:
                doing = {c.pid: c.last_line() for c in pending}
                _stop(pending, interrupt=True)
                for c in pending:
                    c.result = ChildResult(
                        c.pid,
                        None,
                        errors.TimeoutExpired(
                            f"still pending after {waited:.0f} s, the deadline for all children: "
                            f"{doing[c.pid]}",
                            pid=c.pid,
                            help="Its request was withdrawn. Run the command on that pid alone to "
                                 "see why.",
                        ),
                    )
                break
            progress.update(
                f"{name} --children: {len(children) - len(pending)}/{len(children)} done; waiting "
                "for "
                + "; ".join(f"pid {c.pid} ({c.last_line()})" for c in pending)
            )
            if not noted and waited > _PENDING_NOTE_S:
                noted = True
                progress.done()
                for c in pending:
                    print(f"introspect: still waiting for child {c.pid}: {c.last_line()}",
                          file=sys.stderr, flush=True)
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached the children too: each withdraws its request and cleans up.
        # A second SIGINT could cut that short, so they only get one if they outlast the grace.
        _stop([c for c in children if c.result is None], interrupt=False)
        raise
    finally:
        progress.done()
        for c in children:
            if args.verbose:
                c.last_line()
                for line in c.log:
                    print(f"introspect: [child {c.pid}] {line.removeprefix('introspect: ')}",
                          file=sys.stderr)
            c.stdout.close()
            c.stderr.close()
        tmp.cleanup()
    return [c.result for c in children if c.result is not None]


def _stop(children: list[_Child], *, interrupt: bool) -> None:
    """Stop child introspects we started: SIGINT (each withdraws its request and cleans up), a
    grace, then SIGKILL; all reaped. With ``interrupt`` False they are presumed to have had their
    SIGINT."""
    for step in ("interrupt", "kill"):
        running = [c for c in children if c.proc.poll() is None]
        if not running:
            return
        if step == "kill" or interrupt:
            for c in running:
                c.proc.send_signal(signal.SIGKILL if step == "kill" else signal.SIGINT)
        deadline = time.monotonic() + _STOP_GRACE_S
        for c in running:
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def _collect(c: _Child) -> ChildResult:
    """The child's document from its stdout, or its error from the error file it wrote."""
    rc = c.proc.returncode
    if rc == 0:
        c.stdout.seek(0)
        try:
            return ChildResult(c.pid, json.loads(c.stdout.read().decode("utf-8", "replace")), None)
        except ValueError:
            pass
    try:
        with open(c.error_file) as f:
            e = json.load(f)
        cls = getattr(errors, e["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, errors.IntrospectError)):
            cls = errors.IntrospectError
        return ChildResult(
            c.pid, None, cls(e["message"], pid=e.get("pid"), name=e.get("name"), help=e.get("help"))
        )
    except (OSError, ValueError, KeyError):
        err = errors.IntrospectError(
            f"introspect on this child ended with exit code {rc}: {c.last_line()}", pid=c.pid
        )
        err.exit_code = rc if rc > 0 else 1
        return ChildResult(c.pid, None, err)


# -- one table, a column per child ---------------------------------------------------------------

Cells = dict[str, tuple[float, str]]  # row label -> (sort weight, cell text)


def _top_cells(doc: dict[str, Any]) -> Cells:
    out: Cells = {}
    by_size = doc.get("by") == "size"
    for row in doc.get("types", []):
        value = row["bytes"] if by_size else row["count"]
        out[row["type"]] = (value, human_bytes(value) if by_size else f"{value:,}")
    return out


def _growth_cells(doc: dict[str, Any]) -> Cells:
    out: Cells = {}
    if doc.get("baseline_recorded") and doc.get("samples", 1) == 1:
        return out  # nothing to compare yet: the status row says so
    for row in doc.get("types", []):
        if row["delta"] or row["since_baseline"]:
            out[row["type"]] = (abs(row["delta"]), f"{row['count']:,} ({signed(row['delta'])})")
    return out


def _backrefs_cells(doc: dict[str, Any]) -> Cells:
    out: Cells = {"live objects": (float("inf"), f"{doc['found']:,}"),
                  "traced": (float("inf"), f"{doc['sampled']:,}")}
    held: dict[str, int] = {}
    for chain in doc.get("chains", []):
        via = chain["path"][0]["via"] if chain.get("path") else None
        label = f"held by {chain['root']}" + (f" via {via}" if via else "")
        held[label] = held.get(label, 0) + chain["count"]
    for label, n in held.items():
        out[label] = (n, f"{n:,}")
    if doc.get("unrooted"):
        out["not traced to a root"] = (doc["unrooted"], f"{doc['unrooted']:,}")
    return out


_CELLS: dict[str, Callable[[dict[str, Any]], Cells]] = {"top": _top_cells, "growth": _growth_cells,
                                                        "backrefs": _backrefs_cells}
_FIRST_COLUMN = {"top": "type", "growth": "type: count (change)", "backrefs": ""}


def _status(r: ChildResult) -> str:
    if r.doc is not None:
        if r.doc.get("baseline_recorded") and r.doc.get("samples", 1) == 1:
            return f"baseline recorded, {r.doc['objects']:,} objects"
        return f"ok, paused {r.doc.get('paused_s', 0) * 1000:.0f} ms"
    assert r.error is not None
    if isinstance(r.error, errors.UnknownType) and r.error.msg.startswith("no live object"):
        return "no live object of the type"
    msg = f"FAILED: {r.error.msg}"
    return msg if len(msg) <= _ERROR_CELL_WIDTH else msg[: _ERROR_CELL_WIDTH - 3] + "..."


def render(
    name: str, args: argparse.Namespace, master: procs.Proc, results: list[ChildResult]
) -> str:
    what = f"{master.role} ({master.pool})" if master.pool else master.role
    lines = [
        f"{name} in each child of pid {master.pid}, a {what}; the master itself was not looked into"
    ]
    per_child = [_CELLS.get(name, _top_cells)(r.doc) if r.doc is not None else {} for r in results]
    weight: dict[str, float] = {}
    for cells in per_child:
        for label, (w, _) in cells.items():
            weight[label] = max(weight.get(label, 0), w)
    labels = sorted(weight, key=lambda lb: (-weight[lb], lb))
    limit = getattr(args, "limit", 0) or 0
    if limit > 0:
        labels = labels[:limit]
    rows: list[list[str]] = [["status", *(_status(r) for r in results)]]
    rows += [
        [label, *(cells[label][1] if label in cells else "-" for cells in per_child)]
        for label in labels
    ]
    headers = [_FIRST_COLUMN.get(name, ""), *(f"pid {r.pid}" for r in results)]
    lines += ["", table(headers, rows)]
    if name == "growth" and any(r.doc and r.doc.get("baseline_recorded") for r in results):
        lines += [
            "",
            f"Run `introspect growth {master.pid} --children` again later to see what grew since "
            "the baseline.",
        ]
    failed = [r for r in results if r.error is not None]
    if failed:
        lines.append("")
        lines += [f"pid {r.pid}: {r.error}" for r in failed]
    if labels:
        lines += [
            "",
            "'-' means not among that child's rows (below its --limit, or unchanged). Each "
            f"child's own {name}.txt and {name}.json are in child-PID/ of the output directory.",
        ]
    return "\n".join(lines)
