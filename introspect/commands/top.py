"""Most common types in a live Python process: gc-tracked objects counted by type.

Example: introspect top 1234 --limit 20
"""

from __future__ import annotations

import argparse
from typing import Any

from introspect import analysis
from introspect.commands import add_target_options, emit, header, logger
from introspect.render.output import OutputDir
from introspect.render.text import table
from introspect.runner import run_agent


class Command:
    name = "top"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser)
        parser.add_argument("-n", "--limit", type=int, default=25, help="show the N most common types (default: 25; 0 = all)")
        parser.add_argument("--collect", action="store_true", help="run gc.collect() in the target first (off by default: it hides evidence and costs time)")

    def run(self, args: argparse.Namespace) -> int:
        out = OutputDir(self.name, args.pid, args.output)
        outcome = run_agent(args.pid, "top", {"collect": args.collect}, method=args.method, timeout=args.timeout, log=logger(args))
        rows = analysis.rank_types(outcome.result["types"], args.limit)
        doc: dict[str, Any] = {
            **outcome.meta(),
            "objects": outcome.result["objects"],
            "distinct_types": len(outcome.result["types"]),
            "gc": outcome.result["gc"],
            "scan_s": round(outcome.result["scan_s"], 6),
            "types": [{"type": r.type, "count": r.count} for r in rows],
        }
        text = "\n".join([
            header(outcome),
            f"{doc['objects']:,} gc-tracked objects of {doc['distinct_types']:,} types" + _frozen_note(doc["gc"]),
            "",
            table(["type", "count"], [(r.type, r.count) for r in rows]),
        ])
        emit(args, out, doc, text)
        return 0


def _frozen_note(gc: dict[str, Any]) -> str:
    frozen = gc.get("frozen", 0)
    return f" ({frozen:,} more frozen by gc.freeze() are not counted)" if frozen else ""
