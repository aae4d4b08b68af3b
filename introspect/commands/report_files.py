"""`introspect report FILE [FILE2]`: the report's page from one or two dump files.

What a live report shows that a dump can answer: the leak suspects, the holders, every type (with
two dumps: their change from the first to the second), garbage, the memory breakdown the dump
carries (and its change), and the chains of the grown types (of the largest with one dump). What a
file cannot answer is said, not guessed: no memory samples and no trend (a dump is one look; two
are two points, not a trend), no steady growers (counts in every interval), no allocation sites
(tracemalloc's traces stay in the process), no values.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from typing import Any

from introspect import analysis, breakdown, errors
from introspect.commands import emit, logger
from introspect.render.graph import write_graph
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes

CANNOT = {
    "trend": "memory over time: a dump is one look, without memory samples or a trend "
    "(`introspect monitor PID` or `introspect report PID` on the live process)",
    "steady": "types that grew in every interval: dumps hold no interval counts",
    "allocation": "allocation sites: tracemalloc's traces stay in the process "
    "(`introspect trace start PID`, then a live report)",
    "values": "values (--values, duplicate strings): no value of any object is in a dump",
}


def _look(dump: Any, first: dict[str, Any] | None) -> dict[str, Any]:
    """What a live report's forked look finds, from one dump (snapshot_look's analysis)."""
    from introspect.snapshot import dumpfile, heap, suspects, views

    snap, walker = dump.snap, dumpfile.FileWalker(dump)
    rows = heap.type_rows(snap)
    h = heap.analyse(snap)
    found = heap.holders(h, walker.labels, 50, count=walker.counts)
    garbage = heap.garbage(snap, h.reachable)
    now = float(dump.facts.get("time", 0.0))
    prev = first["look"] if first else None
    python = str(snap.meta.get("python", ""))
    value: dict[str, Any] = {
        "look": views.look_of(now, rows, found, garbage),
        "rows": rows,
        "holders": found,
        "suspects": suspects.suspects(h, walker.labels, found, prev, now, 10, count=walker.counts),
        "garbage": garbage,
        "gc": analysis.gc_doc(snap.meta.get("gc", {}), python),
        "bytes": int(snap.size.sum()),
        "allocation": {"tracing": False, "types": []},
        "collector": _collector(dump),
        "paused_s": float(dump.facts.get("fork_pause_s", 0.0)),
        "heap": h,
        "walker": walker,
    }
    mem = dump.facts.get("memory")
    if mem is not None:
        t = now - float(first["time"]) if first else 0.0
        value["breakdown"] = {
            "t": round(t, 3),
            "memory": mem["memory"],
            "memory_missing": mem["missing"],
        }
    value["time"] = now
    return value


def _collector(dump: Any) -> dict[str, Any]:
    return {
        "path": "dump",
        "why": f"read from {dump.path}",
        "file": dump.path,
        "objects": dump.snap.n,
        "references": int(dump.snap.refs.shape[0]),
        "fork_pause_s": round(float(dump.facts.get("fork_pause_s", 0.0)), 6),
        "walk_s": round(float(dump.facts.get("walk_s", 0.0)), 3),
        "dump_time": dump.facts.get("time", 0),
    }


def _candidates(
    looks: list[dict[str, Any]], n: int
) -> tuple[list[str], dict[str, str], list[analysis.GrowthRow]]:
    """(types to trace, why each, grown rows): with two dumps the types grown from the first to
    the second (analysis.backref_candidates' order); with one, the largest types by bytes."""
    last = looks[-1]["rows"]
    if len(looks) > 1:
        first = looks[0]["look"].types
        grown = [
            analysis.GrowthRow(
                name,
                r.count,
                r.count - first.get(name, [0, 0])[0],
                r.count - first.get(name, [0, 0])[0],
            )
            for name, r in last.items()
            if r.count - first.get(name, [0, 0])[0] > 0
        ]
        grown.sort(key=lambda r: (-r.since_baseline, r.type))
        added = {name: r.bytes - first.get(name, [0, 0])[1] for name, r in last.items()}
        names = analysis.backref_candidates(grown, [], n, added)
        why = {
            r.type: analysis.why_picked(r, []).replace("since the baseline", "since the first dump")
            for r in grown
            if r.type in names
        }
        return names, why, grown
    # one dump: the application's classes among the largest types first, then the largest
    biggest = sorted(last.values(), key=lambda r: (-r.bytes, r.type))[:15]
    biggest.sort(key=lambda r: analysis.origin(r.type) != "application")
    names = [r.type for r in biggest[:n]]
    why = {
        r.type: f"among the largest types by bytes ({human_bytes(r.bytes)}, {r.count:,} "
        f"objects; {analysis.origin(r.type)}): one dump has no growth to rank by"
        for r in biggest[:n]
    }
    return names, why, []


def run(args: argparse.Namespace) -> int:
    """report FILE [FILE2]: the report document and its page from one or two dumps."""
    from introspect.commands.backrefs import chain_text, forked_chains
    from introspect.commands.report_doc import (
        breakdown_lines,
        findings_lines,
        slug,
        snapshot_block,
    )
    from introspect.snapshot import dumpfile

    paths = [args.pid] + ([args.new] if args.new else [])
    if not all(isinstance(p, str) for p in paths):
        raise errors.UsageError(
            "report takes a live process (report PID) or one or two dump files (report FILE "
            "[FILE2])",
            help="Give one pid, or files written by `introspect dump`.",
        )
    log = logger(args)
    t0 = time.monotonic()
    dumps = [dumpfile.load(p) for p in paths]  # every file whole before anything is written
    if len(dumps) == 2:
        fo, fn = dumps[0].facts, dumps[1].facts
        for note in dumpfile.pair_notes(paths[0], paths[1], fo, fn):
            print(f"introspect: {note}", file=sys.stderr)
    looks: list[dict[str, Any]] = []
    for d in dumps:
        looks.append(_look(d, looks[0] if looks else None))
    log(f"{len(dumps)} dump(s) read and analysed in {time.monotonic() - t0:.2f} s")
    facts = dumps[-1].facts
    pid = int(facts.get("pid", 0))
    out = OutputDir("report", dumpfile.out_key(paths[-1]), args.output)
    names, why, grown = _candidates(looks, args.backrefs)
    traced: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    last = looks[-1]
    for name in names:
        try:
            ch = forked_chains(dumps[-1].snap, last["walker"], name, pid, 10, last["heap"])
        except errors.UnknownType as exc:
            skipped.append({"type": name, "reason": exc.msg, "why": why[name]})
            continue
        stem = f"backrefs-{slug(name)}"
        files = write_graph(out, stem, ch["graph"], f"who keeps {name} alive ({paths[-1]})", "svg")
        ch = {**ch, "why": why[name], "collector": last["collector"], "files": files}
        ch["json"] = str(out.write_json(f"{stem}.json", ch))
        traced.append(ch)
    snaps = [{k: v for k, v in lk.items() if k not in ("heap", "walker")} for lk in looks]
    snap_doc = snapshot_block(snaps, None, args.top)
    assert snap_doc is not None
    bd = [lk["breakdown"] for lk in looks if "breakdown" in lk]
    mem_doc = None
    if bd:
        change = None
        if len(bd) > 1:
            change = breakdown.change(bd[0]["memory"], bd[-1]["memory"], bd[-1]["t"] - bd[0]["t"])
        mem_doc = {
            "looks": bd,
            "memory": bd[-1]["memory"],
            "memory_missing": bd[-1]["memory_missing"],
            "memory_change": change,
        }
    cannot = dict(CANNOT)
    lacking = [d for d in dumps if d.facts.get("memory") is None]
    if lacking:
        reason = lacking[0].facts.get("memory_missing") or (
            f"written by introspect {lacking[0].facts.get('introspect', '(unknown)')}, before "
            "dumps carried it"
        )
        cannot["breakdown"] = (
            f"the memory breakdown of {', '.join(d.path for d in lacking)}: {reason}"
        )
    seconds = looks[-1]["time"] - looks[0]["time"]
    doc: dict[str, Any] = {
        "pid": pid,
        "name": facts.get("name", ""),
        "python": facts.get("python", ""),
        "method": "dump",
        "dumps": [
            {
                "file": d.path,
                "pid": d.facts.get("pid"),
                "time": d.facts.get("time"),
                "objects": d.snap.n,
                "introspect": d.facts.get("introspect"),
            }
            for d in dumps
        ],
        "paused_s": round(sum(lk["paused_s"] for lk in looks), 6),
        "complete": True,
        "problem": None,
        "duration_s": round(seconds, 3),
        "looks": [
            {"t": round(lk["time"] - looks[0]["time"], 3), "objects": d.snap.n, "file": d.path}
            for lk, d in zip(looks, dumps)
        ],
        "grew_every_interval": [],
        "growing": [
            {"type": r.type, "count": r.count, "delta": r.delta, "since_baseline": r.since_baseline}
            for r in grown[: args.top]
        ],
        "backrefs": [
            {k: v for k, v in d.items() if k not in ("graph", "collector", "levels")}
            for d in traced
        ],
        "skipped": skipped,
        "snapshot": snap_doc,
        "breakdown": mem_doc,
        "garbage": snap_doc.get("garbage"),
        "gc": snap_doc.get("gc"),
        "cannot": cannot,
        "files": {},
    }
    doc["memory"] = {"samples": 0, "summary": "not measured: " + CANNOT["trend"]}
    text_lines = [
        f"dump {d.path}: pid {d.facts.get('pid')} ({d.facts.get('name', '')}), "
        f"Python {d.facts.get('python', '')}, {d.snap.n:,} objects, taken "
        + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(d.facts.get("time", 0))))
        for d in dumps
    ]
    if len(dumps) == 2:
        text_lines.append(f"compared: the second dump was taken {seconds:,.0f} s after the first")
    text_lines += breakdown_lines(mem_doc, pid)
    text_lines += findings_lines(doc, "since the first dump")
    text_lines.append("not in a dump: " + "; ".join(cannot.values()))
    doc["files"]["index"] = str(out.write_text("index.html", page(doc, text_lines, chain_text)))
    text = f"report: {doc['files']['index']}\n" + "\n".join(text_lines)
    emit(args, out, doc, text)
    return 0


def page(doc: dict[str, Any], text_lines: list[str], chain_text: Any) -> str:
    """index.html of a report from dumps: the answer, the breakdown, holders and types (as a live
    report's page shows them), the traced chains and graphs, and what a dump cannot answer."""
    from introspect.render import html as page_html

    e = html.escape
    title = f"introspect report: pid {doc['pid']} ({doc['name']}) from " + (
        "two dumps" if len(doc["dumps"]) > 1 else "a dump"
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{page_html.STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<pre>" + e("\n".join(text_lines)) + "</pre>",
    ]
    out += page_html._breakdown_section(doc)
    out += page_html._snapshot_sections(doc)
    out.append("<h2>Who keeps the traced types alive</h2>")
    for ref in doc["backrefs"]:
        out.append(f"<h3>{e(ref['type'])}</h3><p>{e(ref['why'])}</p>")
        out.append("<pre>" + e("\n\n".join(chain_text(c) for c in ref["chains"][:5])) + "</pre>")
        graph = ref["files"].get("svg") or ref["files"].get("png")
        if graph:
            out.append(page_html._image(graph, f"reference graph of {ref['type']}"))
    for skip in doc["skipped"]:
        out.append(f"<p>{e(skip['type'])}: not traced: {e(skip['reason'])}</p>")
    out.append("<h2>What a dump cannot answer</h2><ul>")
    out += [f"<li>{e(v)}</li>" for v in doc["cannot"].values()]
    out.append("</ul><h2>Raw files</h2><ul>")
    out += [f"<li>{page_html._link(r['json'])}</li>" for r in doc["backrefs"]]
    out.append("</ul></body></html>")
    return "\n".join(out) + "\n"
