"""Documents built from an analysed snapshot: the rows `top`, `growth`, `backrefs` and `report`
print and write as JSON. Pure: no I/O, no target access."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TypeRow:
    type: str
    count: int
    tracked: int
    untracked: int
    bytes: int


@dataclass(frozen=True)
class Holder:
    pos: int
    path: str
    type: str
    items: int
    retained_bytes: int


@dataclass(frozen=True)
class Look:
    """What a growth comparison needs of one snapshot (also what the state file keeps)."""

    time: float
    types: dict[str, list[int]]  # name -> [count, bytes]
    holders: dict[str, list[int]]  # path -> [items, retained bytes]
    garbage: list[int] | None = None  # [objects, bytes] no root reached (None: not measured)

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "types": self.types, "holders": self.holders,
                "garbage": self.garbage}

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Look:
        g = doc.get("garbage")
        return Look(float(doc["time"]), {k: list(v) for k, v in doc["types"].items()},
                    {k: list(v) for k, v in doc.get("holders", {}).items()},
                    [int(g[0]), int(g[1])] if isinstance(g, list) and len(g) == 2 else None)


def _unique(holders: list[Holder]) -> dict[str, Holder]:
    """Holders by path, where the path names one holder only: two "held from C (dict)" cannot be
    told apart between snapshots, so they get no change figures."""
    seen: dict[str, int] = {}
    for h in holders:
        seen[h.path] = seen.get(h.path, 0) + 1
    return {h.path: h for h in holders if seen[h.path] == 1}


def look_of(
    t: float, rows: dict[str, TypeRow], holders: list[Holder], garbage: dict[str, Any] | None = None
) -> Look:
    return Look(t, {r.type: [r.count, r.bytes] for r in rows.values()},
                {p: [h.items, h.retained_bytes] for p, h in _unique(holders).items()},
                None if garbage is None else [int(garbage["objects"]), int(garbage["bytes"])])


def type_docs(rows: dict[str, TypeRow], by: str, limit: int) -> list[dict[str, Any]]:
    """Rows for `top`: most objects (by="count") or most shallow bytes first; ties by name.

    >>> type_docs({"a": TypeRow("a", 5, 5, 0, 10), "b": TypeRow("b", 2, 0, 2, 90)}, "size", 1)
    [{'type': 'b', 'count': 2, 'tracked': 0, 'untracked': 2, 'bytes': 90}]
    """
    key = (lambda r: (-r.count, r.type)) if by == "count" else (lambda r: (-r.bytes, r.type))
    ranked = sorted(rows.values(), key=key)
    if limit > 0:
        ranked = ranked[:limit]
    return [
        {"type": r.type, "count": r.count, "tracked": r.tracked, "untracked": r.untracked,
         "bytes": r.bytes}
        for r in ranked
    ]


def growth_docs(
    rows: dict[str, TypeRow], previous: Look, baseline: Look, limit: int
) -> list[dict[str, Any]]:
    """Per type: count, split, bytes, signed change since the previous look and the baseline.
    Changed types only, biggest change of count first, then of bytes.

    >>> prev = Look(0, {"dict": [10, 100], "bytes": [4, 4000]}, {})
    >>> rows = {"dict": TypeRow("dict", 12, 0, 12, 120), "bytes": TypeRow("bytes", 6, 0, 6, 6000)}
    >>> [(d["type"], d["delta"], d["bytes_delta"]) for d in growth_docs(rows, prev, prev, 0)]
    [('bytes', 2, 2000), ('dict', 2, 20)]
    """
    out: list[dict[str, Any]] = []
    for name in set(rows) | set(previous.types) | set(baseline.types):
        r = rows.get(name)
        count, nbytes = (r.count, r.bytes) if r else (0, 0)
        pc, pb = previous.types.get(name, [0, 0])
        bc, _bb = baseline.types.get(name, [0, 0])
        doc: dict[str, Any] = {"type": name, "count": count, "tracked": r.tracked if r else 0,
                               "untracked": r.untracked if r else 0, "bytes": nbytes,
                               "delta": count - pc, "since_baseline": count - bc,
                               "bytes_delta": nbytes - pb}
        if doc["delta"] or doc["since_baseline"] or doc["bytes_delta"]:
            out.append(doc)
    out.sort(key=lambda d: (-abs(d["delta"]), -d["delta"], -abs(d["bytes_delta"]), d["type"]))
    return out[:limit] if limit > 0 else out


# A holder whose items did not rise "grew" only when its retained bytes rose by this much (its
# items themselves growing: a dict of per-key lists). Less is churn: a constant table's retained
# size moves when an object it shares gains or loses another owner, and a capped cache whose items
# are replaced holds bigger or smaller ones from look to look (Flower's 300 tasks at its cap:
# +179 KiB, +15 %, measured).
GREW_MIN_BYTES = 1 << 20
GREW_MIN_SHARE = 0.25


_FRAME_LINE = re.compile(r"^(thread .*?, \S+\(\) in \S+) line \d+(, local )")


def match_key(path: str) -> str:
    """A holder's path as matched between looks: a thread's frame is the same owner whatever line
    it was running at each look.

    >>> match_key("thread Thread-1, run() in events.py line 223, local self .state .tasks")
    'thread Thread-1, run() in events.py, local self .state .tasks'
    """
    return _FRAME_LINE.sub(r"\1\2", path, count=1)


def holder_docs(holders: list[Holder], previous: Look | None) -> list[dict[str, Any]]:
    """holders: [{path, type, items, items_delta, retained_bytes, retained_delta, matched, grew}].

    With a previous look: a holder listed then too ("matched") gets its change; one that was not
    (new since, too small to be listed then, or its path differs) gets no change figures, never
    "grew by all it holds". ``grew`` is true when its items rose, or its retained bytes rose by
    1 MiB and 25 %; growers come first (most retained growth first), then the others, matched or
    not, by retained bytes (not by their change: a capped store whose bytes dipped, or whose path
    differed at the first look, must not fall below constant tables). Without a previous look:
    biggest retained first, and matched/grew are None.

    >>> h = [Holder(1, "module __main__ .store", "list", 30, 3000),
    ...      Holder(2, "module m .x", "dict", 5, 9000),
    ...      Holder(3, "module m .TABLE", "tuple", 128, 21_000)]
    >>> before = Look(0, {}, {"module __main__ .store": [10, 1000],
    ...                       "module m .TABLE": [128, 20_000]})
    >>> [(d["path"], d["items_delta"], d["matched"], d["grew"]) for d in holder_docs(h, before)]
    [('module __main__ .store', 20, True, True), ('module m .TABLE', 0, True, False),
     ('module m .x', None, False, False)]
    """
    out: list[dict[str, Any]] = []
    unique = _unique(holders)
    before = {match_key(p): v for p, v in previous.holders.items()} if previous is not None else {}
    for h in holders:
        prev = before.get(match_key(h.path)) if previous is not None and h.path in unique else None
        doc: dict[str, Any] = {
            "path": h.path,
            "type": h.type,
            "items": h.items,
            "items_delta": h.items - prev[0] if prev else None,
            "retained_bytes": h.retained_bytes,
            "retained_delta": h.retained_bytes - prev[1] if prev else None,
            # None: nothing to compare with, or a path several holders share
            "matched": (None if previous is None or h.path not in unique else prev is not None),
            "grew": None,
        }
        if prev is not None:
            rd = doc["retained_delta"]
            doc["grew"] = doc["items_delta"] > 0 or (
                rd >= GREW_MIN_BYTES and rd >= GREW_MIN_SHARE * prev[1]
            )
        elif doc["matched"] is False:
            doc["grew"] = False
        out.append(doc)
    if previous is not None:
        # growers by how much they grew; the rest, matched or not, by what they retain (a holder
        # at its cap whose bytes dipped, or whose path differed at the first look, is not less
        # worth listing than a constant table)
        out.sort(
            key=lambda d: (not d["grew"], anonymous(d["path"]),
                           -(d["retained_delta"] or 0) if d["grew"] else 0, -d["retained_bytes"])
        )
    else:  # named roots first: "held from C (dict)" says little a person can act on
        out.sort(key=lambda d: (anonymous(d["path"]), -d["retained_bytes"]))
    return out


_ANONYMOUS = re.compile(r"^(held from C|immortal) \([^()]*\)$")


def anonymous(path: str) -> bool:
    """A holder known only as held from C (or immortal), with no name on its path.

    >>> anonymous("held from C (dict)"), anonymous("held from C (dict) ['path_importer_cache']")
    (True, False)
    """
    return _ANONYMOUS.match(path) is not None


def fold_anonymous(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """The holders to list one by one, and one line for the anonymous ones that did not grow.

    >>> rows = [
    ...     {"path": "module m .x", "type": "dict", "retained_bytes": 9000, "grew": None},
    ...     {"path": "held from C (dict)", "type": "dict", "retained_bytes": 3000, "grew": None},
    ...     {"path": "held from C (list)", "type": "list", "retained_bytes": 1000, "grew": None}]
    >>> keep, line = fold_anonymous(rows)
    >>> [d["path"] for d in keep], line
    (['module m .x'], '2 more held from C with no name (dict, list): 3.9 KiB retained in all')
    """
    keep = [d for d in docs if not anonymous(d["path"]) or d.get("grew")]
    folded = [d for d in docs if anonymous(d["path"]) and not d.get("grew")]
    if not folded:
        return keep, None
    from introspect.render.text import human_bytes

    kinds = ", ".join(sorted({d["type"] for d in folded}))
    total = sum(d["retained_bytes"] for d in folded)
    return (
        keep,
        f"{len(folded)} more held from C with no name ({kinds}): {human_bytes(total)} retained in "
        "all",
    )


def holder_line(d: dict[str, Any]) -> str:
    """`module __main__ .store (list: 26,000 items, retains 27.1 MiB; +1,500 items, +1.6 MiB since
    the last look)`"""
    from introspect.render.text import human_bytes

    text = (
        f"{d['path']} ({d['type']}: {d['items']:,} items, "
        f"retains {human_bytes(d['retained_bytes'])}"
    )
    if d.get("matched") is False:
        return text + "; not listed at the earlier look: new, or too small to list then)"
    if d.get("items_delta") is not None:
        sign = "+" if d["retained_delta"] >= 0 else "-"
        text += (
            f"; {d['items_delta']:+,} items, {sign}{human_bytes(abs(d['retained_delta']))} "
            "since the last look"
        )
    return text + ")"
