"""Convert a dump to another tool's format: Chrome DevTools' heap snapshot (.heapsnapshot).

Open the result in Chrome or Edge (DevTools > Memory > Load profile...) or in VS Code (open the
file): Summary lists objects by type, Containment walks from the roots, Retainers shows who keeps
an object alive, Comparison sets two exports of one process side by side (docs/dumps.md).
Nothing of the target is touched: only the files are read.

With --since OLD (an earlier dump of the same process), objects whose path id is in OLD keep the
id they have in OLD's export and the others, new since OLD, are numbered above its highest id, as
V8 numbers new objects: load OLD's export, then this one, and DevTools' Summary filter "Objects
allocated between OLD and NEW" lists exactly the new objects. For a line of dumps, name every
earlier one, oldest first (their exports made the same way).

Examples:
  introspect export worker.pydump --format heapsnapshot -o worker.heapsnapshot
  introspect export worker-0300.pydump                                     # plain, the first
  introspect export worker-0400.pydump --since worker-0300.pydump          # then each later one
  introspect export worker-0500.pydump --since worker-0300.pydump --since worker-0400.pydump
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

from introspect import errors
from introspect.commands import logger


class Command:
    name = "export"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "file", metavar="FILE", help="a file written by `introspect dump` (or --keep)"
        )
        parser.add_argument(
            "--format",
            choices=("heapsnapshot",),
            default="heapsnapshot",
            help="heapsnapshot: Chrome DevTools' heap snapshot (the default and only one)",
        )
        parser.add_argument(
            "-o",
            "--output",
            metavar="OUT",
            help="the file to write (default: FILE with .heapsnapshot; never overwritten)",
        )
        parser.add_argument(
            "--since",
            metavar="OLD",
            action="append",
            default=[],
            help="an earlier dump of the same process whose export is loaded before this one: "
            "objects new since then get ids above its export's, for DevTools' 'Objects "
            "allocated between' (repeat it for every earlier dump of a line, oldest first)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        parser.add_argument(
            "-v", "--verbose", action="store_true", help="say what happens on stderr"
        )

    def run(self, args: argparse.Namespace) -> int:
        from introspect.snapshot import dumpfile, dumpformat, heapsnapshot

        log = logger(args)
        base = (
            args.file[: -len(dumpformat.SUFFIX)]
            if args.file.endswith(dumpformat.SUFFIX)
            else args.file
        )
        out = args.output or base + ".heapsnapshot"
        if os.path.lexists(out):
            raise errors.OutputError(
                f"{out} exists: export never overwrites a file",
                help="Choose another name with -o OUT, or remove the old one.",
            )
        t0 = time.monotonic()
        dump = dumpfile.load(args.file)
        log(f"read {args.file}: {dump.snap.n:,} objects in {time.monotonic() - t0:.2f} s")
        line, since = self._line(args, dump, log)
        try:
            got = heapsnapshot.export(dump, out, line)
        except OSError as exc:
            raise errors.OutputError(
                f"cannot write {out}: {exc.strerror or exc}",
                help="Choose a writable place with -o OUT.",
            ) from None
        doc = {
            "file": args.file,
            "format": args.format,
            "pid": dump.facts.get("pid"),
            **got,
            "since": since,
            "output": out,
            "export_s": round(time.monotonic() - t0, 3),
        }
        if args.json:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            sys.stdout.write(
                f"{args.file} (pid {doc['pid']}) exported to {out}: {got['nodes']:,} nodes, "
                f"{got['edges']:,} edges, {got['bytes']:,} bytes in {doc['export_s']:.2f} s\n"
            )
            if since:
                ids = got["ids"]
                span = (
                    f"ids {ids['new_from']:,} to {ids['new_to']:,}" if ids["new"] else "no ids"
                )
                sys.stdout.write(
                    f"  since {since[-1]}: {ids['kept']:,} objects keep their ids, "
                    f"{ids['new']:,} are new ({span}): load {since[-1]}'s export first, then "
                    "this one; Summary's 'Objects allocated between' lists the new ones\n"
                )
        return 0

    @staticmethod
    def _line(
        args: argparse.Namespace, dump: Any, log: Callable[[str], None]
    ) -> tuple[Any, list[str]]:
        """The ids the exports of the --since dumps gave (oldest first), or None."""
        from introspect.snapshot import dumpfile, heapsnapshot

        if not args.since:
            return None, []
        me = os.path.realpath(args.file)
        if len({os.path.realpath(f) for f in args.since} | {me}) != len(args.since) + 1:
            raise errors.UsageError(
                "--since names the exported file itself, or one file twice",
                help="Give each earlier dump once after --since, and the later dump as FILE.",
            )
        fn = dump.facts
        line = None
        last = (float("-inf"), "")
        for f in [*args.since, args.file]:
            t0 = time.monotonic()
            old = dump if f == args.file else dumpfile.load(f)
            fo = old.facts
            when = float(fo.get("time", 0))
            if when <= last[0]:
                raise errors.UsageError(
                    f"{last[1]} was dumped after {f} (or at the same time): --since takes the "
                    "earlier dumps of a line, oldest first, and FILE is the latest",
                    help="Name the dumps in the order they were taken.",
                )
            last = (when, f)
            if f == args.file:
                break
            if dumpfile.other_process(fo, fn):
                print(
                    f"introspect: {f} and {args.file} are dumps of different processes (pid "
                    f"{fo.get('pid')} and {fn.get('pid')}): ids are matched by path anyway, "
                    "and 'allocated between' lists what the other does not reach the same way",
                    file=sys.stderr,
                )
            line = heapsnapshot.lineage(old, line)
            del old
            log(f"ids of {f}'s export: up to {line.top:,} ({time.monotonic() - t0:.2f} s)")
        return line, list(args.since)
