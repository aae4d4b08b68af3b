"""Most common types in a live Python process: gc-tracked objects counted by type.

With --by size, types are ranked by shallow bytes (as sys.getsizeof counts them), and the objects
the garbage collector does not track (str, bytes, int, float, atomic-only dicts and tuples) are
counted too, reached as referents of tracked ones; this walk costs several times a plain count.

Examples:
  introspect top 1234 --limit 20
  introspect top 1234 --by size
"""

from __future__ import annotations

import argparse
from typing import Any

from introspect import analysis, errors
from introspect.commands import add_target_options, emit, fanout, header, logger
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes, table
from introspect.runner import Outcome, run_agent


class Command:
    name = "top"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser)
        fanout.add_children_option(parser)
        parser.add_argument("-n", "--limit", type=int, default=25, help="show the N most common types (default: 25; 0 = all)")
        parser.add_argument("--collect", action="store_true", help="run gc.collect() in the target first (off by default: it hides evidence and costs time)")
        parser.add_argument("--by", choices=("count", "size"), default="count",
                            help="rank by object count (default) or by shallow bytes, untracked objects included")
        parser.add_argument("--budget", type=float, default=10.0, metavar="S",
                            help="with --by size: stop the walk after S seconds in the target and report what was seen (default: 10)")

    def run(self, args: argparse.Namespace) -> int:
        if (code := fanout.divert(self, args)) is not None:
            return code
        out = OutputDir(self.name, args.pid, args.output)
        if args.budget <= 0:
            raise errors.UsageError("--budget must be > 0")
        params = {"collect": args.collect, "sizes": args.by == "size", "budget": args.budget}
        outcome = run_agent(args.pid, "top", params, method=args.method, timeout=args.timeout, log=logger(args))
        doc, text = by_size(outcome, args.limit) if args.by == "size" else by_count(outcome, args.limit)
        emit(args, out, doc, text)
        return 0


def by_count(outcome: Outcome, limit: int) -> tuple[dict[str, Any], str]:
    rows = analysis.rank_types(outcome.result["types"], limit)
    doc: dict[str, Any] = {
        **outcome.meta(),
        "by": "count",
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
    return doc, text


def by_size(outcome: Outcome, limit: int) -> tuple[dict[str, Any], str]:
    res = outcome.result
    rows = analysis.rank_sizes(res["sizes"], limit)
    total = sum(v[2] for v in res["sizes"].values())
    doc: dict[str, Any] = {
        **outcome.meta(),
        "by": "size",
        "objects": res["objects"],
        "untracked_objects": res["untracked_objects"],
        "bytes": total,
        "partial": res["partial"],
        "stopped": res.get("stopped") or None,
        "walked": res.get("walked"),
        "levels": res.get("levels"),
        "tracked_total": res.get("tracked_total"),
        "budget": res.get("budget"),
        "opaque": res.get("opaque", {}),
        "distinct_types": len(res["sizes"]),
        "gc": res["gc"],
        "scan_s": round(res["scan_s"], 6),
        "types": [{"type": r.type, "count": r.tracked + r.untracked, "tracked": r.tracked, "untracked": r.untracked,
                   "bytes": r.bytes} for r in rows],
    }
    lines = [
        header(outcome),
        f"{human_bytes(total)} in {res['objects']:,} gc-tracked objects and {res['untracked_objects']:,} untracked ones "
        f"they reference, {doc['distinct_types']:,} types (shallow sizes: a container's contents count under their own types)"
        + _frozen_note(doc["gc"]),
    ]
    if res["partial"]:
        lines.append(partial_note(res))
    if doc["opaque"]:
        n = sum(doc["opaque"].values())
        worst = ", ".join(f"{t} {c:,}" for t, c in sorted(doc["opaque"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"not walked: what {n:,} objects of {len(doc['opaque']):,} C types hold ({worst}...); their own size is counted. "
                     "introspect never runs a C extension's traverse inside the target (CPython gh-122695)")
    lines += ["", table(["type", "bytes", "count", "untracked", "avg"],
                        [(r.type, human_bytes(r.bytes), r.tracked + r.untracked, r.untracked,
                          human_bytes(r.bytes / max(1, r.tracked + r.untracked))) for r in rows])]
    return doc, "\n".join(lines)


def partial_note(res: dict[str, Any]) -> str:
    """Why the size walk stopped early, in the user's terms."""
    why = res.get("stopped") or "budget"
    walked, total = res.get("walked", 0), res.get("tracked_total", 0)
    done = (f"after counting {res.get('objects', 0):,} of {total:,} gc-tracked objects" if not walked
            else f"after walking what {walked:,} of {total:,} gc-tracked objects reference" if walked < total
            else f"after {res.get('levels', 0):,} levels of untracked containers below the {total:,} gc-tracked objects")
    if why == "budget":
        return (f"PARTIAL: the agent was stopped by its budget of {res.get('budget', 0):g} s {done}; "
                "untracked objects are undercounted (raise --budget to see all)")
    if why == "deadline":
        return f"PARTIAL: the agent stopped {done} to answer before the request's deadline; raise --timeout above --budget"
    if why == "memory":
        return (f"PARTIAL: the agent stopped {done}: its table of shared untracked objects reached its cap "
                "(the agent bounds its own memory inside the target)")
    return f"PARTIAL: the agent stopped ({why}) {done}"


def _frozen_note(gc: dict[str, Any]) -> str:
    """Objects in the collector's permanent generation are invisible to gc.get_objects().

    The application need not have called gc.freeze(): 3.12.1 starts with 375 objects there.

    >>> _frozen_note({"frozen": 375})
    "; not counted: 375 objects in gc's permanent generation (put there by gc.freeze() or by the interpreter itself)"
    """
    frozen = gc.get("frozen", 0)
    return (f"; not counted: {frozen:,} objects in gc's permanent generation "
            "(put there by gc.freeze() or by the interpreter itself)") if frozen else ""
