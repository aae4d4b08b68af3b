"""Pure functions over agent results: ranking, diffs, grouping. No I/O, no target access."""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TypeCount:
    type: str
    count: int


def rank_types(counts: dict[str, int], limit: int = 0) -> list[TypeCount]:
    """Most common first; ties by name so output is stable.

    >>> rank_types({"dict": 3, "a.B": 5, "list": 3}, 2)
    [TypeCount(type='a.B', count=5), TypeCount(type='dict', count=3)]
    """
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if limit > 0:
        rows = rows[:limit]
    return [TypeCount(t, n) for t, n in rows]


@dataclass(frozen=True)
class TypeSize:
    type: str
    tracked: int
    untracked: int
    bytes: int


def rank_sizes(sizes: dict[str, list[int]], limit: int = 0) -> list[TypeSize]:
    """Most bytes first, from the agent's {type: [tracked, untracked, bytes]}; ties by name.

    >>> rank_sizes({"str": [0, 90, 5000], "a.B": [10, 0, 560], "bytes": [0, 2, 5000]}, 2)
    [TypeSize(type='bytes', tracked=0, untracked=2, bytes=5000), TypeSize(type='str', tracked=0,
    untracked=90, bytes=5000)]
    """
    rows = sorted(sizes.items(), key=lambda kv: (-kv[1][2], kv[0]))
    if limit > 0:
        rows = rows[:limit]
    return [TypeSize(t, v[0], v[1], v[2]) for t, v in rows]


@dataclass(frozen=True)
class GrowthRow:
    type: str
    count: int
    delta: int
    since_baseline: int


def growth_rows(types: dict[str, list[int]], limit: int = 0) -> list[GrowthRow]:
    """Largest change since the previous look first (by size, growth before shrink).

    >>> growth_rows({"a.X": [10, 5, 8], "dict": [3, -4, 0], "list": [1, 0, 0]}, 2)
    [GrowthRow(type='a.X', count=10, delta=5, since_baseline=8), GrowthRow(type='dict', count=3,
    delta=-4, since_baseline=0)]
    """
    rows = [GrowthRow(t, v[0], v[1], v[2]) for t, v in types.items()]
    rows.sort(key=lambda r: (-abs(r.delta), -r.delta, -abs(r.since_baseline), r.type))
    if limit > 0:
        rows = rows[:limit]
    return rows


def steady_growers(looks: list[dict[str, list[int]]]) -> list[str]:
    """Types whose count rose in every interval, biggest total rise first.

    >>> steady_growers([{"a": [5, 2, 2], "b": [1, 1, 1]}, {"a": [7, 2, 4], "b": [1, 0, 1]}])
    ['a']
    """
    if not looks:
        return []
    names = set(looks[0])
    for look in looks[1:]:
        names &= set(look)
    steady = [n for n in names if all(look[n][1] > 0 for look in looks)]
    return sorted(steady, key=lambda n: (-sum(look[n][1] for look in looks), n))


def grown_since_baseline(types: dict[str, list[int]], limit: int = 0) -> list[GrowthRow]:
    """Types with more live objects than at the baseline, biggest rise first.

    >>> grown_since_baseline({"a.X": [10, 5, 8], "dict": [30, -4, 20], "list": [1, 0, -2]})
    [GrowthRow(type='dict', count=30, delta=-4, since_baseline=20), GrowthRow(type='a.X', count=10,
    delta=5, since_baseline=8)]
    """
    rows = [GrowthRow(t, v[0], v[1], v[2]) for t, v in types.items() if v[2] > 0]
    rows.sort(key=lambda r: (-r.since_baseline, r.type))
    return rows[:limit] if limit > 0 else rows


# Packages whose classes are rarely the leak itself: the application's objects pass through them.
# A growing framework type is still traced, after the application's own types.
FRAMEWORKS = frozenset(
    """
    aiohttp amqp anyio asgiref attr attrs billiard celery certifi charset_normalizer click django
    eventlet fastapi flask gevent google greenlet grpc gunicorn h11 h2 httpcore httptools httpx idna
    IPython ipykernel itsdangerous jinja2 jupyter_client kombu markupsafe multidict opentelemetry
    pip pkg_resources pluggy prometheus_client prompt_toolkit psycopg psycopg2 pydantic
    pydantic_core pygments pymysql pytest _pytest redis requests rest_framework sentry_sdk
    setuptools six sniffio sqlalchemy starlette tornado traitlets twisted typing_extensions urllib3
    uvicorn uvloop uwsgi uwsgidecorators vine websockets werkzeug yarl zmq zope
""".split()
)
ORIGINS = ("application", "framework", "stdlib", "builtin")


@functools.lru_cache(maxsize=1)
def _stdlib_names() -> frozenset[str]:
    names = set(getattr(sys, "stdlib_module_names", ()))  # 3.10+
    if not names:  # 3.9: what the standard library directory holds
        names.update(sys.builtin_module_names)
        try:
            for entry in os.listdir(sysconfig.get_paths()["stdlib"]):
                names.add(entry[:-3] if entry.endswith(".py") else entry.split(".")[0])
        except OSError:
            pass
    return frozenset(names)


def origin(type_name: str) -> str:
    """Where a type comes from, judged by its module's top-level package name.

    >>> [origin(t) for t in ("app4.PageView", "__main__.Job", "gunicorn.http.wsgi.Response",
    ...                      "weakref.ReferenceType", "_asyncio.Task", "functools.partial", "dict")]
    ['application', 'application', 'framework', 'stdlib', 'stdlib', 'stdlib', 'builtin']
    """
    if "." not in type_name:
        return "builtin"
    top = type_name.split(".", 1)[0]
    if top == "__main__":
        return "application"
    if top in FRAMEWORKS:
        return "framework"
    if top in _stdlib_names() or top == "builtins":
        return "stdlib"
    return "application"


def backref_candidates(
    rows: list[GrowthRow], steady: list[str], n: int, added_bytes: dict[str, int] | None = None
) -> list[str]:
    """Which grown types to trace first (``rows`` as from grown_since_baseline).

    With ``added_bytes`` (what each type added since the first forked look), a library or builtin
    type that added little memory (under 64 KiB or 1 % of all that was added) is traced after the
    rest: the seeds' ``bytes`` +10 MB before an ``_io.BufferedReader`` +1. The application's own
    classes keep their place: small as instances, they are what their chains explain.

    The application's own classes come first, then those of common frameworks, then the standard
    library's (``weakref.ReferenceType``, ``_asyncio.Task``, ``functools.partial``), then builtins
    (``dict``, ``list``): a growing library or builtin type is usually the *contents* or the
    bookkeeping of a leak whose holder the application type's chain already shows. Nothing is
    hidden, only traced after. Within each group, types that grew in every interval come first,
    then the biggest rise.

    >>> rows = grown_since_baseline({"dict": [900, 9, 500], "a.Job": [50, 5, 40],
    ...                              "b.Tmp": [9, -1, 60], "weakref.ReferenceType": [700, 9, 600]})
    >>> backref_candidates(rows, ["a.Job", "dict", "weakref.ReferenceType"], 3)
    ['a.Job', 'b.Tmp', 'weakref.ReferenceType']
    >>> backref_candidates(rows, [], 3, {"dict": 10 << 20, "a.Job": 900, "b.Tmp": 200,
    ...                                  "weakref.ReferenceType": 900})
    ['a.Job', 'b.Tmp', 'dict']
    """
    added = added_bytes or {}
    total = sum(b for b in added.values() if b > 0)
    floor = max(64 << 10, total // 100)

    def minor(r: GrowthRow) -> bool:
        return bool(added) and origin(r.type) != "application" and added.get(r.type, 0) < floor

    ranked = sorted(
        rows,
        key=lambda r: (minor(r), ORIGINS.index(origin(r.type)), r.type not in steady,
                       -added.get(r.type, 0), -r.since_baseline, r.type),
    )
    return [r.type for r in ranked[: max(n, 0)]]


def why_picked(row: GrowthRow, steady: list[str]) -> str:
    """Why ``backref_candidates`` chose a type, in words.

    >>> why_picked(GrowthRow("app4.PageView", 120, 10, 100), ["app4.PageView"])
    "the application's class (module app4), grew in every interval, +100 since the baseline"
    >>> why_picked(GrowthRow("dict", 900, -3, 50), [])
    'a builtin type (no grown class of the application was left to trace), +50 since the baseline'
    """
    kind = origin(row.type)
    module = row.type.split(".", 1)[0]
    what = {"application": f"the application's class (module {module})",
            "framework": f"a framework's class ({module})",
            "stdlib": f"a standard-library type ({module})", "builtin": "a builtin type"}[kind]
    if kind != "application":
        what += " (no grown class of the application was left to trace)"
    parts = [what]
    if row.type in steady:
        parts.append("grew in every interval")
    parts.append(f"{row.since_baseline:+,} since the baseline")
    return ", ".join(parts)


def unrooted_text(doc: dict[str, Any]) -> str:
    """The instances not traced to a root, each case counted apart.

    >>> unrooted_text({"unrooted": 7, "unrooted_held_from_c": 2, "unrooted_cycle": 5,
    ...                "unrooted_limit": 0})
    '2 held from C code or a frame the search does not list, 5 by a reference cycle only (garbage
    the collector will free)'
    >>> unrooted_text({"unrooted": 3, "unrooted_limit": 3})
    '3 not reached within the search limit (--max-depth or the time budget): held from C, a cycle or
    deeper'
    """
    parts = []
    if doc.get("unrooted_held_from_c"):
        parts.append(
            f"{doc['unrooted_held_from_c']:,} held from C code or a frame the search does not list"
        )
    if doc.get("unrooted_cycle"):
        parts.append(
            f"{doc['unrooted_cycle']:,} by a reference cycle only (garbage the collector will free)"
        )
    if doc.get("unrooted_limit"):
        parts.append(
            f"{doc['unrooted_limit']:,} not reached within the search limit "
            "(--max-depth or the time budget): held from C, a cycle or deeper"
        )
    if not parts:  # an agent from before the split
        return "held from C code, by a reference cycle only, or beyond --max-depth"
    return ", ".join(parts)


def gc_doc(facts: dict[str, Any], python: str) -> dict[str, Any]:
    """The collector's state as read in the target (or its forked copy, identical at the fork):
    on or off, thresholds, generation counts, collections so far per generation, and when the
    next full collection is due (``next_full``, a sentence).

    >>> d = gc_doc({"enabled": True, "counts": [512, 3, 7], "thresholds": [700, 10, 10],
    ...             "stats": [{"collections": 900, "collected": 10, "uncollectable": 0},
    ...                       {"collections": 81, "collected": 5, "uncollectable": 0},
    ...                       {"collections": 7, "collected": 2000, "uncollectable": 0}]}, "3.11.2")
    >>> d["collections"], d["young_collections_to_full"]
    ([900, 81, 7], 41)
    >>> print(d["next_full"])
    full collection #8 due in ~41 young collections (~29,000 net container allocations)
    >>> late = {"enabled": True, "counts": [2782, 11, 19], "thresholds": [700, 10, 10]}
    >>> print(gc_doc(late, "3.11.7")["next_full"])
    the next full collection is past its count threshold (19 > 10): it runs once the objects that
    survived since the last one exceed 25 % of those it kept
    """
    stats = facts.get("stats") or []
    doc: dict[str, Any] = {"enabled": facts.get("enabled"), "thresholds": facts.get("thresholds"),
                           "counts": facts.get("counts"),
                           "collections": [int(s.get("collections", 0)) for s in stats] or None,
                           "collected": [int(s.get("collected", 0)) for s in stats] or None,
                           "uncollectable": [int(s.get("uncollectable", 0)) for s in stats] or None}
    if "frozen" in facts:
        doc["frozen"] = facts["frozen"]
    counts, th = facts.get("counts") or [], facts.get("thresholds") or []
    version = tuple(int(x) for x in python.split(".")[:2] if x.isdigit())
    full_done = doc["collections"][-1] if doc["collections"] else None
    nth = "the next full collection" if full_done is None else f"full collection #{full_done + 1}"
    doc["young_collections_to_full"] = None
    if facts.get("enabled") is False:
        doc["next_full"] = (
            "the collector is disabled (gc.disable()): cycles are freed only "
            "when the program calls gc.collect()"
        )
    elif version >= (3, 14):
        doc["next_full"] = (
            "Python 3.14+ collects the old generation incrementally, a slice "
            "with each young collection: cycles are freed over the next ones"
        )
    elif len(counts) == 3 and len(th) == 3 and th[0] > 0:
        # 3.8-3.13: generation 2 runs when its count (generation-1 collections since the last full
        # one) exceeds its threshold, and generation 1 when its count (generation-0 collections)
        # exceeds its own; generation 0 after threshold0 net container allocations.
        gen1_left = max(0, th[2] - counts[2] + 1)
        young = max(0, gen1_left * (th[1] + 1) - counts[1])
        doc["young_collections_to_full"] = young
        allocs = young * th[0]
        # (and only if what survived since the last full one exceeds 25 % of what it kept: not
        # readable from Python, so the figure is the earliest it can run)
        if counts[2] > th[2]:
            doc["next_full"] = (
                f"{nth} is past its count threshold ({counts[2]} > {th[2]}): "
                "it runs once the objects that survived since the last one "
                "exceed 25 % of those it kept"
            )
        else:
            doc["next_full"] = (
                f"{nth} due in ~{young:,} young collections "
                f"(~{_round_sig(allocs):,} net container allocations)"
            )
    else:
        doc["next_full"] = "unknown (the collector's counts were not read)"
    return doc


def _round_sig(n: int) -> int:
    """Two significant digits: an estimate should not look exact.

    >>> _round_sig(25_900), _round_sig(7)
    (26000, 7)
    """
    if n < 100:
        return n
    k = 10 ** (len(str(n)) - 2)
    return int(round(n / k)) * int(k)


def garbage_line(garbage: dict[str, Any], gc: dict[str, Any] | None) -> str:
    """One sentence: how much is cyclic garbage, what it is, and when the collector frees it.

    >>> g = {"objects": 160_000, "bytes": 60 << 20, "by_type": [
    ...      {"type": "tuple", "count": 150_000, "bytes": 50 << 20},
    ...      {"type": "billiard.einfo.ExceptionInfo", "count": 160, "bytes": 1 << 20}]}
    >>> line = garbage_line(g, {"next_full": "full collection #3 due in ~12 young collections"})
    >>> line.startswith("garbage: 60.0 MiB in 160,000 objects no root reaches "
    ...                 "(reference cycles awaiting")
    True
    >>> line.endswith("mostly tuple 50.0 MiB, billiard.einfo.ExceptionInfo 1.0 MiB; "
    ...               "full collection #3 due in ~12 young collections")
    True
    """
    from introspect.render.text import human_bytes

    if not garbage.get("objects"):
        return "garbage: none (every object walked is reachable from a root)"
    kinds = ", ".join(
        f"{t['type']} {human_bytes(t['bytes'])}" for t in garbage.get("by_type", [])[:3]
    )
    text = (
        f"garbage: {human_bytes(garbage['bytes'])} in {garbage['objects']:,} objects "
        "no root reaches (reference cycles awaiting collection: the collector will free "
        f"them), mostly {kinds}"
    )
    if garbage.get("classes"):
        text += "; cycles of " + ", ".join(
            f"{t['type']} x{t['count']:,}" for t in garbage["classes"][:3]
        )
    if gc and gc.get("next_full"):
        text += "; " + gc["next_full"]
    return text


def growth_split_line(total_delta: int, garbage_delta: int, since: str) -> str:
    """Whether growth is garbage the collector will free or objects that stay reachable.

    >>> print(growth_split_line(80 << 20, 60 << 20, "since the first look"))
    of +80.0 MiB since the first look, +60.0 MiB is garbage the collector will free and +20.0 MiB
    stays reachable
    """
    from introspect.render.text import human_bytes

    def signed(n: int) -> str:
        return ("+" if n >= 0 else "-") + human_bytes(abs(n))

    reach = total_delta - garbage_delta
    return (
        f"of {signed(total_delta)} {since}, {signed(garbage_delta)} is garbage the "
        f"collector will free and {signed(reach)} stays reachable"
    )
