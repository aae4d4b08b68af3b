"""Where this process's memory is: Python objects, allocator free space, native, stacks, the rest.

RSS and USS are read from /proc before anything else. Then the target forks once (its only pause)
and everything else is read in the frozen copy: the shallow size of every Python object (as
`top --by size`), pymalloc's arenas (sys._debugmallocstats), the C allocator (which one, and for
glibc mallinfo2 and what malloc_trim would give back, measured by trimming the copy; jemalloc's
own statistics); the threads' stacks come from /proc. The parts add up to the USS; the verdict names
the biggest cause and the next step: python-objects, pymalloc-fragmentation,
malloc-fragmentation, native or mixed. See docs/memory.md for what each figure means.

Without memory headroom for the fork (or with --in-process, or gRPC loaded) only what is safe in
the target is read: /proc's figures and the Python objects' sizes (within --budget); the
allocators' figures stay null, and the output says why.

On a dump file (`introspect memory FILE`): the breakdown read when `introspect dump` took it,
with the same output and JSON (docs/dumps.md).

Examples:
  introspect memory 1234
  introspect memory 1234 --json
  introspect memory worker.pydump
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from introspect import breakdown, errors
from introspect.commands import (
    add_collector_options,
    add_target_options,
    collector_line,
    emit,
    header,
    logger,
)
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes
from introspect.runner import Outcome, run_agent
from introspect.snapshot import collect, state
from introspect.target import inspect_target

if TYPE_CHECKING:
    from introspect.snapshot.collect import Walker
    from introspect.snapshot.records import Snapshot


def read_before_fork(pid: int) -> breakdown.ProcMemory:
    inspect_target(pid)  # plain errors (no such process, zombie, not Python...) first
    try:
        return breakdown.read_proc(pid)
    except OSError as exc:
        raise errors.AccessDenied(
            f"cannot read /proc/{pid}/smaps: {exc.strerror}",
            pid=pid,
            help="Run introspect as the target's user (or root).",
        ) from None


def analyse_snapshot(snap: Snapshot, walker: Walker) -> dict[str, Any]:
    """In the CLI, over the copy's records: the Python objects' bytes, their share outside pymalloc,
    and the allocator's figures the walker read before walking."""
    copy = walker.memory()
    size = snap.size
    total = int(size.sum())
    # Without pymalloc (PYTHONMALLOC=malloc) every object is malloc'ed; with it, those above its
    # small-request threshold are (a list's or dict's own array counts with its owner: an estimate).
    in_malloc = int(size[size > breakdown.SMALL_REQUEST].sum()) if copy.get("pymalloc") else total
    return {"python_objects": total, "python_in_malloc": in_malloc, "objects": snap.n, "copy": copy}


def in_process_sizes(pid: int, args: argparse.Namespace, log: Any) -> tuple[Outcome, int, bool]:
    """The fallback's Python objects: `top --by size`'s walk inside the target, within --budget."""
    params = {"collect": False, "sizes": True, "budget": args.budget}
    outcome = run_agent(pid, "top", params, method=args.method, timeout=args.timeout, log=log)
    res = outcome.result
    return outcome, sum(int(v[2]) for v in res["sizes"].values()), bool(res.get("partial"))


def measure(
    pid: int, args: argparse.Namespace, log: Any
) -> tuple[Outcome, dict[str, Any], dict[str, Any]]:
    """(outcome, the JSON document's memory facts, the collector block) for one look."""
    proc = read_before_fork(pid)
    outcome, got, col = collect.take(
        pid,
        args.collector,
        analyse_snapshot,
        method=args.method,
        timeout=args.timeout,
        log=log,
        memory=True,
    )
    missing: dict[str, str] = {}
    if outcome is not None and got is not None:
        return outcome, forked_facts(proc, got), col
    else:
        why = col["why"]
        outcome, py, partial = in_process_sizes(pid, args, log)
        missing["pymalloc"] = (
            f"no forked copy ({why}): sys._debugmallocstats writes to fd 2, never in the target"
        )
        missing["malloc"] = (
            f"no forked copy ({why}): mallinfo2 and malloc_trim are never called in the target"
        )
        missing["native"] = "needs malloc's in-use figure, read only in a forked copy"
        if partial:
            missing["python_objects"] = (
                f"the in-process walk stopped at its budget of {args.budget:g} s: "
                "the figure is a lower bound"
            )
        mem = breakdown.compose(proc, py, None, None, missing)
    stacks_how = missing.pop("stacks_found", "")
    facts = {
        "memory": mem,
        "missing": missing,
        "stacks_found": stacks_how,
        "threads": proc.threads,
    }
    return outcome, facts, col


def forked_facts(proc: breakdown.ProcMemory, got: dict[str, Any]) -> dict[str, Any]:
    """The JSON document's memory facts of a forked look: ``proc`` read before the fork, ``got``
    what analyse_snapshot found in the copy (also what a dump carries: dumpformat.memory_block)."""
    missing: dict[str, str] = {}
    mem = breakdown.compose(
        proc, got["python_objects"], got["python_in_malloc"], got["copy"], missing
    )
    return {
        "memory": mem,
        "missing": missing,
        "stacks_found": missing.pop("stacks_found", ""),
        "threads": proc.threads,
        "objects": got["objects"],
        "python_in_malloc": got["python_in_malloc"],
        "copy_s": round(float(got["copy"].get("seconds", 0.0)), 4),
    }


def dump_key(target: int | str) -> int | str:
    from introspect.snapshot import dumpfile

    return dumpfile.out_key(target)


def from_file(path: str, log: Any) -> tuple[Outcome, dict[str, Any], dict[str, Any]]:
    """(outcome, memory facts, collector block) from the breakdown a dump carries, read while it
    was taken (RSS/USS before its fork, the allocators in its copy); a plain error for a dump
    without one."""
    from introspect.snapshot import dumpfile

    outcome, block, col = dumpfile.take(path, lambda snap, w: w.dump.facts.get("memory"), log)
    if block is None:
        facts = cast("dumpfile.FileOutcome", outcome).dump.facts
        why = facts.get("memory_missing") or (
            f"it was written by introspect {facts.get('introspect', '(unknown)')}, "
            "before dumps carried the memory breakdown"
        )
        raise errors.UsageError(
            f"{path} carries no memory breakdown: {why}",
            help="`introspect memory PID` answers on the live process; a new "
            "`introspect dump PID` writes the breakdown into the dump.",
        )
    return outcome, {**block, "objects": col["objects"]}, col


class Command:
    name = "memory"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser, files=True)
        parser.add_argument(
            "--budget",
            type=float,
            default=5.0,
            metavar="S",
            help="in-process only: stop sizing Python objects after S seconds in the target "
            "(default: 5)",
        )
        add_collector_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        if args.budget <= 0:
            raise errors.UsageError("--budget must be > 0")
        log = logger(args)
        if isinstance(args.pid, str):
            outcome, facts, col = from_file(args.pid, log)
            pid = int(outcome.meta()["pid"])
        else:
            outcome, facts, col = measure(args.pid, args, log)
            pid = args.pid
        # after the look: no directory for a failed one
        out = OutputDir(self.name, dump_key(args.pid), args.output)
        doc: dict[str, Any] = {**outcome.meta(), "collector": col, **facts}
        lines = [header(outcome), collector_line(col)]
        lines += [
            with_pid(line, pid)
            for line in breakdown.lines(
                facts["memory"], {**facts["missing"], "stacks_found": facts["stacks_found"]}
            )
        ]
        if facts["missing"]:
            lines += ["", "not measured:"] + [f"  {k}: {v}" for k, v in facts["missing"].items()]
        emit(args, out, doc, "\n".join(lines))
        return 0


# ---------------------------------------------------------------------------------------------
# growth's share: the breakdown at every look and its change since the previous one


def change_since(
    pid: int, create_time: float, mem: dict[str, Any], now: float, *, kind: str, reset: bool = False
) -> dict[str, Any] | None:
    """The signed change since the previous look kept in the state directory (None at the first
    look), and this look kept for the next. ``kind``: "memory" (forked looks) or "memory-inproc"."""
    saved = None if reset else state.load(pid, create_time, kind)
    state.save(pid, create_time, {"time": now, "memory": mem}, kind)
    try:
        prev, then = saved["memory"], float(saved["time"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    if not isinstance(prev, dict) or "uss" not in prev:
        return None
    return breakdown.change(prev, mem, now - then)


def growth_lines(mem: dict[str, Any], ch: dict[str, Any] | None, pid: int) -> list[str]:
    """What leads growth's text: the change of the breakdown and its verdict (or, at the first
    look, the breakdown's verdict); Python objects not explaining the growth is said first."""
    if ch is None:
        return [
            f"memory: RSS {human_bytes(mem['rss'])}, USS {human_bytes(mem['uss'])}; "
            + with_pid(mem.get("advice") or "no verdict", pid)
        ]
    verdict = ch.get("verdict")
    if verdict in ("native", "malloc-fragmentation", "pymalloc-fragmentation", "mixed"):
        return [
            f"Python objects do not explain this growth ({verdict}): {ch['advice']}",
            f"  next: `introspect memory {pid}` for the whole breakdown and advice",
        ]
    if verdict == "python-objects":
        return [f"{ch['advice']} (see the types and holders below)"]
    return [ch.get("advice") or "memory: no change measured"]


def with_pid(text: str, pid: int) -> str:
    """The advice's commands with the target's pid in place of PID."""
    return text.replace(" PID", f" {pid}").replace("/proc/PID/", f"/proc/{pid}/")


def along(
    analyse: Callable[[Snapshot, Walker], dict[str, Any]],
) -> Callable[[Snapshot, Walker], dict[str, Any]]:
    """``analyse`` (another command's, over the same snapshot) plus this command's facts, under
    the key "memory_facts" (take them with ``compose_look``)."""

    def both(snap: Snapshot, walker: Walker) -> dict[str, Any]:
        got = analyse(snap, walker)
        got["memory_facts"] = analyse_snapshot(snap, walker)
        return got

    return both


def compose_look(
    proc: breakdown.ProcMemory, got: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """(memory, missing) of one look: ``got`` is ``along``'s facts, None for an in-process look."""
    missing: dict[str, str] = {}
    if got is None:
        mem = breakdown.compose(proc, None, None, None, missing)
        missing["python_objects"] = "an in-process look counts objects without sizing them all"
    else:
        mem = breakdown.compose(
            proc, got["python_objects"], got["python_in_malloc"], got["copy"], missing
        )
    missing.pop("stacks_found", None)
    return mem, missing
