"""A dump's labels and counts asked in bulk (snapshot/dumplabels.py and the walker's side in
agent/labels.py): every bulk answer is what the walker gives pair by pair, whatever path made it
(a plain dict's loop, a big holder's map, a few items of a big list found in one pass), and
what the CLI writes in numpy is what "%d" formatting writes."""

from __future__ import annotations

import collections
import json
import runpy
from typing import Any

import numpy as np
import pytest

from introspect.agent import AGENT_PATH
from introspect.snapshot import native
from introspect.snapshot.dumplabels import _index_json, _line, _pairs_text, _strings_json


@pytest.fixture(scope="module")
def ag() -> dict[str, Any]:
    return runpy.run_path(str(AGENT_PATH))


def _first_label(holder: Any, child: Any) -> str:
    """The label by definition (a test's own reading, not the agent's): a dict's first item
    whose value (then key) is the child, a list's or tuple's first index of it."""
    if isinstance(holder, dict):
        for k, v in dict.items(holder):
            if v is child:
                if type(k) is str:
                    return "[" + (repr(k) if len(k) <= 40 else repr(k[:37]) + "...") + "]"
                return f"[{k}]" if type(k) is int else f"[<{type(k).__name__} key>]"
            if k is child:
                return "(key)"
        return "(item)"
    for i, v in enumerate(holder):
        if v is child:
            return f"[{i}]"
    return "(item)"


def _heap() -> tuple[list[Any], list[Any]]:
    x, y, z = object(), object(), object()
    k1, k2 = ("k", 1), ("k", 2)
    same: dict[Any, Any] = {}
    same[k1] = k1  # a key that is its own value: the value's label
    later = {"a": y, k2: x, "b": k2}  # a key that is a later item's value: "(key)"
    before = {"a": k2, k2: x}  # a value before the same object as a key: the value's label
    holders: list[Any] = [
        {"b": x},
        {"b": y, "c": x},
        same,
        later,
        before,
        {1: x, -5: y, "x" * 50: z},
        collections.OrderedDict(a=x, b=y),
        [x, y, x],
        (y, y, x),
        [object() for _ in range(3000)] + [x, x],  # big: a few asked (one pass), then all (map)
        tuple([z] * 700 + [x] + [z]),
        {i: (x if i % 2 else y) for i in range(40)},  # a run of one dict: its map
    ]
    kids = [x, y, z, k1, k2]
    for h in holders:
        kids += list(h) if not isinstance(h, dict) else [*dict.values(h), *dict.keys(h)]
    return holders, kids


def test_every_bulk_label_is_the_one_asked_alone(ag: dict[str, Any]) -> None:
    holders, kids = _heap()
    keep: list[Any] = list(holders)
    pos: dict[int, int] = {id(h): i for i, h in enumerate(keep)}
    for k in kids:
        if id(k) not in pos:
            pos[id(k)] = len(keep)
            keep.append(k)
    # every holder's items (and keys) in order, runs of one holder; a few of the big list's
    # first, in the order its references come (last first), a child it does not hold too
    big = holders[9]
    nums: list[int] = []
    for c in [big[-1], big[-2], big[5], big[-1], big[0], big[-3], big[1], big[2], holders[0]]:
        nums += [pos[id(big)], pos[id(c)]]
    for h in holders:
        items = list(h) if not isinstance(h, dict) else [*dict.values(h), *dict.keys(h)]
        for c in reversed(items):
            nums += [pos[id(h)], pos[id(c)]]
    for h in holders:  # short runs: one pair of each holder
        nums += [pos[id(h)], pos[id(kids[0])]]
    want = [_first_label(keep[nums[k]], keep[nums[k + 1]]) for k in range(0, len(nums), 2)]
    via = [ag["_snap_via"](keep[nums[k]], keep[nums[k + 1]]) for k in range(0, len(nums), 2)]
    assert via == want  # the walker's pair by pair answer
    cache: list[Any] = [None, None]
    got: list[str] = []
    for k in range(0, len(nums), 38):  # questions of 19 pairs
        got += ag["_snap_label_pairs"](keep, nums[k : k + 38], cache)
    assert got == want
    assert want[:9] == [
        "[3000]",
        "[3000]",
        "[5]",
        "[3000]",
        "[0]",
        "[2999]",
        "[1]",
        "[2]",
        "(item)",
    ]
    assert "[700]" in want and "(key)" in want and "[('k', 1)]" not in want
    assert "[<tuple key>]" in want and "['" + "x" * 37 + "'...]" in want
    # the first question of the big list was answered in one pass, the next from its map
    cache = [None, None]
    first = ag["_snap_label_pairs"](keep, nums[:18], cache)
    assert first == want[:9] and cache[3] is big and cache[0] is None
    assert ag["_snap_label_pairs"](keep, nums[:18], cache) == want[:9] and cache[0] is big


def test_a_question_in_hex_reads_as_its_numbers(ag: dict[str, Any]) -> None:
    nums = np.array([0, 1, 7, 255, 65536, 5_000_000, (1 << 31) - 1], np.int64)
    line = _line("L", nums)
    assert line.startswith(b"L x") and line.endswith(b"\n")
    assert ag["_snap_nums"](line.split()) == nums.tolist()
    # out of int32's range: decimal, read as before
    wide = np.array([3, 1 << 31], np.int64)
    assert _line("C", wide) == b"C 3 2147483648 \n"
    assert ag["_snap_nums"](_line("C", wide).split()) == [3, 1 << 31]


def test_counts_as_int64s_are_the_counts(ag: dict[str, Any]) -> None:
    keep: list[Any] = [[1, 2], {"a": 1}, (), {1, 2, 3}, object(), collections.OrderedDict(a=1)]
    want = ag["_snap_counts"](keep, [0, 1, 2, 3, 4, 5])
    assert want == [2, 1, 0, 3, -1, 1]
    raw = ag["_snap_counts"](keep, [0, 1, 2, 3, 4, 5], True)
    assert np.frombuffer(raw, "<i8").tolist() == want


@pytest.mark.parametrize("path", ["compiled", "numpy"])
@pytest.mark.parametrize("seed", range(5))
def test_counts_and_indices_text_is_what_format_writes(
    seed: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both writers of the text (_graphc.c's introspect_rows, numpy's _rows) write "%d"'s."""
    assert native.lib() is not None, "introspect/snapshot/_graphc.c is not built: run scripts/setup"
    if path == "numpy":
        monkeypatch.setattr(native, "_LIB", None)
    rng = np.random.default_rng(seed)
    for _ in range(200):
        k = int(rng.integers(1, 40))
        a = rng.integers(0, 10 ** int(rng.integers(1, 19)), k, dtype=np.int64)
        b = rng.integers(0, 10 ** int(rng.integers(1, 12)), k, dtype=np.int64)
        b[rng.integers(0, k)] = 0
        a[rng.integers(0, k)] = int(rng.choice([0, 9, 10, (1 << 32) - 1, 1 << 32, (1 << 63) - 1]))
        want = (("[%d,%d]," * k) % tuple(np.stack([a, b], 1).ravel().tolist()))[:-1]
        assert _pairs_text(a, b) == want.encode()
    assert _pairs_text(np.zeros(0, np.int64), np.zeros(0, np.int64)) == b""
    for idx in ([0], [9, 10, 0, 1234567], list(range(200)), [(1 << 40) + 1, 3]):
        want = json.dumps([f"[{i}]" for i in idx], separators=(",", ":"))[1:-1]
        assert _index_json(np.array(idx, np.int64)) == want.encode()


def test_labels_text_is_what_json_writes() -> None:
    """Labels joined at once (nothing to escape) or by json.dumps: json.dumps's text either way."""
    rng = np.random.default_rng(3)
    alphabet = list("abc[]'().0189 _-") + ['"', "\\", "\n", "\x00", "\x7f", "é", "\u2028", "😀"]
    for _ in range(2000):
        labels = [
            "".join(rng.choice(alphabet, int(rng.integers(0, 6))).tolist())
            for _ in range(int(rng.integers(1, 6)))
        ]
        if rng.random() < 0.5:  # most labels: plain text
            labels = [lab for lab in labels if lab.isascii() and lab.isprintable()] or ["[0]"]
            labels = [lab.replace('"', "").replace("\\", "") for lab in labels]
        want = json.dumps(labels, separators=(",", ":"))[1:-1].encode()
        assert _strings_json(labels) == want, labels
