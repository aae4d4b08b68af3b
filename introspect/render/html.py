"""The `report` command's index.html: one self-contained page to attach to a ticket.

Everything that comes from the target (type names, chain labels, process name) is HTML-escaped.
Images are embedded as data: URIs in <img> tags, each linked to its file in the same directory: the
page alone carries the pictures, and an SVG shown through <img> can never run script.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from introspect.analysis import garbage_line, growth_split_line, unrooted_text

MIME = {".png": "image/png", ".svg": "image/svg+xml"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; white-space: pre-wrap; }
.incomplete { background: #fde0dc; border: 1px solid #e57373; padding: 8px 12px; }
.verdict { font-weight: bold; } img { max-width: 100%; border: 1px solid #eee; }
.answer { background: #eef5fb; border: 1px solid #90caf9; padding: 8px 14px; font-size: 1.05em; }
.answer p { margin: 0.4em 0; }
"""


def answer_paragraphs(doc: dict[str, Any]) -> list[str]:
    """The answer first, in sentences: the suspect, what accumulates, its growth, when the worker
    reaches its limit and the stopgap; or that nothing qualifies as a suspect."""
    from introspect.render.text import human_bytes as _size

    mem = doc["memory"]
    snap = doc.get("snapshot") or {}
    found = snap.get("suspects") or []
    out: list[str] = []
    if found:
        s = found[0]
        text = (
            f"Leak suspect: {s['path']} ({s['type']}, {s['items']:,} items) retains "
            f"{_size(s['retained_bytes'])}, {s['share']:.0%} of the Python heap"
        )
        g = s.get("growth")
        if g and g.get("new"):
            text += (
                f"; it was under {_size(g['under_bytes'])} at the first look, "
                f"{g['seconds']:.0f} s before"
            )
        elif g and g["retained_bytes"] > 0:
            text += (
                f"; it grew by {g['items']:+,} items, {_size(g['retained_bytes'])} in "
                f"{g['seconds']:.0f} s ({_size(g['bytes_per_minute'])}/min)"
            )
        out.append(text + ".")
        out.append(f"What accumulates: {s['accumulation_point']['shape']['text']}.")
        if len(found) > 1:
            out.append(
                "Other suspects: "
                + "; ".join(f"{x['path']} ({_size(x['retained_bytes'])})" for x in found[1:])
                + "."
            )
    elif snap and not snap.get("problem"):
        out.append(
            "No leak suspect: no holder grew between the looks or retains 10 % of the Python heap."
        )
    where = (doc.get("breakdown") or {}).get("memory") or {}
    if where.get("verdict"):
        uss = where.get("uss")
        out.append(
            f"Where the memory is: {where['verdict']}"
            + (
                f" ({_size(where['python_objects'])} in Python objects of {_size(uss)} USS)"
                if where.get("python_objects") is not None and uss
                else ""
            )
            + "."
        )
    out.append(f"Memory over time: {mem.get('summary') or mem['verdict']}.")
    for line in mem.get("wall") or []:
        line = line.removeprefix("limit: ")
        out.append(line[0].upper() + line[1:] + ".")
    return out


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _link(path: str | None) -> str:
    if not path:
        return ""
    name = Path(path).name
    return f'<a href="{_e(name)}">{_e(name)}</a>'


def _image(path: str | None, alt: str) -> str:
    """<img> with the file's bytes inline, wrapped in a link to the file next to index.html."""
    if not path:
        return ""
    p = Path(path)
    try:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
    except OSError:
        return f"<p>({_e(p.name)} could not be read)</p>"
    mime = MIME.get(p.suffix, "application/octet-stream")
    return f'<a href="{_e(p.name)}"><img src="data:{mime};base64,{data}" alt="{_e(alt)}"></a>'


def _signed(n: int) -> str:
    return f"{n:+,}" if n else "0"


def report_html(doc: dict[str, Any], chain_text: Callable[[dict[str, Any]], str]) -> str:
    """The page for a ``report`` document; ``chain_text(chain)`` spells one backrefs chain."""
    mem = doc["memory"]
    title = f"introspect report: pid {doc['pid']} ({doc['name']})"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_e(title)}</title>", f"<style>{STYLE}</style></head><body>",
           f"<h1>{_e(title)}</h1>"]
    if not doc["complete"]:
        out.append(
            f'<p class="incomplete"><b>Incomplete report:</b> {_e(doc["problem"])}. '
            "Everything collected before that is below.</p>"
        )
    out.append(
        '<div class="answer">'
        + "".join(f"<p>{_e(p)}</p>" for p in answer_paragraphs(doc))
        + "</div>"
    )
    summary = [
        ("process", f"pid {doc['pid']} ({doc['name']}), Python {doc['python'] or '?'}"),
        (
            "watched",
            f"{doc['duration_s']:.1f} s: {mem['samples']} memory samples every "
            f"{doc['interval_s']:g} s, {len(doc['looks'])} heap looks",
        ),
        ("RSS", f"{mem['first_rss_mb']:,.1f} MB → {mem['last_rss_mb']:,.1f} MB"),
        (
            "memory slope",
            f"{mem['slope_bytes_per_s']:+,.0f} bytes/s = {mem['slope_mb_per_hour']:+,.1f} MB/hour"
            + (f" = {mem['slope_mb_per_day']:+,.0f} MB/day" if "slope_mb_per_day" in mem else "")
            + f" (r² {mem['r2']:.2f})",
        ),
        ("target paused",
         f"{doc['paused_s'] * 1000:,.1f} ms in total by introspect ({doc['method'] or '?'})"),
    ]
    out.append("<table>")
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary]
    out.append(f'<tr><th>verdict</th><td class="verdict">{_e(mem["verdict"])}</td></tr>')
    for line in mem.get("wall") or []:
        key = "stopgap" if line.startswith("stopgap:") else "limit"
        out.append(
            f"<tr><th>{key}</th>"
            f"<td>{_e(line.removeprefix('stopgap: ').removeprefix('limit: '))}</td></tr>"
        )
    out.append("</table>")
    if doc["grew_every_interval"]:
        out.append(f"<p>Grew in every interval: {_e(', '.join(doc['grew_every_interval']))}</p>")

    out += _breakdown_section(doc)
    out += _snapshot_sections(doc)
    out += _allocation_section(doc)
    out.append("<h2>Types that grew since the baseline</h2>")
    if doc["growing"]:
        out.append(
            "<table><tr><th>type</th><th>count</th><th>since baseline</th><th>last "
            "interval</th></tr>"
        )
        for row in doc["growing"]:
            out.append(
                f"<tr><td>{_e(row['type'])}</td><td class=n>{row['count']:,}</td><td "
                f"class=n>{_e(_signed(row['since_baseline']))}</td><td "
                f"class=n>{_e(_signed(row['delta']))}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append(
            "<p>No type has more live objects than at the baseline"
            + (" (only the baseline look was taken)." if len(doc["looks"]) < 2 else ".")
            + "</p>"
        )

    out.append("<h2>Who keeps them alive</h2>")
    if not doc["backrefs"] and not doc["skipped"]:
        out.append("<p>No type was traced.</p>")
    for ref in doc["backrefs"]:
        out.append(f"<h3>{_e(ref['type'])}</h3>")
        if ref.get("why"):
            out.append(f"<p>Traced because it is {_e(ref['why'])}.</p>")
        out.append(
            f"<p>{ref['found']:,} live objects; traced {ref['sampled']} "
            f"({_e(ref.get('sampling') or 'newest first')}). Raw data: {_link(ref['json'])}</p>"
        )
        if ref["partial"]:
            out.append(f"<p><b>Partial:</b> {_e(ref['reason'])}</p>")
        lines = [
            f"{c['count']} of {ref['sampled']} held by: {c['root']}\n  {chain_text(c)}"
            for c in ref["chains"]
        ]
        if ref["unrooted"]:
            of = (
                f"more of {ref['found']:,} not reachable from any root"
                if ref.get("sampling")
                else f"of {ref['sampled']} not traced to a root"
            )
            lines.append(f"{ref['unrooted']:,} {of}: {unrooted_text(ref)}")
        out.append(f"<pre>{_e(chr(10).join(lines) or 'no chain found')}</pre>")
        graph = ref["files"].get("svg") or ref["files"].get("png")
        out.append(
            _image(graph, f"reference graph of {ref['type']}")
            if graph
            else f"<p>{_e(ref['files'].get('note', ''))}</p>"
        )
        out.append(f"<p>DOT source: {_link(ref['files'].get('dot'))}</p>")
    for skip in doc["skipped"]:
        out.append(f"<p>{_e(skip['type'])}: not traced: {_e(skip['reason'])}</p>")

    out.append("<h2>Memory over time</h2>")
    out.append(
        _image(doc["files"].get("svg") or doc["files"].get("png"), "RSS over time")
        or f"<p>{_e('; '.join(mem['notes']) or 'no plot')}</p>"
    )
    out.append("<h2>Raw files</h2><ul>")
    raw = [doc["files"].get("csv"), doc["files"].get("growth"),
           *(r["json"] for r in doc["backrefs"])]
    out += [f"<li>{_link(p)}</li>" for p in raw if p]
    out.append("</ul></body></html>")
    return "\n".join(out) + "\n"


def _breakdown_section(doc: dict[str, Any]) -> list[str]:
    """Where the memory is, at the first and last forked look, and its verdict (`introspect
    memory`)."""
    bd = doc.get("breakdown")
    if not bd:
        return []
    from introspect import breakdown
    from introspect.render.text import human_bytes

    looks = bd["looks"] or [{"t": doc.get("duration_s", 0.0), "memory": bd["memory"]}]
    out = ["<h2>Where the memory is</h2>",
           f'<p class="verdict">{_e(bd["memory"].get("advice") or "no verdict")}</p>']
    if bd.get("memory_change"):
        out.append(
            f"<p>Between the first and the last look: {_e(bd['memory_change']['advice'])}</p>"
        )
    head = "".join(f"<th>at {lk['t']:.0f} s</th>" for lk in looks)
    out.append(f"<table><tr><th>part</th>{head}</tr>")
    rows = [("RSS", [lk["memory"]["rss"] for lk in looks]),
            ("USS", [lk["memory"]["uss"] for lk in looks])]
    rows += [
        (name.replace("_", " "), [breakdown.parts(lk["memory"])[name] for lk in looks])
        for name in breakdown.parts(looks[-1]["memory"])
    ]
    for name, values in rows:
        cells = "".join(
            f"<td class=n>{_e(human_bytes(v) if v is not None else '-')}</td>" for v in values
        )
        out.append(f"<tr><td>{_e(name)}</td>{cells}</tr>")
    out.append("</table>")
    if bd.get("memory_missing"):
        out.append(
            "<p>Not measured: "
            + _e("; ".join(f"{k}: {v}" for k, v in bd["memory_missing"].items()))
            + "</p>"
        )
    return out


def _snapshot_sections(doc: dict[str, Any]) -> list[str]:
    """Holders and every type (tracked by gc or not), from forked snapshots at the first and last
    look."""
    snap = doc.get("snapshot")
    if not snap:
        return []
    from introspect.render.text import human_bytes

    out = ["<h2>What holds the memory</h2>"]
    if snap.get("problem"):
        out.append(f"<p>No forked snapshot: {_e(snap['problem'])}</p>")
        return out
    if snap.get("garbage") is not None:
        out.append(f"<p>{_e(garbage_line(snap['garbage'], snap.get('gc')))}</p>")
        if snap.get("garbage_first") is not None and snap.get("bytes_first") is not None:
            split = growth_split_line(snap["bytes"] - snap["bytes_first"],
                                      snap["garbage"]["bytes"] - snap["garbage_first"]["bytes"],
                                      "since the first look")
            out.append(f"<p>{_e(split)}</p>")
    if snap["holders"]:
        from introspect.snapshot.views import fold_anonymous

        listed, folded = fold_anonymous(snap["holders"])
        out.append(
            "<table><tr><th>holder</th><th>type</th><th>items</th><th>retains</th><th>since the "
            "first look</th></tr>"
        )
        for h in listed:
            since = (
                ""
                if h["retained_delta"] is None
                else f"{h['items_delta']:+,} items, "
                     f"{'+' if h['retained_delta'] >= 0 else '-'}"
                     f"{human_bytes(abs(h['retained_delta']))}"
            )
            if h.get("matched") is False:
                since = "new: not listed at the first look"
            out.append(
                f"<tr><td>{_e(h['path'])}</td><td>{_e(h['type'])}</td><td "
                f"class=n>{h['items']:,}</td><td "
                f"class=n>{_e(human_bytes(h['retained_bytes']))}</td><td "
                f"class=n>{_e(since)}</td></tr>"
            )
        out.append("</table>")
        if folded:
            out.append(f"<p>{_e(folded)}</p>")
    if snap.get("waste"):
        from introspect.snapshot.suspects import waste_lines

        out.append("<h2>Waste: duplicate values, empty containers</h2>")
        out.append(f"<pre>{_e(chr(10).join(waste_lines(snap['waste'])))}</pre>")
    out.append("<h2>Every type, tracked by the garbage collector or not</h2>")
    out.append(
        "<table><tr><th>type</th><th>count</th><th>untracked</th><th>bytes</th><th>since the first "
        "look</th><th>bytes since</th></tr>"
    )
    for r in snap["types"]:
        out.append(
            f"<tr><td>{_e(r['type'])}</td><td class=n>{r['count']:,}</td><td "
            f"class=n>{r['untracked']:,}</td><td class=n>{_e(human_bytes(r['bytes']))}</td><td "
            f"class=n>{_e(_signed(r['since_baseline']) if 'since_baseline' in r else '')}</td><td "
            f"class=n>{_e(_signed(r['bytes_delta']) if 'bytes_delta' in r else '')}</td></tr>"
        )
    out.append("</table>")
    return out


def _allocation_section(doc: dict[str, Any]) -> list[str]:
    """Where the grown types were allocated (tracemalloc's object tracebacks), or that tracing was
    off."""
    alloc = (doc.get("snapshot") or {}).get("allocation") or {}
    per_type = [(a["type"], a) for a in alloc.get("types", [])]
    if not per_type:
        per_type = [(r["type"], r) for r in doc.get("backrefs", []) if r.get("allocated_at")]
    on = bool(alloc.get("tracing")) or any(r.get("tracing") for r in doc.get("backrefs", []))
    out = ["<h2>Where the growing objects were allocated</h2>"]
    if not on:
        out.append(
            "<p>Tracing was off in the target, so allocation sites are unknown. Turn it on with "
            f"<code>introspect trace start {doc['pid']} --for 30m</code> (it ends by itself), let "
            "the leak grow, and run the report again; <code>introspect trace show "
            f"{doc['pid']}</code> lists the lines that allocate the most.</p>"
        )
        return out
    if not per_type:
        out.append(
            "<p>Tracing is on, but none of the sampled instances was allocated since it "
            "started.</p>"
        )
        return out
    out.append(
        "<table><tr><th>type</th><th>allocated at</th><th>function</th><th>instances</th></tr>"
    )
    for tname, a in per_type:
        for site in a["allocated_at"]:
            held = ""
            if site.get("via") == "held":
                held = " (where an object it alone holds was allocated: CPython 3.11)"
            out.append(
                f"<tr><td>{_e(tname)}</td><td>{_e(site['file'])}:{site['line']}{held}</td>"
                f"<td>{_e(site['function'])}</td>"
                f"<td class=n>{site['count']:,} of {a['allocated_sampled']:,} sampled</td></tr>"
            )
    out.append("</table>")
    return out
