"""What grew since the last look: per type, the count, the bytes, and their signed change; and the
holders whose retained memory grew (e.g. `module __main__ .store (list: +1,500 items, +1.6 MiB)`).

By default every object counts, tracked by the garbage collector or not (the target forks once; its
copy is walked, see `top`). The first call records a baseline, kept by introspect in your state
directory (keyed by pid and process start time), nothing in the target; each later call shows the
change since the previous call and since the baseline. Without memory headroom for the fork, or with
--in-process, the count runs inside the target (gc-tracked objects only, their baseline kept apart
from the forked one's, also by introspect). Unlike objgraph's show_growth, types that shrink are
shown too, and nothing forces gc.collect() unless --collect is given.

Examples:
  introspect growth 1234                       # baseline, then run again later
  introspect growth 1234 --interval 10 --samples 6   # six looks, 10 s apart, in one command
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from introspect import analysis, errors, tracing
from introspect.commands import (
    add_collector_options,
    add_target_options,
    collector_line,
    emit,
    fanout,
    header,
    logger,
)
from introspect.commands import memory as memory_cmd
from introspect.commands.dump import add_keep_option, check_keep, keep_missed, keeping
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes, signed, table
from introspect.runner import Outcome, run_agent
from introspect.snapshot import collect, state, views
from introspect.target import inspect_target

if TYPE_CHECKING:
    from introspect.snapshot.collect import Walker
    from introspect.snapshot.records import Snapshot


class Command:
    name = "growth"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser, files=True)
        parser.add_argument(
            "new",
            nargs="?",
            metavar="NEW",
            help="with a dump file OLD in place of PID: the later dump of the same process to "
                 "compare it with",
        )
        fanout.add_children_option(parser)
        parser.add_argument("-n", "--limit", type=int, default=25,
                            help="show the N types that changed most (default: 25; 0 = all)")
        parser.add_argument(
            "--reset", action="store_true", help="forget the baseline and record a new one"
        )
        parser.add_argument("--collect", action="store_true",
                            help="run gc.collect() in the target before counting (off by default)")
        parser.add_argument("--interval", type=float, default=0.0, metavar="S",
                            help="seconds between samples (with --samples)")
        parser.add_argument("--samples", type=int, default=1, metavar="N",
                            help="take N looks --interval seconds apart and flag steady growers")
        parser.add_argument(
            "--holders", type=int, default=5, metavar="N",
            help="holders listed, most grown first (default: 5; forked snapshot only)",
        )
        parser.add_argument(
            "--values",
            action="store_true",
            help="show a few values of each suspect's accumulation point, made in the frozen copy "
                 "(builtin types only; a user object is named by its type, its __repr__ never "
                 "runs)",
        )
        add_collector_options(parser)
        add_keep_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        check_keep(args)
        if args.samples < 1 or (args.samples > 1 and args.interval <= 0):
            from introspect.errors import UsageError

            raise UsageError("--samples N needs N >= 1, and --interval S > 0 when N > 1")
        if isinstance(args.pid, str) or args.new is not None:
            return on_files(args)
        if (code := fanout.divert(self, args)) is not None:
            return code
        out = OutputDir(self.name, args.pid, args.output)
        log = logger(args)
        col: dict[str, Any] = {"path": "in-process", "why": "--in-process given"}
        if args.collector != "in-process":
            done = forked(args, out, log, col)
            if done is not None:
                return done
        keep_missed(args, col["why"])
        looks: list[Outcome] = []
        for i in range(args.samples):
            if i:
                if sys.stderr.isatty() and not args.json:
                    print(f"introspect: next look in {args.interval:g} s ({i + 1}/{args.samples})",
                          file=sys.stderr)
                time.sleep(args.interval)
            looks.append(
                look_in_process(args.pid, reset=args.reset and i == 0, collect=args.collect,
                                method=args.method, timeout=args.timeout, log=log)
            )
        last = looks[-1]
        res = last.result
        rows = analysis.growth_rows(res["types"], args.limit)
        steady = (
            analysis.steady_growers([lk.result["types"] for lk in looks[1:]])
            if len(looks) > 1
            else []
        )
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
            "intervals": [
                {
                    "seconds": round(float(b.result["now"]) - float(a.result["now"]), 3),
                    "objects_delta": b.result["objects"] - a.result["objects"],
                    "grew": [
                        {"type": t, "delta": v[1]}
                        for t, v in sorted(
                            b.result["types"].items(), key=lambda kv: (-kv[1][1], kv[0])
                        )[:3]
                        if v[1] > 0
                    ],
                }
                for a, b in zip(looks, looks[1:])
            ],
            "gc": analysis.gc_doc(res["gc"], last.meta()["python"]),
            "collector": col,
            "types": [
                {"type": r.type, "count": r.count, "delta": r.delta,
                 "since_baseline": r.since_baseline}
                for r in rows
            ],
        }
        # /proc's part of the breakdown only: the allocators are read in a forked copy, never here
        mem, missing = memory_cmd.compose_look(memory_cmd.read_before_fork(args.pid), None)
        change = memory_cmd.change_since(args.pid, inspect_target(args.pid).create_time, mem,
                                         time.time(), kind="memory-inproc", reset=args.reset)
        doc.update(memory=mem, memory_change=change, memory_missing=missing)
        emit(args, out, doc, _lead_with_memory(render(last, doc, rows, steady), doc))
        return 0


def look_in_process(
    pid: int, *, reset: bool, collect: bool, method: str, timeout: float, log: Any
) -> Outcome:
    """One in-process count (gc-tracked objects) and its change since the previous look and the
    baseline, both kept in the state directory (keyed by pid and start time, apart from the forked
    looks' counts): the agent only counts. The outcome's result gets ``types`` ({name: [count,
    change, since baseline]}), ``baseline_recorded``, ``baseline_time`` and ``previous_time``."""
    create_time = inspect_target(pid).create_time
    look = run_agent(pid, "growth", {"collect": collect}, method=method, timeout=timeout, log=log)
    res = look.result
    counts: dict[str, int] = res.pop("counts")
    now = float(res["now"])
    saved = None if reset else state.load(pid, create_time, "inproc")
    try:
        baseline, previous = saved["baseline"], saved["previous"]  # type: ignore[index]
        base_counts, base_time = dict(baseline["counts"]), float(baseline["time"])
        prev_counts, prev_time = dict(previous["counts"]), float(previous["time"])
    except (TypeError, KeyError, ValueError):
        saved = None
    if saved is None:
        base_counts, base_time, prev_counts, prev_time = counts, now, counts, now
    res["types"] = {
        name: [counts.get(name, 0), counts.get(name, 0) - prev_counts.get(name, 0),
               counts.get(name, 0) - base_counts.get(name, 0)]
        for name in set(counts) | set(prev_counts) | set(base_counts)
    }
    res.update(baseline_recorded=saved is None, baseline_time=base_time, previous_time=prev_time)
    state.save(
        pid,
        create_time,
        {"baseline": {"time": base_time, "counts": base_counts},
         "previous": {"time": now, "counts": counts}},
        "inproc",
    )
    return look


def render(
    outcome: Outcome, doc: dict[str, Any], rows: list[analysis.GrowthRow], steady: list[str]
) -> str:
    lines = [header(outcome)]
    if doc["baseline_recorded"] and doc["samples"] == 1:
        lines.append(
            f"baseline recorded: {doc['objects']:,} objects. Run `introspect growth {doc['pid']}` "
            "again later to see what grew."
        )
        return "\n".join(lines)
    lines.append(
        f"{doc['objects']:,} objects; change over the last {doc['since_previous_s']:g} s "
        f"and since the baseline {doc['since_baseline_s']:g} s ago"
    )
    # in-process: gc-tracked objects, garbage included
    for k, iv in enumerate(doc.get("intervals", []), 1):
        grew = ", ".join(f"{g['type']} {g['delta']:+,}" for g in iv["grew"]) or "no type grew"
        lines.append(
            f"  interval {k} ({iv['seconds']:g} s): {iv['objects_delta']:+,} objects ({grew})"
        )
    if steady:
        lines.append(f"grew in every one of {doc['samples'] - 1} intervals: {', '.join(steady)}")
    changed = [r for r in rows if r.delta or r.since_baseline]
    if not changed:
        lines.append("no type changed.")
        return "\n".join(lines)
    lines.append("")
    lines.append(
        table(["type", "count", "change", "since baseline"],
              [(r.type, r.count, signed(r.delta), signed(r.since_baseline)) for r in changed])
    )
    return "\n".join(lines)


def forked(
    args: argparse.Namespace, out: OutputDir, log: Any, why_not: dict[str, Any]
) -> int | None:
    """growth over forked snapshots; None if the in-process path must run (``why_not`` then says
    why)."""
    create_time = inspect_target(args.pid).create_time
    results: list[tuple[Outcome, dict[str, Any], dict[str, Any]]] = []
    steady_input: list[dict[str, list[int]]] = []
    mem_looks: list[dict[str, Any]] = []
    for i in range(args.samples):
        if i:
            if sys.stderr.isatty() and not args.json:
                print(f"introspect: next look in {args.interval:g} s ({i + 1}/{args.samples})",
                      file=sys.stderr)
            time.sleep(args.interval)
        saved = None if (args.reset and i == 0) else state.load(args.pid, create_time)
        proc = memory_cmd.read_before_fork(args.pid)  # RSS/USS before the fork (then all is shared)
        analyse = _analyser(saved, args.pid, args.values)
        if i == args.samples - 1:
            analyse = keeping(args, analyse, log)
        outcome, got, col = collect.take(args.pid, "fork" if args.collector == "fork" else "auto",
                                         memory_cmd.along(analyse), method=args.method,
                                         timeout=args.timeout, collect=args.collect, log=log,
                                         memory=True)
        if outcome is None or got is None:
            # the fork worked before: say why it stopped rather than mix two kinds of counts
            if results:
                raise errors.AgentError(f"look {i + 1} could not fork: {col['why']}")
            print(f"introspect: {collector_line(col)}", file=sys.stderr)
            why_not.update(col)
            return None
        state.save(
            args.pid, create_time,
            {"baseline": got.pop("baseline").to_json(), "previous": got.pop("look").to_json()},
        )
        mem, missing = memory_cmd.compose_look(proc, got.pop("memory_facts"))
        change = memory_cmd.change_since(
            args.pid, create_time, mem, time.time(), kind="memory", reset=args.reset and i == 0
        )
        mem_looks.append({"memory": mem, "memory_change": change, "memory_missing": missing})
        results.append((outcome, got, col))
        if i:  # steadiness on reachable objects: garbage that comes and goes must not hide a grower
            before = results[-2][1]["reachable_counts"]
            now_counts = got["reachable_counts"]
            steady_input.append({t: [c, c - before.get(t, 0), 0] for t, c in now_counts.items()})
    last, got, col = results[-1]
    steady = analysis.steady_growers(steady_input) if steady_input else []
    doc = forked_doc(args, results, steady)
    doc.update(mem_looks[-1])
    if len(mem_looks) > 1:
        doc["memory_looks"] = mem_looks
    emit(args, out, doc, _lead_with_memory(render_forked(last, doc), doc))
    return 0


def forked_doc(args: argparse.Namespace,
               results: list[tuple[Outcome, dict[str, Any], dict[str, Any]]],
               steady: list[str]) -> dict[str, Any]:
    """growth's document from its forked looks (live, or two dump files)."""
    last, got, col = results[-1]
    intervals = _intervals(results)
    holders = got["holders"]
    if not got["baseline_recorded"]:  # those that grew, then those not listed at the previous look
        holders = [h for h in holders if h["grew"]] + [h for h in holders if h["matched"] is False]
    return {**last.meta(), "paused_s": round(sum(o.paused_s for o, _, _ in results), 6),
            "collector": col, "objects": got["objects"],
            "untracked_objects": got["untracked_objects"], "bytes": got["bytes"],
            "baseline_recorded": got["baseline_recorded"],
            "since_previous_s": round(got["now"] - got["previous_time"], 3),
            "since_baseline_s": round(got["now"] - got["baseline_time"], 3),
            "samples": len(results), "interval_s": args.interval, "grew_every_interval": steady,
            "intervals": intervals, "gc": got["gc"], "garbage": got["garbage"],
            "garbage_previous": got["garbage_previous"], "previous_bytes": got["previous_bytes"],
            "tracing": got["tracing"],
            "types": got["rows"][: args.limit] if args.limit > 0 else got["rows"],
            "holders": holders[: args.holders], "suspects": got["suspects"]}


def on_files(args: argparse.Namespace) -> int:
    """growth OLD NEW: the change between two dumps of one process, as a live growth shows it
    (per type, and per holder matched by its path from a root, never by address)."""
    from introspect.snapshot import dumpfile

    if not (isinstance(args.pid, str) and isinstance(args.new, str)):
        raise errors.UsageError(
            "growth compares a live process (growth PID) or two dump files (growth OLD NEW)",
            help="Give one pid, or two files written by `introspect dump`.",
        )
    if args.samples != 1 or args.reset:
        raise errors.UsageError("--samples and --reset are for a live process, not for two dumps")
    log = logger(args)
    old, new = dumpfile.load(args.pid), dumpfile.load(args.new)
    fo, fn = old.facts, new.facts
    for note in dumpfile.pair_notes(args.pid, args.new, fo, fn):
        print(f"introspect: {note}", file=sys.stderr)
    t_old, t_new = float(fo.get("time", 0)), float(fn.get("time", 0))
    first = _analyser(None, int(fo.get("pid", 0)), False, t_old)(old.snap, dumpfile.FileWalker(old))
    saved = {"baseline": first["look"].to_json(), "previous": first["look"].to_json()}
    analyse = _analyser(saved, int(fn.get("pid", 0)), args.values, t_new)
    got = analyse(new.snap, dumpfile.FileWalker(new))
    for look in (first, got):
        look.pop("look")
        look.pop("baseline")

    def col_of(d: Any, path: str) -> dict[str, Any]:
        return {"path": "dump", "why": f"read from {path}", "file": path, "objects": d.snap.n,
                "references": int(d.snap.refs.shape[0]),
                "fork_pause_s": round(float(d.facts.get("fork_pause_s", 0.0)), 6),
                "walk_s": round(float(d.facts.get("walk_s", 0.0)), 3)}

    results = [
        (cast(Outcome, dumpfile.FileOutcome(old)), first, col_of(old, args.pid)),
        (cast(Outcome, dumpfile.FileOutcome(new)), got,
         {**col_of(new, args.new), "old_file": args.pid}),
    ]
    log(f"compared {args.pid} ({old.snap.n:,} objects) with {args.new} ({new.snap.n:,} objects)")
    doc = forked_doc(args, results[-1:], [])  # one look compared with the one before, as live
    doc["old_file"] = args.pid
    out = OutputDir("growth", dumpfile.out_key(args.new), args.output)
    emit(args, out, doc, render_forked(results[-1][0], doc))
    return 0


def _lead_with_memory(text: str, doc: dict[str, Any]) -> str:
    """The breakdown's change goes first, after the header and collector lines."""
    lines = text.split("\n")
    lines[2:2] = memory_cmd.growth_lines(doc["memory"], doc.get("memory_change"), doc["pid"])
    return "\n".join(lines)


ALLOCATED_ROWS = 10  # growing types whose instances' allocation sites are looked up (tracing on)


def _analyser(
    saved: dict[str, Any] | None, pid: int, values: bool = False, when: float | None = None
) -> Any:
    """The analysis of one look, against the saved baseline and previous look (None: record
    them)."""

    def analyse(snap: Snapshot, walker: Walker) -> dict[str, Any]:
        # numpy and igraph: only when a snapshot is analysed
        from introspect.snapshot import heap, suspects

        rows = heap.type_rows(snap)
        h = heap.analyse(snap)
        found = heap.holders(h, walker.labels, 50, count=walker.counts)
        garbage = heap.garbage(snap, h.reachable)
        now = time.time() if when is None else when
        look = views.look_of(now, rows, found, garbage)
        baseline = views.Look.from_json(saved["baseline"]) if saved else look
        previous = views.Look.from_json(saved["previous"]) if saved else look
        tracing_on = walker.tracing()
        reach_rows = heap.type_rows(snap, h.reachable)
        found_suspects = suspects.suspects(h, walker.labels, found, previous if saved else None,
                                           now, 50, count=walker.counts,
                                           preview=walker.previews if values else None)
        return {
            "suspects": found_suspects,
            "objects": snap.n,
            "untracked_objects": int((~snap.tracked).sum()),
            "bytes": int(snap.size.sum()),
            "gc": analysis.gc_doc(snap.meta.get("gc", {}), str(snap.meta.get("python", ""))),
            "garbage": garbage,
            "garbage_previous": None
            if previous.garbage is None
            else {"objects": previous.garbage[0], "bytes": previous.garbage[1]},
            "reachable_counts": {t: r.count for t, r in reach_rows.items()},
            "previous_bytes": sum(v[1] for v in previous.types.values()),
            "reachable_bytes": sum(r.bytes for r in reach_rows.values()),
            "baseline_recorded": saved is None,
            "now": now,
            "baseline_time": baseline.time,
            "previous_time": previous.time,
            "rows": _with_allocated(
                views.growth_docs(rows, previous, baseline, 0), snap, walker, pid, tracing_on
            ),
            "tracing": tracing_on,
            "holders": views.holder_docs(found, previous if saved else None),
            "look": look,
            "baseline": baseline,
        }

    return analyse


def _with_allocated(
    docs: list[dict[str, Any]], snap: Snapshot, walker: Walker, pid: int, on: bool
) -> list[dict[str, Any]]:
    """allocated_at on the first growing rows while the target traces (tracemalloc's object
    traceback of up to tracing.SAMPLE instances each, read in the walker)."""
    if not on:
        return docs
    names = tracing.FunctionNames(f"/proc/{pid}/root")
    for d in [d for d in docs if d["delta"] > 0 or d["bytes_delta"] > 0][:ALLOCATED_ROWS]:
        alloc = tracing.allocated(walker, tracing.instances(snap, d["type"]), names)
        if alloc is None:
            break  # not tracing: no row gets sites
        d.update(alloc.as_json())
    return docs


def _intervals(
    results: list[tuple[Outcome, dict[str, Any], dict[str, Any]]],
) -> list[dict[str, Any]]:
    """One row per interval between this run's looks: objects and bytes in all, the garbage's
    share, and the reachable types that grew most."""
    out: list[dict[str, Any]] = []
    for (_o, a, _c), (_o2, b, _c2) in zip(results, results[1:]):
        grew = sorted(
            ((t, c - a["reachable_counts"].get(t, 0)) for t, c in b["reachable_counts"].items()),
            key=lambda tc: (-tc[1], tc[0]),
        )
        out.append(
            {"seconds": round(b["now"] - a["now"], 3), "objects_delta": b["objects"] - a["objects"],
             "bytes_delta": b["bytes"] - a["bytes"],
             "garbage_objects_delta": b["garbage"]["objects"] - a["garbage"]["objects"],
             "garbage_bytes_delta": b["garbage"]["bytes"] - a["garbage"]["bytes"],
             "reachable_bytes_delta": b["reachable_bytes"] - a["reachable_bytes"],
             "reachable_grew": [{"type": t, "delta": d} for t, d in grew[:3] if d > 0]}
        )
    return out


def _interval_line(k: int, iv: dict[str, Any]) -> str:
    """`interval 2 (10 s): +1,200 objects, +1.2 MiB: garbage +1.0 MiB, reachable +0.2 MiB (dict
    +100)`"""

    def sb(n: int) -> str:
        return ("+" if n >= 0 else "-") + human_bytes(abs(n))

    grew = (
        ", ".join(f"{g['type']} {g['delta']:+,}" for g in iv["reachable_grew"])
        or "no reachable type grew"
    )
    return (
        f"interval {k} ({iv['seconds']:g} s): {iv['objects_delta']:+,} objects, "
        f"{sb(iv['bytes_delta'])}: garbage {sb(iv['garbage_bytes_delta'])}, reachable "
        f"{sb(iv['reachable_bytes_delta'])} ({grew})"
    )


def render_forked(outcome: Outcome, doc: dict[str, Any]) -> str:
    lines = [header(outcome), collector_line(doc["collector"])]
    if doc["baseline_recorded"] and doc["samples"] == 1:
        lines.append(
            f"baseline recorded: {doc['objects']:,} objects, {human_bytes(doc['bytes'])}. "
            f"Run `introspect growth {doc['pid']}` again later to see what grew."
        )
        return "\n".join(lines)
    from introspect.snapshot.suspects import suspect_lines

    lines += suspect_lines(doc["suspects"])
    lines.append(
        f"{doc['objects']:,} objects ({doc['untracked_objects']:,} not tracked by gc), "
        f"{human_bytes(doc['bytes'])}; change over the last {doc['since_previous_s']:g} s and "
        f"since the baseline {doc['since_baseline_s']:g} s ago"
    )
    lines.append(analysis.garbage_line(doc["garbage"], doc["gc"]))
    if doc.get("garbage_previous") is not None:
        lines.append(
            analysis.growth_split_line(doc["bytes"] - doc["previous_bytes"],
                                       doc["garbage"]["bytes"] - doc["garbage_previous"]["bytes"],
                                       "since the previous look")
        )
    for k, iv in enumerate(doc.get("intervals", []), 1):
        lines.append("  " + _interval_line(k, iv))
    if doc["grew_every_interval"]:
        lines.append(
            f"reachable objects grew in every one of {doc['samples'] - 1} intervals: "
            f"{', '.join(doc['grew_every_interval'])}"
        )
    elif doc["samples"] > 2:
        lines.append(
            f"no type's reachable objects grew in every one of {doc['samples'] - 1} intervals"
        )
    grew = [h for h in doc["holders"] if h.get("grew")]
    unmatched = [h for h in doc["holders"] if h.get("matched") is False]
    if grew:
        lines += ["", "holders, most grown first:"] + ["  " + views.holder_line(h) for h in grew]
    elif doc["holders"]:
        lines += ["", "no holder listed at the previous look grew"]
    if unmatched:
        lines += [
            "",
            f"{len(unmatched)} holders not listed at the previous look (new, or too small to list "
            "then):",
        ]
        lines += ["  " + views.holder_line(h) for h in unmatched[:5]]
    if not doc["types"]:
        lines.append("no type changed.")
        return "\n".join(lines)
    lines.append("")
    lines.append(
        table(
            ["type", "count", "change", "since baseline", "bytes", "bytes change"],
            [
                (
                    r["type"],
                    r["count"],
                    signed(r["delta"]),
                    signed(r["since_baseline"]),
                    human_bytes(r["bytes"]),
                    ("+" if r["bytes_delta"] > 0 else "-" if r["bytes_delta"] < 0 else "")
                    + human_bytes(abs(r["bytes_delta"])),
                )
                for r in doc["types"]
            ],
        )
    )
    lines.append("")
    with_sites = [r for r in doc["types"] if r.get("allocated_at")]
    if not doc["tracing"]:
        lines += tracing.allocated_text({"tracing": False}, doc["pid"])
    for r in with_sites[:3]:
        lines.append(
            f"{r['type']}: " + tracing.allocated_text({"tracing": True, **r}, doc["pid"])[0]
        )
        lines += tracing.allocated_text({"tracing": True, **r}, doc["pid"])[1:]
    return "\n".join(lines)
