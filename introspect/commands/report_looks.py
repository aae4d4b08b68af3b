"""The live report's heap looks: the forked snapshots at its first and last look (types, holders,
suspects, garbage, the memory breakdown, allocation sites) and the grown types traced in the last
copy. `report` (report.py) runs them in the background while it samples memory."""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from introspect import analysis, errors, tracing
from introspect.commands import memory as memory_cmd
from introspect.commands.backrefs import forked_chains
from introspect.commands.dump import check_writable, keeping
from introspect.commands.monitor import Sample
from introspect.runner import Outcome


@dataclass
class Collected:
    """What the report has gathered so far: kept even when a later step fails."""

    samples: list[Sample] = field(default_factory=list)
    looks: list[tuple[float, Outcome]] = field(default_factory=list)
    traced: list[tuple[Outcome | None, dict[str, Any]]] = field(
        default_factory=list
    )  # None: found in the last snapshot
    skipped: list[dict[str, str]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(
        default_factory=list
    )  # forked snapshots at the first and last look
    snapshot_problem: str | None = None
    pending: list[threading.Thread] = field(default_factory=list)
    problem: errors.IntrospectError | None = None
    interrupted: bool = False


def keep_paths(args: argparse.Namespace) -> list[str]:
    """--keep-dir DIR: the files the first and the last look are kept in."""
    d = getattr(args, "keep_dir", None)
    return [os.path.join(d, f"look-{k}.pydump") for k in (1, 2)] if d else []


def check_keep_dir(args: argparse.Namespace) -> None:
    """Make --keep-dir's directory (private: a dump holds keys and names) and refuse, before the
    target is touched, a place that cannot take the files or already holds one of them."""
    d = getattr(args, "keep_dir", None)
    if not d:
        return
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise errors.OutputError(
            f"cannot make --keep-dir {d}: {exc.strerror}",
            help="Choose a writable place with --keep-dir DIR (nothing was done to the target).",
        ) from None
    for path in keep_paths(args):
        check_writable(path)


def snapshot_look(
    args: argparse.Namespace, got: Collected, log: Any, last: bool = False, t: float = 0.0
) -> None:
    """Types (every object) and holders from a forked snapshot; its absence is said, not fatal.
    The last look's snapshot also traces the grown types (see trace_in_snapshot): no further
    fork."""
    from introspect.snapshot import collect, views

    def analyse(snap: Any, walker: Any) -> dict[str, Any]:
        from introspect.snapshot import heap, suspects

        rows = heap.type_rows(snap)
        h = heap.analyse(snap)
        # 50 kept for matching across looks (a holder outside the first look's top 10 is still
        # matched at the last); the report shows the first 10
        found = heap.holders(h, walker.labels, 50, count=walker.counts)
        garbage = heap.garbage(snap, h.reachable)
        now = time.time()
        first = got.snapshots[0]["look"] if got.snapshots else None
        value = {
            "look": views.look_of(now, rows, found, garbage),
            "rows": rows,
            "holders": found,
            "suspects": suspects.suspects(
                h,
                walker.labels,
                found,
                first,
                now,
                10,
                count=walker.counts,
                preview=walker.previews if getattr(args, "values", False) else None,
            ),
            "garbage": garbage,
            "gc": analysis.gc_doc(snap.meta.get("gc", {}), str(snap.meta.get("python", ""))),
            "bytes": int(snap.size.sum()),
            "allocation": allocation_sites(args.pid, snap, walker, rows, got),
        }
        if last:  # waste: duplicate str/bytes values and empty containers, in the last look's copy
            value["waste"] = suspects.waste(
                h,
                walker.labels,
                walker.duplicates(8, 20),
                walker.previews if getattr(args, "values", False) else None,
            )
        if last and args.backrefs > 0:
            value["traced"] = trace_in_snapshot(args, got, snap, walker, h, rows)
        return value

    def keep(f: Any, proc: Any) -> Any:  # --keep-dir: this look's snapshot written first, as
        paths = keep_paths(args)  # `dump` writes it, with the memory breakdown
        if not paths:
            return f
        ns = argparse.Namespace(keep=paths[1 if last else 0], pid=args.pid)
        return keeping(ns, f, log, proc=proc)

    try:
        proc = memory_cmd.read_before_fork(args.pid)  # the breakdown's RSS/USS: before the fork
        outcome, value, col = collect.take(
            args.pid,
            "auto",
            memory_cmd.along(keep(analyse, proc)),
            method=args.method,
            timeout=args.timeout,
            log=log,
            memory=True,
        )
    except (
        errors.IntrospectError
    ) as exc:  # the looks in the main thread say what happened to the target
        got.snapshot_problem = exc.msg
        return
    except Exception as exc:  # a bug: kept in the report rather than lost in a thread
        got.snapshot_problem = f"{type(exc).__name__}: {exc}"
        return
    if value is None:
        got.snapshot_problem = col["why"]
        return
    mem, missing = memory_cmd.compose_look(proc, value.pop("memory_facts"))
    value["breakdown"] = {"t": round(t, 3), "memory": mem, "memory_missing": missing}
    got.snapshots.append(
        {**value, "collector": col, "paused_s": outcome.paused_s if outcome else 0.0}
    )
    got.snapshots.sort(key=lambda x: x["look"].time)


# grown types (by bytes since the first snapshot) whose instances' allocation sites are looked up
ALLOCATION_TYPES = 10


def allocation_sites(pid: int, snap: Any, walker: Any, rows: Any, got: Collected) -> dict[str, Any]:
    """The report's allocation-sites block: for the types that grew most since the first forked
    snapshot (the biggest types at the first one), where their instances were allocated, if the
    target traces (`introspect trace start`); else that tracing was off."""
    from introspect.snapshot import views

    if not walker.tracing():
        return {"tracing": False, "types": []}
    first = got.snapshots[0]["look"] if got.snapshots else None
    if first is not None:
        grown = [d for d in views.growth_docs(rows, first, first, 0) if d["bytes_delta"] > 0]
        grown.sort(key=lambda d: -d["bytes_delta"])
    else:
        grown = views.type_docs(rows, "size", ALLOCATION_TYPES)
    names = tracing.FunctionNames(f"/proc/{pid}/root")
    out = []
    for d in grown[:ALLOCATION_TYPES]:
        alloc = tracing.allocated(walker, tracing.instances(snap, d["type"]), names)
        if alloc is not None and alloc.traced:
            out.append({"type": d["type"], "bytes_delta": d.get("bytes_delta"), **alloc.as_json()})
    return {"tracing": True, "types": out}


def merged_growth(got: Collected, rows: Any) -> tuple[list[analysis.GrowthRow], list[str]]:
    """Grown types for picking what to trace: the in-process looks' (gc-tracked objects) merged with
    the forked snapshots' (every object, untracked ones too: the seeds' dicts and bytes), the
    snapshot's figures winning for a type both saw. Steady growers come from the looks."""
    grown, steady = growth_of(got)
    by_type = {r.type: r for r in grown}
    if got.snapshots:
        first = got.snapshots[0]["look"].types
        for name, r in rows.items():
            since = r.count - first.get(name, [0, 0])[0]
            if since > 0:
                by_type[name] = analysis.GrowthRow(name, r.count, since, since)
    return sorted(by_type.values(), key=lambda r: (-r.since_baseline, r.type)), steady


def trace_in_snapshot(
    args: argparse.Namespace, got: Collected, snap: Any, walker: Any, h: Any, rows: Any
) -> list[dict[str, Any]]:
    """backrefs for the grown types in the last look's frozen copy (its heap already analysed)."""
    me = threading.current_thread()
    for th in list(got.pending):  # the first snapshot (the baseline of bytes and untracked counts)
        if th is not me:
            th.join(args.timeout + 60)
    grown, steady = merged_growth(got, rows)
    first = got.snapshots[0]["look"].types if got.snapshots else {}
    added = (
        {name: r.bytes - first.get(name, [0, 0])[1] for name, r in rows.items()} if first else None
    )
    names = analysis.backref_candidates(grown, steady, args.backrefs, added)
    why = {r.type: analysis.why_picked(r, steady) for r in grown if r.type in names}
    out: list[dict[str, Any]] = []
    for name in names:
        try:
            doc = forked_chains(snap, walker, name, args.pid, 10, h)
        except errors.UnknownType as exc:
            out.append({"type": name, "skipped": exc.msg, "why": why[name]})
            continue
        out.append({**doc, "why": why[name]})
    return out


def growth_of(got: Collected) -> tuple[list[analysis.GrowthRow], list[str]]:
    """Grown types at the last look, and those that grew in every interval."""
    if len(got.looks) < 2:
        return [], []
    types = got.looks[-1][1].result["types"]
    steady = analysis.steady_growers([lk.result["types"] for _, lk in got.looks[1:]])
    return analysis.grown_since_baseline(types), steady
