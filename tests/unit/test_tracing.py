"""Allocation sites from raw trace groups: function names from source, signed deltas, durations."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from introspect import tracing
from introspect.commands.trace import parse_duration

SOURCE = '''\
import os
store = []


class Cache:
    def put(self, k):
        def inner():
            return [k]  # line 8
        return inner()


@decorated
def leak(i):
    store.append(os.urandom(i))  # line 14
'''


def test_function_names_come_from_the_source(tmp_path: Path) -> None:
    f = tmp_path / "app.py"
    f.write_text(SOURCE)
    names = tracing.FunctionNames("/")
    assert names(str(f), 2) == "<module>"
    assert names(str(f), 8) == "Cache.put.<locals>.inner"
    assert names(str(f), 9) == "Cache.put"
    assert names(str(f), 14) == "leak"
    assert names(str(f), 12) == "leak"  # the decorator line belongs to the function
    assert names.line(str(f), 14) == "store.append(os.urandom(i))  # line 14"
    assert names("<frozen importlib._bootstrap>", 3) == "?"
    assert names(str(tmp_path / "gone.py"), 3) == "?"


def test_sites_deltas_since_previous_and_gone_sites(tmp_path: Path) -> None:
    f = tmp_path / "app.py"
    f.write_text(SOURCE)
    names = tracing.FunctionNames("/")
    raw1 = [[[[str(f), 14]], 1000, 10], [[[str(f), 8]], 5000, 5]]
    first = tracing.sites(raw1, None, names)
    assert [(s.line, s.size_delta) for s in first] == [(8, 5000), (14, 1000)]  # since tracing began
    raw2 = [[[[str(f), 14]], 9000, 90]]
    second = tracing.sites(raw2, tracing.figures(raw1), names)
    assert [(s.line, s.function, s.size, s.size_delta, s.count_delta) for s in second] == [
        (14, "leak", 9000, 8000, 80), (8, "Cache.put.<locals>.inner", 0, -5000, -5)]
    assert second[0].as_json(False) == {"file": str(f), "line": 14, "function": "leak", "size": 9000, "count": 90,
                                        "size_delta": 8000, "count_delta": 80}
    assert second[0].as_json(True)["traceback"] == [{"file": str(f), "line": 14, "function": "leak"}]


def test_durations() -> None:
    assert parse_duration("90") == 90.0 and parse_duration("15m") == 900.0 and parse_duration("2h") == 7200.0
    for bad in ("", "0", "ten", "8d", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_allocated_sites_count_held_stand_ins_apart_and_drop_our_own(tmp_path: Path) -> None:
    f = tmp_path / "app.py"
    f.write_text(SOURCE)
    names = tracing.FunctionNames("/")
    frames = [[str(f), 14]] * 3 + [[str(f), 8, "held"]] * 2 + [None, ["<introspect>/agent.py", 90],
                                                               ["<introspect-bootstrap>", 1]]
    got = tracing.summarize(True, frames, names)
    assert got is not None
    assert got.sites == [{"file": str(f), "line": 14, "function": "leak", "count": 3},
                         {"file": str(f), "line": 8, "function": "Cache.put.<locals>.inner",
                          "count": 2, "via": "held"}]
    assert (got.sampled, got.traced, got.held) == (8, 5, 2)
    doc = {"tracing": True, **got.as_json()}
    assert doc["allocated_held"] == 2 and "allocated_walk" not in doc
    text = tracing.allocated_text(doc, 42, names)
    assert "[held: an object it alone holds]" in text[2] and "managed __dict__" in text[-1]
    assert tracing.summarize(False, frames, names) is None
