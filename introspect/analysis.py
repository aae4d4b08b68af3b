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
