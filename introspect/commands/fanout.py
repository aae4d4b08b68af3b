"""``--children``: run top, growth or backrefs on every worker process of a master, side by side.

With Celery's prefork pool (and gunicorn, uWSGI) the leak lives in the worker processes, not in
the master an engineer usually finds first. Pointed at such a master without ``--children``, a
command says so in one line on stderr and carries on with the master itself. With ``--children``
it runs once per Python child process of PID, one after another (one target paused at a time),
each writing its usual files into ``DIR/child-<pid>/``; the combined document has one entry per
child and the master itself is not looked into. A child that fails (it exited because of
``--max-tasks-per-child``, say) gets its error in its column; the exit status is non-zero only
when every child failed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any, Protocol

from introspect import errors, procs
from introspect.commands import emit
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes, signed, table

# Failures that would be the same for every child: raised at once instead of collected.
_SAME_FOR_ALL = (errors.UsageError, errors.OutputError)
_ERROR_CELL_WIDTH = 28


class _Runnable(Protocol):
    name: str

    def run(self, args: argparse.Namespace) -> int: ...


def add_children_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--children", action="store_true",
                        help="PID is a master (Celery prefork, gunicorn, uWSGI): run on each of its Python child "
                             "processes instead and show them side by side")


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
    if master is None or master.role not in procs.MASTER_ROLES or not kids:
        return
    what = f"{master.role} ({master.pool})" if master.pool else master.role
    pids = ", ".join(str(k.pid) for k in kids)
    print(f"introspect: note: pid {pid} is a {what}; its workers are the processes that run your code and "
          f"hold the leak: {pids}. Add --children to look inside each of them.", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ChildResult:
    pid: int
    doc: dict[str, Any] | None
    error: errors.IntrospectError | None

    def as_doc(self) -> dict[str, Any]:
        if self.doc is not None:
            return {"pid": self.pid, "ok": True, **self.doc}
        assert self.error is not None
        return {"pid": self.pid, "ok": False,
                "error": {"type": type(self.error).__name__, "message": str(self.error),
                          "help": self.error.help or None, "exit_code": self.error.exit_code}}


def run_children(command: _Runnable, args: argparse.Namespace) -> int:
    master, kids = procs.workers_of(args.pid)
    if master is None:
        raise errors.NoSuchProcess("no such Python process", pid=args.pid)
    if not kids:
        raise errors.UsageError(
            f"--children: pid {args.pid} ({master.role}) has no Python child processes", pid=args.pid,
            help="Run without --children, or give the pid of a Celery prefork, gunicorn or uWSGI master "
                 "(`introspect ps` shows roles and children).")
    out = OutputDir(command.name, args.pid, args.output)
    results = [_run_one(command, args, kid.pid, out) for kid in kids]
    doc: dict[str, Any] = {
        "pid": master.pid, "role": master.role, "pool": master.pool, "command": command.name,
        "children": [r.as_doc() for r in results],
        "failed": sum(1 for r in results if r.error is not None),
    }
    for r in results:
        if r.error is not None:
            print(f"introspect: child {r.pid} failed: {r.error}", file=sys.stderr)
    emit(args, out, doc, render(command.name, args, master, results))
    failures = [r.error for r in results if r.error is not None]
    return failures[0].exit_code if len(failures) == len(results) else 0


def _run_one(command: _Runnable, args: argparse.Namespace, pid: int, out: OutputDir) -> ChildResult:
    child_args = argparse.Namespace(**vars(args))
    child_args.pid, child_args.children, child_args.json = pid, None, True
    child_args.output = str(out.path / f"child-{pid}")
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            command.run(child_args)
    except _SAME_FOR_ALL:
        raise
    except errors.IntrospectError as exc:
        return ChildResult(pid, None, exc)
    return ChildResult(pid, json.loads(buf.getvalue()), None)


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
    out: Cells = {"live objects": (float("inf"), f"{doc['found']:,}"), "traced": (float("inf"), f"{doc['sampled']:,}")}
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


_CELLS: dict[str, Callable[[dict[str, Any]], Cells]] = {"top": _top_cells, "growth": _growth_cells, "backrefs": _backrefs_cells}
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


def render(name: str, args: argparse.Namespace, master: procs.Proc, results: list[ChildResult]) -> str:
    what = f"{master.role} ({master.pool})" if master.pool else master.role
    lines = [f"{name} in each child of pid {master.pid}, a {what}; the master itself was not looked into"]
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
    rows += [[label, *(cells[label][1] if label in cells else "-" for cells in per_child)] for label in labels]
    headers = [_FIRST_COLUMN.get(name, ""), *(f"pid {r.pid}" for r in results)]
    lines += ["", table(headers, rows)]
    if name == "growth" and any(r.doc and r.doc.get("baseline_recorded") for r in results):
        lines += ["", f"Run `introspect growth {master.pid} --children` again later to see what grew since the baseline."]
    failed = [r for r in results if r.error is not None]
    if failed:
        lines.append("")
        lines += [f"pid {r.pid}: {r.error}" for r in failed]
    if labels:
        lines += ["", "'-' means not among that child's rows (below its --limit, or unchanged). Each child's own "
                      f"{name}.txt and {name}.json are in child-PID/ of the output directory."]
    return "\n".join(lines)
