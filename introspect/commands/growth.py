"""What grew since the last look: per type, the count and its signed change.

The first call records a baseline inside the target (in one small module holding only names and
counts); each later call shows the change since the previous call and since the baseline.
Unlike objgraph's show_growth, types that shrink are shown too, and nothing forces gc.collect()
unless --collect is given.

Examples:
  introspect growth 1234                       # baseline, then run again later
  introspect growth 1234 --interval 10 --samples 6   # six looks, 10 s apart, in one command
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from introspect import analysis
from introspect.commands import add_target_options, emit, fanout, header, logger
from introspect.render.output import OutputDir
from introspect.render.text import signed, table
from introspect.runner import Outcome, run_agent


class Command:
    name = "growth"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser)
        fanout.add_children_option(parser)
        parser.add_argument("-n", "--limit", type=int, default=25, help="show the N types that changed most (default: 25; 0 = all)")
        parser.add_argument("--reset", action="store_true", help="forget the baseline and record a new one")
        parser.add_argument("--collect", action="store_true", help="run gc.collect() in the target before counting (off by default)")
        parser.add_argument("--interval", type=float, default=0.0, metavar="S", help="seconds between samples (with --samples)")
        parser.add_argument("--samples", type=int, default=1, metavar="N", help="take N looks --interval seconds apart and flag steady growers")

    def run(self, args: argparse.Namespace) -> int:
        if args.samples < 1 or (args.samples > 1 and args.interval <= 0):
            from introspect.errors import UsageError

            raise UsageError("--samples N needs N >= 1, and --interval S > 0 when N > 1")
        if (code := fanout.divert(self, args)) is not None:
            return code
        out = OutputDir(self.name, args.pid, args.output)
        log = logger(args)
        looks: list[Outcome] = []
        for i in range(args.samples):
            if i:
                if sys.stderr.isatty() and not args.json:
                    print(f"introspect: next look in {args.interval:g} s ({i + 1}/{args.samples})", file=sys.stderr)
                time.sleep(args.interval)
            looks.append(run_agent(args.pid, "growth", {"reset": args.reset and i == 0, "collect": args.collect},
                                   method=args.method, timeout=args.timeout, log=log))
        last = looks[-1]
        res = last.result
        rows = analysis.growth_rows(res["types"], args.limit)
        steady = analysis.steady_growers([lk.result["types"] for lk in looks[1:]]) if len(looks) > 1 else []
        doc: dict[str, Any] = {
            **last.meta(),
            "paused_s": round(sum(lk.paused_s for lk in looks), 6),
            "objects": res["objects"],
            "baseline_recorded": res["baseline_recorded"],
            "since_previous_s": round(res["now"] - res["previous_time"], 3),
            "since_baseline_s": round(res["now"] - res["baseline_time"], 3),
            "samples": len(looks),
            "interval_s": args.interval,
            "grew_every_interval": steady,
            "gc": res["gc"],
            "types": [{"type": r.type, "count": r.count, "delta": r.delta, "since_baseline": r.since_baseline} for r in rows],
        }
        emit(args, out, doc, render(last, doc, rows, steady))
        return 0


def render(outcome: Outcome, doc: dict[str, Any], rows: list[analysis.GrowthRow], steady: list[str]) -> str:
    lines = [header(outcome)]
    if doc["baseline_recorded"] and doc["samples"] == 1:
        lines.append(f"baseline recorded: {doc['objects']:,} objects. Run `introspect growth {doc['pid']}` again later to see what grew.")
        return "\n".join(lines)
    lines.append(f"{doc['objects']:,} objects; change over the last {doc['since_previous_s']:g} s "
                 f"and since the baseline {doc['since_baseline_s']:g} s ago")
    if steady:
        lines.append(f"grew in every one of {doc['samples'] - 1} intervals: {', '.join(steady)}")
    changed = [r for r in rows if r.delta or r.since_baseline]
    if not changed:
        lines.append("no type changed.")
        return "\n".join(lines)
    lines.append("")
    lines.append(table(["type", "count", "change", "since baseline"],
                       [(r.type, r.count, signed(r.delta), signed(r.since_baseline)) for r in changed]))
    return "\n".join(lines)
