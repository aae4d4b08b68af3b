"""The report's document and its text, shared by the live report (report.py) and the report
from dump files (report_files.py): the snapshot block, the breakdown's lines, the findings."""

from __future__ import annotations

import re
from typing import Any

from introspect import analysis
from introspect.commands import memory as memory_cmd


def slug(type_name: str) -> str:
    """A file-name-safe form of a type name.

    >>> slug("tests.celery_leak.tasks.MyCustomObject")
    'tests_celery_leak_tasks_MyCustomObject'
    >>> slug("a.<locals>.B")
    'a_locals_B'
    """
    return re.sub(r"[^A-Za-z0-9-]+", "_", type_name).strip("_")[:100] or "type"


def snapshot_block(
    snapshots: list[dict[str, Any]], problem: str | None, top: int
) -> dict[str, Any] | None:
    """The report's "snapshot" block from its forked looks (a live report's, or dumps): holders
    with their growth, and types with untracked ones; ``problem``: why there is none."""
    from introspect.snapshot import views

    if not snapshots:
        return {"problem": problem} if problem else None
    first, last = snapshots[0], snapshots[-1]
    prev = first["look"] if len(snapshots) > 1 else None
    return {
        "collector": last["collector"],
        "holders": views.holder_docs(last["holders"], prev)[:20],
        "suspects": last.get("suspects", []),
        "waste": last.get("waste"),
        "garbage": last["garbage"],
        "garbage_first": first["garbage"] if prev else None,
        "bytes": last["bytes"],
        "bytes_first": first["bytes"] if prev else None,
        "gc": last["gc"],
        "allocation": last.get("allocation"),
        "types": views.growth_docs(last["rows"], first["look"], first["look"], top)
        if prev
        else views.type_docs(last["rows"], "size", top),
        "problem": None,
    }


def breakdown_lines(mem_doc: dict[str, Any] | None, pid: int) -> list[str]:
    """What leads the report's text: where the memory is, and what changed between the looks."""
    if mem_doc is None:
        return []
    lines = memory_cmd.growth_lines(mem_doc["memory"], None, pid)
    if mem_doc["memory_change"]:
        lines += memory_cmd.growth_lines(mem_doc["memory"], mem_doc["memory_change"], pid)
    return lines


def _held_by(ref: dict[str, Any]) -> str:
    """Where every traced instance went: the top roots, the rest, and those not traced to a root.

    >>> chain = {"root": "module app", "count": 3,
    ...          "path": [{"type": "module", "via": ".cache"}, {"type": "list", "via": None}]}
    >>> print(*_held_by({"type": "list", "sampled": 10, "unrooted": 7, "unrooted_cycle": 7,
    ...                  "chains": [chain]}).split("; "), sep=chr(10))
    list: 3 of 10 held by module app via .cache
    7 of 10 not traced to a root (7 by a reference cycle only (garbage the collector will free))
    """
    sampled = ref["sampled"]
    held: dict[str, int] = {}
    for chain in ref["chains"]:
        via = chain["path"][0]["via"] if chain["path"] else None
        label = chain["root"] + (f" via {via}" if via else "")
        held[label] = held.get(label, 0) + chain["count"]
    top = sorted(held.items(), key=lambda kv: -kv[1])
    parts = [f"{n} of {sampled} held by {label}" for label, n in top[:2]]
    rest = sum(n for _, n in top[2:])
    if rest:
        parts.append(f"{rest} of {sampled} held by {len(top) - 2} other roots")
    if ref.get("unrooted"):
        if ref.get(
            "sampling"
        ):  # forked: every instance looked at; the unreachable ones are beside the traced
            parts.append(
                f"{ref['unrooted']:,} more of {ref['found']:,} not reachable from any root "
                f"({analysis.unrooted_text(ref)})"
            )
        else:
            parts.append(
                f"{ref['unrooted']} of {sampled} not traced to a root "
                f"({analysis.unrooted_text(ref)})"
            )
    return f"{ref['type']}: " + ("; ".join(parts) or f"none of {sampled} traced to a root")


def findings_lines(doc: dict[str, Any], since: str) -> list[str]:
    """Suspects, growth, garbage, holders and the traced types' holders, a line or a few each
    (a live report's, and one from dumps: ``since`` names the first look)."""
    lines: list[str] = []
    mem = doc["memory"]
    snap = doc.get("snapshot") or {}
    from introspect.snapshot.suspects import suspect_lines

    lines += suspect_lines(snap.get("suspects") or [])
    lines += mem.get("wall") or []
    grown = sorted(
        (r for r in snap.get("types", []) if r.get("since_baseline", 0) > 0),
        key=lambda r: -r["bytes_delta"],
    )
    if grown:  # forked snapshots count every object, untracked ones too
        lines.append(
            f"grew {since}: "
            + ", ".join(f"{r['type']} {r['since_baseline']:+,}" for r in grown[:4])
        )
    elif doc["growing"]:
        lines.append(
            "grew since the baseline: "
            + ", ".join(f"{r['type']} {r['since_baseline']:+,}" for r in doc["growing"][:4])
        )
    elif len(doc["looks"]) >= 2:
        lines.append("no type grew " + ("since the baseline" if since.endswith("look") else since))
    if snap.get("garbage") is not None:
        lines.append(analysis.garbage_line(snap["garbage"], snap.get("gc")))
        if snap.get("garbage_first") is not None and snap.get("bytes_first") is not None:
            lines.append(
                analysis.growth_split_line(
                    snap["bytes"] - snap["bytes_first"],
                    snap["garbage"]["bytes"] - snap["garbage_first"]["bytes"],
                    since,
                )
            )
    if snap.get("holders"):
        from introspect.snapshot.views import holder_line

        compared = any(
            h.get("matched") is not None for h in snap["holders"]
        )  # else one look: nothing to compare
        grew = [h for h in snap["holders"] if h.get("grew")] if compared else snap["holders"]
        if grew:
            lines.append("held by: " + holder_line(grew[0]).replace("since the last look", since))
        else:
            same = sum(1 for h in snap["holders"] if h.get("matched"))
            lines.append(
                f"no holder grew {since} ({same} listed then are unchanged, "
                f"{len(snap['holders']) - same} were not listed then)"
            )
    if doc["backrefs"]:
        lines += [_held_by(r) for r in doc["backrefs"]]
    return lines
