"""Write a live process's heap to one file: every object, reference, label and root, no values.

The target forks once (a pause of milliseconds, as for a forked `top`); its frozen copy walks every
object and answers, while it exists, everything the analysis will ask: each reference's label
(`['key']`, `[3]`, `.attr`), the names of modules, classes and functions, closures' free variable
names, container sizes; and the memory breakdown as `introspect memory` reads it (RSS/USS before
the fork, the allocators in the copy). The file is compressed, mode 0600 (dict keys and attribute
names can be data; --no-keys writes each key's type instead of its text), and no object's value
is ever written. Analyse it anywhere, after the process is gone: `top FILE`, `backrefs FILE TYPE`,
`memory FILE`, `growth OLD NEW`, `report FILE [FILE2]`, `export FILE` (docs/dumps.md).

Examples:
  introspect dump 1234 -o worker.pydump
  introspect top worker.pydump --by retained
  introspect growth yesterday.pydump today.pydump
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from introspect import errors
from introspect.commands import add_collector_options, emit, header, logger
from introspect.render.text import human_bytes
from introspect.snapshot import collect

if TYPE_CHECKING:
    from introspect.breakdown import ProcMemory
    from introspect.snapshot.collect import Walker
    from introspect.snapshot.records import Snapshot

T = TypeVar("T")


class Command:
    name = "dump"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", type=int, help="process id of the live Python process")
        parser.add_argument(
            "-o",
            "--output",
            metavar="FILE",
            help="the dump file (default: introspect-<pid>-<time>.pydump; never overwritten)",
        )
        parser.add_argument(
            "--no-keys",
            action="store_true",
            help="write each dict key's type ([str], [int]) instead of its text",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        parser.add_argument(
            "-v", "--verbose", action="store_true", help="say what happens on stderr"
        )
        group = parser.add_argument_group("injection")
        from introspect.inject import METHODS

        group.add_argument(
            "--method", choices=METHODS, default="auto", help="how to get inside (as for top)"
        )
        group.add_argument(
            "--timeout",
            type=float,
            default=300.0,
            metavar="S",
            help="give up after S seconds, the walk and the writing included (default: 300)",
        )
        add_collector_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        log = logger(args)
        path = args.output or f"introspect-{args.pid}-{time.strftime('%Y%m%d-%H%M%S')}.pydump"
        check_writable(path)
        doc = take(
            args.pid,
            path,
            no_keys=args.no_keys,
            collector=args.collector,
            method=args.method,
            timeout=args.timeout,
            log=log,
        )
        emit(args, None, doc, doc.pop("_text"))
        return 0


def check_writable(path: str) -> None:
    """Refuse before touching the target: an existing file, or a directory we cannot write."""
    if os.path.lexists(path):
        raise errors.OutputError(
            f"{path} exists: a dump never overwrites a file",
            help="Choose another name with -o FILE, or remove the old one.",
        )
    d = os.path.dirname(os.path.abspath(path))
    if not os.access(d, os.W_OK | os.X_OK):
        raise errors.OutputError(
            f"cannot write the dump into {d}",
            help="Choose a writable place with -o FILE (nothing was done to the target).",
        )


def take(
    pid: int,
    path: str,
    *,
    no_keys: bool = False,
    collector: str = "auto",
    method: str = "auto",
    timeout: float = 300.0,
    log: Any = lambda s: None,
) -> dict[str, Any]:
    """Fork ``pid`` and write its heap to ``path``; the JSON document of the dump (plus "_text")."""
    from introspect.commands import memory as memory_cmd
    from introspect.snapshot import dumpwrite

    if collector == "in-process":
        raise errors.UsageError("a dump needs a forked snapshot; --in-process cannot write one")
    proc = memory_cmd.read_before_fork(pid)  # RSS/USS before the fork (then all is shared)
    facts = {**base_facts(pid), "rss": proc.rss, "uss": proc.uss}

    # The records go to the file as they stream (dumpwrite.DumpFile.read): the CLI keeps only
    # what the walker's questions need (types and references), never the whole snapshot.
    out = dumpwrite.DumpFile(path)

    def analyse(snap: Snapshot, walker: Walker) -> dict[str, Any]:
        from introspect.snapshot.records import FormatError

        _fill(facts, snap)
        try:
            copy = walker.memory()  # as memory_cmd.analyse_snapshot, from the streamed sums
        except FormatError as exc:  # the copy's answer out of shape: the heap is still dumped
            facts["memory_missing"] = f"the copy's memory answer was refused ({exc})"[:4096]
            log(f"dump: no memory breakdown: {exc}")
        else:
            found = {
                "python_objects": out.size_total,
                "python_in_malloc": out.size_over if copy.get("pymalloc") else out.size_total,
                "objects": snap.n,
                "copy": copy,
            }
            _memory(facts, proc, found)
        out.answers(snap, walker, facts, no_keys, log)
        return out.commit()

    try:
        outcome, got, col = collect.take(
            pid,
            collector,
            analyse,
            method=method,
            timeout=timeout,
            log=log,
            memory=True,
            read=out.read,
        )
    except BaseException:
        out.abort()
        raise
    if got is None:
        out.abort()
    if outcome is None or got is None:
        raise errors.UsageError(
            f"a dump needs a forked snapshot, and it was not taken: {col['why']}",
            help="Free some memory (or raise the cgroup's limit) and try again, or force it "
            "with --fork.",
        )
    doc: dict[str, Any] = {**outcome.meta(), "collector": col, **got, "no_keys": no_keys}
    doc["_text"] = "\n".join(
        [
            header(outcome),
            f"dump written to {path}: {got['objects']:,} objects, "
            f"{got['references']:,} references, {human_bytes(got['bytes'])} "
            f"({got['bytes'] / max(1, got['objects']):.1f} bytes per object), "
            f"written in {got['write_s']:.2f} s"
            + ("; dict keys written as their types" if no_keys else ""),
        ]
    )
    return doc


def add_keep_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep",
        metavar="FILE",
        help="also write the forked snapshot that answered to FILE, as `introspect dump` does "
        "(forked snapshot only; never overwrites a file)",
    )


def check_keep(args: argparse.Namespace) -> None:
    """--keep FILE names one file: refused with --children (one snapshot per child)."""
    if getattr(args, "keep", None) and getattr(args, "children", False):
        raise errors.UsageError(
            "--keep FILE keeps one snapshot; with --children each child has its own",
            help="Run the command on one child's pid with --keep.",
        )


def base_facts(pid: int) -> dict[str, Any]:
    """What a dump says of its process, read by the CLI from /proc before the fork."""
    from introspect import __version__
    from introspect.snapshot import dumpwrite

    facts: dict[str, Any] = {
        "pid": pid,
        "start_ticks": collect._start_ticks(pid),
        **dumpwrite.process_facts(pid),
        "time": time.time(),
        "introspect": str(__version__),
    }
    try:
        with open(f"/proc/{pid}/comm") as f:
            facts["name"] = f.read().strip()[:256]
    except OSError:
        pass
    return facts


def keeping(
    args: argparse.Namespace,
    analyse: Callable[[Snapshot, Walker], T],
    log: Callable[[str], None],
    proc: ProcMemory | None = None,
) -> Callable[[Snapshot, Walker], T]:
    """``analyse``, writing the snapshot to ``args.keep`` first when it is given (--keep FILE).
    With ``proc`` (RSS/USS read before the fork, by a command that asked the walker for the
    allocators: report's looks) the file carries the memory breakdown, as a dump's does."""
    path = getattr(args, "keep", None)
    if not path or isinstance(args.pid, str):
        return analyse
    check_writable(path)
    facts = base_facts(args.pid)
    if proc is None:
        facts["memory_missing"] = (
            "it was kept by a live command (--keep), which does not read the allocators; "
            "`introspect dump PID` writes the breakdown"
        )

    def wrapped(snap: Snapshot, walker: Walker) -> T:
        from introspect.commands import memory as memory_cmd
        from introspect.snapshot import dumpwrite

        _fill(facts, snap)
        if proc is not None:
            _memory(facts, proc, memory_cmd.analyse_snapshot(snap, walker))
        got = dumpwrite.write(path, snap, walker, facts, False, log)
        log(f"kept the snapshot in {path} ({got['bytes']:,} bytes)")
        return analyse(snap, walker)

    return wrapped


def _memory(facts: dict[str, Any], proc: ProcMemory, found: dict[str, Any]) -> None:
    """The memory breakdown into a dump's facts (``found``: memory.analyse_snapshot's figures)."""
    from introspect.commands import memory as memory_cmd
    from introspect.snapshot import dumpformat

    got = memory_cmd.forked_facts(proc, found)
    facts["memory"] = dumpformat.memory_block(
        got["memory"],
        got["missing"],
        got["stacks_found"],
        got["threads"],
        got["python_in_malloc"],
        got["copy_s"],
    )


def _fill(facts: dict[str, Any], snap: Snapshot) -> None:
    python = snap.meta.get("python")
    if isinstance(python, str):
        facts["python"] = python
    facts["walk_s"] = float(snap.end.get("walk_s", 0.0))


def keep_missed(args: argparse.Namespace, why: str) -> None:
    """Say on stderr that --keep wrote nothing (no forked snapshot was taken)."""
    if getattr(args, "keep", None):
        import sys

        print(
            f"introspect: --keep: nothing written to {args.keep}: "
            f"no forked snapshot was taken ({why})",
            file=sys.stderr,
        )
