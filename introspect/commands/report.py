"""One command for the ticket: watch memory, find the types that grow, show who holds them.

For --duration seconds it samples memory from /proc (as `monitor` does) and takes --looks heap
counts (as `growth` does: the first one records a fresh baseline). It then traces up to --backrefs
of the grown types (as `backrefs` does): the application's own classes first, then those of common
frameworks, then the standard library's and builtins, steady growers first within each (the page
says why each was picked); and writes a directory: index.html (summary, memory verdict, growing
types, chains and graphs, the memory plot), monitor.csv, monitor.svg (monitor.png with
matplotlib), growth.json, backrefs-<type>.json and graphs,
report.json. If the process exits (or a step fails) midway, what was collected is still written and
index.html says the report is incomplete.

On dump files (`introspect report FILE [FILE2]`) the same page from what the files hold: the
suspects, holders, types, garbage, memory breakdown and chains, with two dumps their change from
the first to the second; what a file cannot answer (memory samples, trend) is said (docs/dumps.md).

Examples:
  introspect report 1234 --duration 60
  introspect report morning.pydump evening.pydump
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

from introspect import analysis, breakdown, errors
from introspect.commands import add_target_options, emit, logger
from introspect.commands import memory as memory_cmd
from introspect.commands.backrefs import chain_text, trace
from introspect.commands.growth import look_in_process
from introspect.commands.monitor import (
    Progress,
    Sampler,
    mb,
    trend_fields,
    trend_line,
    trend_of,
    wall,
    write_outputs,
)
from introspect.commands.report_doc import (
    breakdown_lines,
    findings_lines,
    slug,
    snapshot_block,
)
from introspect.commands.report_looks import (
    Collected,
    check_keep_dir,
    growth_of,
    keep_paths,
    merged_growth,
    snapshot_look,
)
from introspect.render.graph import write_graph
from introspect.render.html import report_html
from introspect.render.output import OutputDir
from introspect.trend import MIB


class Command:
    name = "report"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser, files=True)
        parser.add_argument(
            "new",
            nargs="?",
            metavar="FILE2",
            help="with a dump FILE in place of PID: a later dump of the same "
            "process, compared with the first (docs/dumps.md)",
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=30.0,
            metavar="S",
            help="watch for S seconds (default: 30)",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            metavar="S",
            help="seconds between memory samples (default: 1)",
        )
        parser.add_argument(
            "--looks",
            type=int,
            default=3,
            metavar="N",
            help="heap counts spread over the duration, the first one the baseline "
            "(default: 3, at least 2)",
        )
        parser.add_argument(
            "--top", type=int, default=15, metavar="N", help="grown types listed (default: 15)"
        )
        parser.add_argument(
            "--backrefs",
            type=int,
            default=3,
            metavar="N",
            help="grown types traced to their holders (default: 3; 0 = none)",
        )
        parser.add_argument(
            "--budget",
            type=float,
            default=5.0,
            metavar="S",
            help="search time per traced type inside the target (default: 5)",
        )
        parser.add_argument(
            "--values",
            action="store_true",
            help="show a few values of each suspect's accumulation point, made in the frozen copy "
            "(builtin types only; a user object is named by its type, its __repr__ never runs)",
        )
        parser.add_argument(
            "--keep-dir",
            metavar="DIR",
            help="also write the forked snapshots of the first and last look to DIR/look-1.pydump "
            "and DIR/look-2.pydump, as `introspect dump` does (`report DIR/look-1.pydump "
            "DIR/look-2.pydump` reads them anywhere; never overwrites a file)",
        )

    def run(self, args: argparse.Namespace) -> int:
        if (
            args.duration <= 0
            or args.interval <= 0
            or args.looks < 2
            or args.top < 1
            or args.backrefs < 0
            or args.budget <= 0
        ):
            raise errors.UsageError(
                "--duration, --interval and --budget must be > 0, --looks >= 2, --top >= 1, "
                "--backrefs >= 0"
            )
        if isinstance(args.pid, str) or args.new is not None:
            from introspect.commands import report_files

            return report_files.run(args)
        check_keep_dir(args)
        sampler = Sampler(args.pid, children=False)
        out = OutputDir(self.name, args.pid, args.output)
        progress = Progress()
        got = Collected()
        try:
            watch(args, sampler, got, progress)
            trace_grown(args, out, got, progress)
        except errors.IntrospectError as exc:
            if not got.looks:
                raise  # not even the baseline: nothing worth a report, the plain error says why
            got.problem = exc
        except KeyboardInterrupt:
            if not got.looks:
                raise
            got.interrupted = True
        finally:
            progress.done()
        doc = write_report(args, out, sampler, got)
        emit(args, out, doc, render(doc))
        if got.problem is not None:
            raise got.problem
        if got.interrupted:
            raise KeyboardInterrupt
        return 0


def watch(args: argparse.Namespace, sampler: Sampler, got: Collected, progress: Progress) -> None:
    """Memory every --interval s and heap looks at evenly spread times, from 0 to --duration."""
    look_at = [i * args.duration / (args.looks - 1) for i in range(args.looks)]
    log = logger(args)
    next_sample = 0.0
    got.samples.append(sampler.take())
    while True:
        now = sampler.elapsed()
        if len(got.looks) < len(look_at) and now >= look_at[len(got.looks)]:
            progress.show(
                f"pid {args.pid}: {now:.0f}/{args.duration:g} s, "
                f"heap look {len(got.looks) + 1}/{args.looks}"
            )
            look = look_in_process(
                args.pid,
                reset=not got.looks,
                collect=False,
                method=args.method,
                timeout=args.timeout,
                log=log,
            )
            got.looks.append((sampler.elapsed(), look))
            if len(got.looks) in (1, len(look_at)):
                # In the background: memory sampling goes on while the snapshot is taken and
                # analysed
                # (the per-target lock makes the next look wait for it).
                th = threading.Thread(
                    target=snapshot_look,
                    daemon=True,
                    args=(args, got, log, len(got.looks) > 1, sampler.elapsed()),
                )
                th.start()
                got.pending.append(th)
            continue
        if now >= next_sample:
            got.samples.append(sampler.take())
            s = got.samples[-1]
            progress.show(
                f"pid {args.pid}: {s.t:.0f}/{args.duration:g} s, RSS {mb(s.rss)}, "
                f"{len(got.looks)}/{args.looks} looks"
            )
            next_sample = min(max(next_sample + args.interval, now), args.duration)
            if next_sample <= now:
                next_sample = now + args.interval
            continue
        if len(got.looks) == len(look_at):
            for th in got.pending:
                th.join(args.timeout + 60)
            return
        time.sleep(max(0.0, min(look_at[len(got.looks)], next_sample) - sampler.elapsed()))


def snapshot_doc(got: Collected, top: int) -> dict[str, Any] | None:
    """The report's "snapshot" block: holders with their growth, and types with untracked ones."""
    return snapshot_block(got.snapshots, got.snapshot_problem, top)


def trace_grown(
    args: argparse.Namespace, out: OutputDir, got: Collected, progress: Progress
) -> None:
    """backrefs on the grown types picked by analysis.backref_candidates: from the last look's
    forked snapshot when there is one (no further stop of the target), else one in-process search
    per type; a vanished type is skipped."""
    if args.backrefs == 0 or len(got.looks) < 2:
        return
    in_snapshot = got.snapshots[-1].get("traced") if len(got.snapshots) > 1 else None
    if in_snapshot is not None:
        for doc in in_snapshot:
            if "skipped" in doc:
                got.skipped.append(
                    {"type": doc["type"], "reason": doc["skipped"], "why": doc["why"]}
                )
                continue
            stem = f"backrefs-{slug(doc['type'])}"
            files = write_graph(
                out, stem, doc["graph"], f"who keeps {doc['type']} alive (pid {args.pid})", "svg"
            )
            doc = {**doc, "collector": got.snapshots[-1]["collector"], "files": files}
            doc["json"] = str(out.write_json(f"{stem}.json", doc))
            got.traced.append((None, doc))
        return
    rows, steady = growth_of(got)
    names = analysis.backref_candidates(rows, steady, args.backrefs)
    why = {r.type: analysis.why_picked(r, steady) for r in rows if r.type in names}
    for i, name in enumerate(names, 1):
        progress.show(f"pid {args.pid}: tracing {name} ({i}/{len(names)})")
        try:
            outcome, doc = trace(
                out,
                args.pid,
                name,
                budget=args.budget,
                method=args.method,
                timeout=args.timeout,
                log=logger(args),
                stem=f"backrefs-{slug(name)}",
            )
        except (
            errors.UnknownType
        ) as exc:  # all freed since the last look, or two classes of one name
            got.skipped.append({"type": name, "reason": exc.msg, "why": why[name]})
            continue
        doc["why"] = why[name]
        doc["json"] = str(out.write_json(f"backrefs-{slug(name)}.json", doc))
        got.traced.append((outcome, doc))


def breakdown_doc(got: Collected, pid: int) -> dict[str, Any] | None:
    """The report's "breakdown" block: where the memory was at each forked look (first and last),
    its change between them and the verdicts; None without a forked look."""
    looks = [snap["breakdown"] for snap in got.snapshots if "breakdown" in snap]
    if (
        not looks
    ):  # no forked look: what /proc tells, the rest said missing (never read in the target)
        try:
            mem, missing = memory_cmd.compose_look(memory_cmd.read_before_fork(pid), None)
        except errors.IntrospectError:
            return None
        missing["copy"] = got.snapshot_problem or "no forked look was taken"
        return {"looks": [], "memory": mem, "memory_missing": missing, "memory_change": None}
    first, last = looks[0], looks[-1]
    change = None
    if len(looks) > 1:
        change = breakdown.change(first["memory"], last["memory"], last["t"] - first["t"])
    return {
        "looks": looks,
        "memory": last["memory"],
        "memory_missing": last["memory_missing"],
        "memory_change": change,
    }


def write_report(
    args: argparse.Namespace, out: OutputDir, sampler: Sampler, got: Collected
) -> dict[str, Any]:
    """growth.json, monitor.csv/svg(/png) and index.html; returns the report document."""
    trend = trend_of(got.samples)
    mem_doc = breakdown_doc(got, args.pid)
    parts = [(lk["t"], lk["memory"]) for lk in mem_doc["looks"]] if mem_doc else None
    csv_path, svg_path, png_path, notes = write_outputs(
        out, sampler, got.samples, trend, parts=parts
    )
    if sampler.uss_note:
        notes.insert(0, sampler.uss_note)
    rows, steady = growth_of(got)
    if len(got.snapshots) > 1:  # every table from the same looks: the snapshots count every object
        rows, steady = merged_growth(got, got.snapshots[-1]["rows"])
    outcomes = [lk for _, lk in got.looks] + [o for o, _ in got.traced if o is not None]
    meta = got.looks[-1][1].meta()
    looks = [
        {
            "t": round(t, 3),
            "objects": lk.result["objects"],
            "baseline_recorded": lk.result["baseline_recorded"],
        }
        for t, lk in got.looks
    ]
    growth_doc = {
        **meta,
        "paused_s": round(sum(lk.paused_s for _, lk in got.looks), 6),
        "looks": looks,
        "grew_every_interval": steady,
        "types": [
            {"type": r.type, "count": r.count, "delta": r.delta, "since_baseline": r.since_baseline}
            for r in analysis.growth_rows(got.looks[-1][1].result["types"])
            if r.delta or r.since_baseline
        ],
    }
    growth_path = str(out.write_json("growth.json", growth_doc))
    problem = None
    if got.problem is not None:
        problem = str(got.problem)
    elif got.interrupted:
        problem = "interrupted by Ctrl-C"
    doc: dict[str, Any] = {
        "pid": args.pid,
        "name": sampler.name,
        "python": meta["python"],
        "method": meta["method"],
        "paused_s": round(sum(o.paused_s for o in outcomes), 6),
        "complete": problem is None,
        "problem": problem,
        "duration_s": round(got.samples[-1].t, 3) if got.samples else 0.0,
        "interval_s": args.interval,
        "memory": {
            "samples": len(got.samples),
            "first_rss_mb": round(got.samples[0].rss / MIB, 3) if got.samples else 0.0,
            "last_rss_mb": round(got.samples[-1].rss / MIB, 3) if got.samples else 0.0,
            **trend_fields(trend),
            "notes": notes,
        },
        "looks": looks,
        "grew_every_interval": steady,
        "growing": [
            {"type": r.type, "count": r.count, "delta": r.delta, "since_baseline": r.since_baseline}
            for r in rows[: args.top]
        ],
        "backrefs": [
            {
                **{
                    k: d[k]
                    for k in (
                        "type",
                        "why",
                        "found",
                        "sampled",
                        "unrooted",
                        "partial",
                        "reason",
                        "chains",
                        "files",
                        "json",
                    )
                },
                "sampling": d.get("sampling", "newest first"),
                **{
                    k: d[k]
                    for k in ("tracing", "allocated_at", "allocated_sampled", "allocated_traced")
                    if k in d
                },
                **{
                    k: d[k]
                    for k in ("unrooted_held_from_c", "unrooted_cycle", "unrooted_limit")
                    if k in d
                },
            }
            for _, d in got.traced
        ],
        "skipped": got.skipped,
        "snapshot": snapshot_doc(got, args.top),
        "breakdown": mem_doc,
        "files": {"csv": csv_path, "svg": svg_path, "png": png_path, "growth": growth_path},
    }
    doc["paused_s"] = round(doc["paused_s"] + sum(s["paused_s"] for s in got.snapshots), 6)
    snap_doc = doc["snapshot"] or {}
    doc["garbage"] = snap_doc.get(
        "garbage"
    )  # top-level, as in top and growth: None without a snapshot
    doc["gc"] = snap_doc.get("gc") or (
        analysis.gc_doc(got.looks[-1][1].result.get("gc", {}), meta["python"])
        if got.looks
        else None
    )
    doc["memory"]["summary"] = trend_line(trend)
    wall_fields, wall_lines = (
        wall(args.pid, got.samples[-1].rss, trend) if got.samples else ({}, [])
    )
    doc["memory"].update(wall_fields)
    doc["memory"]["wall"] = wall_lines
    # --keep-dir: the looks' snapshots that were written (a look without a fork writes none)
    doc["files"]["kept"] = [p for p in keep_paths(args) if os.path.exists(p)]
    doc["files"]["index"] = str(out.write_text("index.html", report_html(doc, chain_text)))
    return doc


def _allocated_lines(doc: dict[str, Any]) -> list[str]:
    """Where the grown types were allocated (the forked snapshot's sites, else backrefs')."""
    alloc = (doc.get("snapshot") or {}).get("allocation")
    per_type = (
        [(a["type"], a["allocated_at"]) for a in alloc["types"]]
        if alloc and alloc.get("tracing")
        else []
    )
    if not per_type:
        per_type = [
            (r["type"], r["allocated_at"]) for r in doc["backrefs"] if r.get("allocated_at")
        ]
    tracing_on = bool(alloc and alloc.get("tracing")) or any(
        r.get("tracing") for r in doc["backrefs"]
    )
    if not tracing_on:
        return [
            f"allocation sites: tracing was off (`introspect trace start {doc['pid']} --for 30m`, "
            "then report again)"
        ]

    def site(s: dict[str, Any]) -> str:
        via = ", via an object it holds" if s.get("via") == "held" else ""
        return f"{s['file']}:{s['line']} in {s['function']} ({s['count']}{via})"

    return [
        f"{t} allocated at: " + ", ".join(site(s) for s in sites[:2])
        for t, sites in per_type[:3]
        if sites
    ]


def render(doc: dict[str, Any]) -> str:
    """A short summary for stdout: a line each for memory, growth and every traced type."""
    mem = doc["memory"]
    lines = [
        f"report: {Path(doc['files']['index']).resolve()}",
        f"pid {doc['pid']} ({doc['name']}), Python {doc['python']}: "
        f"watched {doc['duration_s']:.1f} s; {mem['summary']}",
    ]
    lines += breakdown_lines(doc.get("breakdown"), doc["pid"])
    lines += findings_lines(doc, "since the first look")
    lines += _allocated_lines(doc)
    if doc["files"].get("kept"):
        lines.append("looks kept: introspect report " + " ".join(doc["files"]["kept"]))
    if not doc["complete"]:
        lines.append(f"INCOMPLETE: {doc['problem']}")
    return "\n".join(lines)
