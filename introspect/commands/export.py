"""Convert a dump to another tool's format: Chrome DevTools' heap snapshot (.heapsnapshot).

Open the result in Chrome or Edge (DevTools > Memory > Load profile...) or in VS Code (open the
file): Summary lists objects by type, Containment walks from the roots, Retainers shows who keeps
an object alive, Comparison sets two exports of one process side by side (docs/dumps.md).
Nothing of the target is touched: only the file is read.

Examples:
  introspect export worker.pydump --format heapsnapshot -o worker.heapsnapshot
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

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
        try:
            got = heapsnapshot.export(dump, out)
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
        return 0
