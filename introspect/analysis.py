"""Pure functions over agent results: ranking, diffs, grouping. No I/O, no target access."""

from __future__ import annotations

from dataclasses import dataclass


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
    [TypeSize(type='bytes', tracked=0, untracked=2, bytes=5000), TypeSize(type='str', tracked=0, untracked=90, bytes=5000)]
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
    [GrowthRow(type='a.X', count=10, delta=5, since_baseline=8), GrowthRow(type='dict', count=3, delta=-4, since_baseline=0)]
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
    [GrowthRow(type='dict', count=30, delta=-4, since_baseline=20), GrowthRow(type='a.X', count=10, delta=5, since_baseline=8)]
    """
    rows = [GrowthRow(t, v[0], v[1], v[2]) for t, v in types.items() if v[2] > 0]
    rows.sort(key=lambda r: (-r.since_baseline, r.type))
    return rows[:limit] if limit > 0 else rows


def backref_candidates(rows: list[GrowthRow], steady: list[str], n: int) -> list[str]:
    """Which grown types to trace first (``rows`` as from grown_since_baseline).

    Module-qualified types (classes some code defines: ``tasks.Job``, ``kombu.Message``) come
    before builtins (``dict``, ``list``): a growing builtin is usually the *contents* of a leak
    whose holder the qualified type's chain already shows, and its newest instances are mostly
    short-lived scratch objects. Builtins are not hidden, only traced after. Within each group,
    types that grew in every interval come first, then the biggest rise.

    >>> rows = grown_since_baseline({"dict": [900, 9, 500], "a.Job": [50, 5, 40], "b.Tmp": [9, -1, 60]})
    >>> backref_candidates(rows, ["a.Job", "dict"], 3)
    ['a.Job', 'b.Tmp', 'dict']
    """
    ranked = sorted(rows, key=lambda r: ("." not in r.type, r.type not in steady, -r.since_baseline, r.type))
    return [r.type for r in ranked[:max(n, 0)]]
