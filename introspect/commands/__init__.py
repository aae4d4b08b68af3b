"""One module per subcommand. Each exposes a ``Command`` class: its docstring is its help,
``prepare_parser(parser)`` adds its options, ``run(args) -> int`` does the work."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Protocol, cast

from introspect.inject import METHODS
from introspect.render.output import OutputDir
from introspect.runner import Outcome


class Command(Protocol):
    name: str

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def add_output_options(parser: argparse.ArgumentParser, *, files_by_default: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    group.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="write result files into DIR (default: a new introspect-<cmd>-<pid>-<time>/)"
        if files_by_default
        else "also write the result files into DIR (default: none are written)",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="say what happens on stderr")


def pid_or_file(text: str) -> int | str:
    """A command's target: a pid (digits) or a dump file's path. A bare word that is no file here
    (no directory, no suffix) is a mistyped pid: a usage error (exit 2), not a file error.

    >>> pid_or_file("4822"), pid_or_file("heap.pydump")
    (4822, 'heap.pydump')
    """
    if text.isdigit():
        return int(text)
    if not os.path.lexists(text) and os.sep not in text and "." not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a pid nor a file (a dump written by `introspect dump`)"
        )
    return text


def add_target_options(parser: argparse.ArgumentParser, *, files: bool = False) -> None:
    if files:  # a dump file where a pid goes (docs/dumps.md)
        parser.add_argument(
            "pid", type=pid_or_file, metavar="PID|FILE",
            help="process id of the live Python process, or a file written by `introspect dump`",
        )
    else:
        parser.add_argument("pid", type=int, help="process id of the live Python process")
    group = parser.add_argument_group("injection")
    group.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="how to get inside: pep768 (3.14+, stops nothing), ptrace (ours, 3.8+ on x86_64: one "
             "thread stopped for under a millisecond) or gdb (3.8+, every thread stopped for tens "
             "of milliseconds); default: auto (pep768 on 3.14+, else ptrace)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up (and void the request) after S seconds waiting for the target to take it "
             "(default: 30); a forked snapshot's walk and analysis then get a budget that scales "
             "with the heap (docs/snapshots.md)",
    )
    add_output_options(parser)


def add_collector_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("collection").add_mutually_exclusive_group()
    group.add_argument(
        "--fork",
        dest="collector",
        action="store_const",
        const="fork",
        help="take a forked snapshot even without the usual memory headroom (the default when "
             "there is headroom: the target pauses only for a fork, a copy walks every object, "
             "tracked or not; never for a process with gRPC loaded, whose fork handlers would run "
             "in it)",
    )
    group.add_argument(
        "--in-process", dest="collector", action="store_const", const="in-process",
        help="count inside the target instead (gc-tracked objects, within --budget; the old way)",
    )
    parser.set_defaults(collector="auto")


def collector_line(col: dict[str, Any]) -> str:
    if col["path"] == "fork":
        return (
            f"forked snapshot: the fork paused the target {col['fork_pause_s'] * 1000:.1f} ms; its "
            f"copy walked {col['objects']:,} objects in {col['walk_s']:.2f} s"
            + (f"\nPARTIAL: {col['partial']}" if col.get("partial") else "")
        )
    if col["path"] == "dump":
        return (
            f"dump {col['file']}: {col['objects']:,} objects, walked in {col['walk_s']:.2f} s "
            "by a forked copy"
        )
    return f"in-process count ({col['why']})"


def logger(args: argparse.Namespace) -> Any:
    verbose = getattr(args, "verbose", False)

    def log(msg: str) -> None:
        if verbose:
            print(f"introspect: {msg}", file=sys.stderr, flush=True)

    return log


def emit(args: argparse.Namespace, out: OutputDir | None, doc: dict[str, Any], text: str) -> None:
    """Write ``<cmd>.json`` and ``<cmd>.txt`` (unless ``out`` is None); print text or JSON on
    stdout, the path on stderr."""
    json_path = None
    if out is not None:
        json_path = out.write_json(f"{out.command}.json", doc)
        out.write_text(f"{out.command}.txt", text + "\n")
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    if json_path is not None:
        print(f"introspect: results written to {json_path.parent}/", file=sys.stderr)


def header(outcome: Outcome) -> str:
    m = outcome.meta()
    if m["method"] == "dump":
        return f"dump {m['file']} of pid {m['pid']} ({m['name']}), Python {m['python']}"
    return (
        f"pid {m['pid']} ({m['name']}), Python {m['python']}, via {m['method']}; "
        f"target paused {m['paused_s'] * 1000:.1f} ms"
    )


# Command name -> its module, in the order of `introspect --help`. A run imports only its own
# command's module (and what that imports): the others cost 0.06 s more per run (graphviz, the
# report's modules...), and the test suite runs the CLI some 1,500 times.
MODULES = {"ps": "ps", "top": "top", "growth": "growth", "backrefs": "backrefs",
           "memory": "memory", "monitor": "monitor", "report": "report", "trace": "trace",
           "exec": "exec_", "dump": "dump", "export": "export"}


def one_command(name: str) -> Command:
    """The command called ``name`` (a key of MODULES), importing its module only."""
    module = importlib.import_module(f"introspect.commands.{MODULES[name]}")
    return cast(Command, module.Command())


def all_commands() -> list[Command]:
    from introspect.commands import (
        backrefs,
        dump,
        exec_,
        export,
        growth,
        memory,
        monitor,
        ps,
        report,
        top,
        trace,
    )

    return [ps.Command(), top.Command(), growth.Command(), backrefs.Command(), memory.Command(),
            monitor.Command(), report.Command(), trace.Command(), exec_.Command(), dump.Command(),
            export.Command()]
