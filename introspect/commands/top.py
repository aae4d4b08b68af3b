"""Most common types in a live Python process, every object counted: gc-tracked or not.

By default the target forks once (a pause of milliseconds) and its frozen copy walks every
object, including those the garbage collector does not track (str, bytes, int, float, dicts and
tuples of atomic values): each type's count, tracked/untracked split and shallow bytes (as
sys.getsizeof counts them). --by retained lists the holders that keep the most memory alive
(retained size: what would be freed if the holder went away, from the dominator tree).
Without memory headroom for the fork, or with --in-process, the count runs inside the target
(gc-tracked objects only; --by size reaches untracked ones as referents, within --budget).

Examples:
  introspect top 1234 --limit 20
  introspect top 1234 --by size
  introspect top 1234 --by retained          # leak suspects first, then the biggest holders
  introspect top 1234 --waste --values       # duplicate strings and bytes, empty containers
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from introspect import analysis, errors
from introspect.commands import (
    add_collector_options,
    add_target_options,
    collector_line,
    emit,
    fanout,
    header,
    logger,
)
from introspect.commands.dump import add_keep_option, check_keep, keep_missed, keeping
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes, table
from introspect.runner import Outcome, run_agent
from introspect.snapshot import collect, views

if TYPE_CHECKING:
    from introspect.snapshot.collect import Walker
    from introspect.snapshot.records import Snapshot


class Command:
    name = "top"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser, files=True)
        fanout.add_children_option(parser)
        parser.add_argument("-n", "--limit", type=int, default=25,
                            help="show the N most common types (default: 25; 0 = all)")
        parser.add_argument(
            "--collect",
            action="store_true",
            help="run gc.collect() in the target first (off by default: it hides evidence and "
                 "costs time)",
        )
        parser.add_argument(
            "--by",
            choices=("count", "size", "retained"),
            default="count",
            help="rank types by object count (default) or shallow bytes, or list the holders "
                 "retaining the most",
        )
        parser.add_argument(
            "--waste",
            action="store_true",
            help="duplicate str/bytes values (what one copy each would save, who holds the copies) "
                 "and empty containers (forked snapshot only)",
        )
        parser.add_argument(
            "--values",
            action="store_true",
            help="with --by retained or --waste: show a few values, made in the frozen copy "
                 "(builtin types only; a user object is named by its type, its __repr__ never "
                 "runs)",
        )
        parser.add_argument(
            "--budget",
            type=float,
            default=10.0,
            metavar="S",
            help="in-process --by size: stop the walk after S seconds in the target and report "
                 "what was seen (default: 10)",
        )
        add_collector_options(parser)
        add_keep_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        check_keep(args)
        from introspect.snapshot import dumpfile

        on_file = isinstance(args.pid, str)
        if not on_file and (code := fanout.divert(self, args)) is not None:
            return code
        out = OutputDir(self.name, dumpfile.out_key(args.pid), args.output)
        if args.budget <= 0:
            raise errors.UsageError("--budget must be > 0")
        log = logger(args)
        limit = args.limit

        def analyse(snap: Snapshot, walker: Walker) -> dict[str, Any]:
            # numpy and igraph: only when a snapshot is analysed
            from introspect.snapshot import heap

            rows = heap.type_rows(snap)
            doc: dict[str, Any] = {"objects": snap.n,
                                   "untracked_objects": int((~snap.tracked).sum()),
                                   "partial": False, "bytes": int(snap.size.sum()),
                                   "distinct_types": len(rows), "gc": snap.meta.get("gc", {})}
            doc["gc"] = analysis.gc_doc(snap.meta.get("gc", {}), str(snap.meta.get("python", "")))
            if args.by == "retained":
                from introspect.snapshot import suspects

                h = heap.analyse(snap)
                doc["garbage"] = heap.garbage(snap, h.reachable)
                doc["suspects"] = suspects.suspects(
                    h, walker.labels, count=walker.counts,
                    preview=walker.previews if args.values else None,
                )
                doc["holders"] = views.holder_docs(
                    heap.holders(
                        h, walker.labels, limit if limit > 0 else 10_000, count=walker.counts
                    ),
                    None,
                )
                by_type = heap.retained_by_type(h)
                doc["types"] = [
                    {"type": t, "retained_bytes": b, "count": rows[t].count}
                    for t, b in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))[
                        : limit if limit > 0 else None
                    ]
                ]
                doc["held_from_c"] = h.held_from_c
            else:
                doc["garbage"] = heap.garbage(snap, heap.reachable_of(snap))
                doc["types"] = views.type_docs(rows, args.by, limit)
            if args.waste:
                from introspect.snapshot import suspects

                wh = h if args.by == "retained" else heap.analyse(snap)
                doc["waste"] = suspects.waste(wh, walker.labels, walker.duplicates(8, 50),
                                              walker.previews if args.values else None)
            return doc

        if on_file:
            f_outcome, f_got, f_col = dumpfile.take(args.pid, analyse, log)
            doc, text = from_snapshot(f_outcome, f_got, f_col, args.by)
            emit(args, out, doc, text)
            return 0
        outcome, got, col = collect.take(args.pid, args.collector, keeping(args, analyse, log),
                                         method=args.method, timeout=args.timeout,
                                         collect=args.collect, log=log)
        if outcome is not None and got is not None:
            doc, text = from_snapshot(outcome, got, col, args.by)
        else:
            keep_missed(args, col["why"])
            if args.by == "retained" or args.waste:
                fix = (
                    "A process with gRPC loaded is never forked: use --by count or --by size "
                    "(counted in the process)."
                    if col["why"].startswith("gRPC")
                    else "Free some memory (or raise the cgroup's limit) and try again, or force "
                         "it with --fork."
                )
                what = "--by retained" if args.by == "retained" else "--waste"
                raise errors.UsageError(
                    f"{what} needs a forked snapshot, and it was not taken: {col['why']}", help=fix
                )
            params = {"collect": args.collect, "sizes": args.by == "size", "budget": args.budget}
            outcome = run_agent(
                args.pid, "top", params, method=args.method, timeout=args.timeout, log=log
            )
            doc, text = (
                by_size(outcome, args.limit) if args.by == "size" else by_count(outcome, args.limit)
            )
            doc["collector"] = col
            text = text.replace("\n", "\n" + collector_line(col) + "\n", 1)
        emit(args, out, doc, text)
        return 0


def from_snapshot(
    outcome: Outcome, got: dict[str, Any], col: dict[str, Any], by: str
) -> tuple[dict[str, Any], str]:
    doc: dict[str, Any] = {**outcome.meta(), "by": by, "collector": col, **got}
    lines = [
        header(outcome),
        collector_line(col),
        f"{human_bytes(got['bytes'])} in {got['objects']:,} objects ({got['untracked_objects']:,} "
        f"not tracked by gc), {got['distinct_types']:,} types; shallow sizes",
    ]
    if "garbage" in got:
        lines.append(analysis.garbage_line(got["garbage"], got.get("gc")))
    if by == "retained":
        from introspect.snapshot.suspects import suspect_lines

        lines[2:2] = suspect_lines(got["suspects"])
        lines += [
            "",
            "holders retaining the most (retained: what would be freed if the holder went away):",
        ]
        listed, folded = views.fold_anonymous(got["holders"])
        lines += ["  " + views.holder_line(h) for h in listed] or ["  (none above 1 KiB)"]
        lines += [f"  {folded}"] if folded else []
        lines += [
            "",
            table(
                ["type", "retained", "count"],
                [(t["type"], human_bytes(t["retained_bytes"]), t["count"]) for t in got["types"]],
            ),
        ]
    elif not got.get("waste"):
        lines += [
            "",
            table(
                ["type", "count", "untracked", "bytes", "avg"],
                [
                    (t["type"], t["count"], t["untracked"], human_bytes(t["bytes"]),
                     human_bytes(t["bytes"] / max(1, t["count"])))
                    for t in got["types"]
                ],
            ),
        ]
    if got.get("waste"):
        from introspect.snapshot.suspects import waste_lines

        lines += [""] + waste_lines(got["waste"])
    return doc, "\n".join(lines)


def by_count(outcome: Outcome, limit: int) -> tuple[dict[str, Any], str]:
    rows = analysis.rank_types(outcome.result["types"], limit)
    doc: dict[str, Any] = {**outcome.meta(), "by": "count", "objects": outcome.result["objects"],
                           "distinct_types": len(outcome.result["types"]),
                           "gc": outcome.result["gc"], "scan_s": round(outcome.result["scan_s"], 6),
                           "types": [{"type": r.type, "count": r.count} for r in rows]}
    text = "\n".join(
        [
            header(outcome),
            f"{doc['objects']:,} gc-tracked objects of {doc['distinct_types']:,} types"
            + _frozen_note(doc["gc"]),
            "",
            table(["type", "count"], [(r.type, r.count) for r in rows]),
        ]
    )
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
        "types": [
            {"type": r.type, "count": r.tracked + r.untracked, "tracked": r.tracked,
             "untracked": r.untracked, "bytes": r.bytes}
            for r in rows
        ],
    }
    lines = [
        header(outcome),
        f"{human_bytes(total)} in {res['objects']:,} gc-tracked objects and "
        f"{res['untracked_objects']:,} untracked ones they reference, {doc['distinct_types']:,} "
        "types (shallow sizes: a container's contents count under their own types)"
        + _frozen_note(doc["gc"]),
    ]
    if res["partial"]:
        lines.append(partial_note(res))
    if doc["opaque"]:
        n = sum(doc["opaque"].values())
        worst = ", ".join(
            f"{t} {c:,}" for t, c in sorted(doc["opaque"].items(), key=lambda kv: -kv[1])[:3]
        )
        lines.append(
            f"not walked: what {n:,} objects of {len(doc['opaque']):,} C types hold ({worst}...); "
            "their own size is counted. introspect never runs a C extension's traverse inside the "
            "target (CPython gh-122695)"
        )
    lines += [
        "",
        table(
            ["type", "bytes", "count", "untracked", "avg"],
            [
                (r.type, human_bytes(r.bytes), r.tracked + r.untracked, r.untracked,
                 human_bytes(r.bytes / max(1, r.tracked + r.untracked)))
                for r in rows
            ],
        ),
    ]
    return doc, "\n".join(lines)


def partial_note(res: dict[str, Any]) -> str:
    """Why the size walk stopped early, in the user's terms."""
    why = res.get("stopped") or "budget"
    walked, total = res.get("walked", 0), res.get("tracked_total", 0)
    done = (
        f"after counting {res.get('objects', 0):,} of {total:,} gc-tracked objects"
        if not walked
        else f"after walking what {walked:,} of {total:,} gc-tracked objects reference"
        if walked < total
        else f"after {res.get('levels', 0):,} levels of untracked containers below the {total:,} "
             "gc-tracked objects"
    )
    if why == "budget":
        return (
            f"PARTIAL: the agent was stopped by its budget of {res.get('budget', 0):g} s {done}; "
            "untracked objects are undercounted (raise --budget to see all)"
        )
    if why == "deadline":
        return (
            f"PARTIAL: the agent stopped {done} to answer before the request's deadline; raise "
            "--timeout above --budget"
        )
    if why == "memory":
        return (
            f"PARTIAL: the agent stopped {done}: its table of shared untracked objects reached its "
            "cap (the agent bounds its own memory inside the target)"
        )
    return f"PARTIAL: the agent stopped ({why}) {done}"


def _frozen_note(gc: dict[str, Any]) -> str:
    """Objects in the collector's permanent generation are invisible to gc.get_objects().

    The application need not have called gc.freeze(): 3.12.1 starts with 375 objects there.

    >>> _frozen_note({"frozen": 375})
    "; not counted: 375 objects in gc's permanent generation (put there by gc.freeze() or by the
    interpreter itself)"
    """
    frozen = gc.get("frozen", 0)
    return (
        (
            f"; not counted: {frozen:,} objects in gc's permanent generation "
            "(put there by gc.freeze() or by the interpreter itself)"
        )
        if frozen
        else ""
    )
