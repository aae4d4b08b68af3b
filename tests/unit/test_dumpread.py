"""How dumpfile.py reads a dump: decompressed frame by frame (never the whole stream in memory),
counts frames in the writer's compact form read without JSON, labels' index texts ``[k]`` kept as
numbers (dumptable.py), and a broken file still getting the error a read of the whole stream
gives. Every case compares with the plain reading: JSON, a dict of texts, the whole stream."""

from __future__ import annotations

import itertools
import json
import random
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from introspect.snapshot import dumpfile, dumpformat, dumptable, records
from tests.unit.test_dumpfile import HEAD, _frames, _json_frame


def _raw(good: Path) -> bytes:
    return zlib.decompress(good.read_bytes()[HEAD:])


def _write(p: Path, raw: bytes, tail: bytes = b"") -> str:
    p.write_bytes(dumpformat.DUMP_MAGIC + zlib.compress(raw) + tail)
    return str(p)


def _refusal(path: str) -> str:
    with pytest.raises(dumpfile.DumpError) as caught:
        dumpfile.load(path)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# labels: the table of distinct texts


def _plain(batches: list[list[str]]) -> tuple[list[str], list[int]]:
    """The table and codes as a dict of every text makes them (the reader before dumptable)."""
    index: dict[str, int] = {}
    codes = []
    for items in batches:
        for s in items:
            codes.append(index.setdefault(s, len(index)))
    return list(index), codes


def test_index_texts_kept_as_numbers_read_back_as_the_same_table() -> None:
    rng = random.Random(7)
    odd = ["[01]", "[-1]", "[ 1]", "[1]x", "x[1]", "[]", "[", "]", "", "[1\x002]", "a\x00b",
           "[\ud800]", "[٣]", "[1.0]", "['b']", "__dict__", "[99999999999999999999]",
           f"[{10**18}]", "[500]", "[499]", "[0]", "[00]"]
    batches = []
    for _ in range(40):
        n = rng.randint(0, 300)
        batches.append([rng.choice(odd) if rng.random() < 0.3 else f"[{rng.randrange(700)}]"
                        for _ in range(n)])
    total = sum(map(len, batches))
    labels = dumptable.Labels(500)  # "[k]" kept as k below 500 only
    for items in batches:
        distinct = dumpformat.distinct_labels(items)
        assert distinct is not None
        labels.extend(items, distinct)
    labels.seal()
    table, codes = _plain(batches)
    assert len(labels) == total and labels.codes.tolist() == codes
    assert list(labels.table) == table and len(labels.table) == len(table)
    assert [labels.table[c] for c in range(len(table))] == table
    assert labels.table[-1] == table[-1] and labels.table[1:5] == table[1:5]
    assert [labels[k] for k in range(total)] == [table[c] for c in codes]
    kept_as_k = sum(r >= 0 for r in labels.table._ref[: len(table)].tolist())
    assert kept_as_k > 300 and len(labels.table.strings) == len(table) - kept_as_k
    for text in table:
        assert text in labels.table and labels.table.index(text) == table.index(text)
    assert "[700]" not in labels.table and "nothing" not in labels.table
    with pytest.raises(ValueError):
        labels.table.index("[0]", table.index("[0]") + 1)
    with pytest.raises(IndexError):
        labels.table[len(table)]


def test_index_of_reads_only_plain_decimal_indices() -> None:
    texts = ["[0]", "[7]", "[10]", "[007]", "[-3]", "[+3]", "[3 ]", "[٣]", "[3]]", "[[3]",
             "[123456789012345678]", "[1234567890123456789]", "[41]", "x", "", "[]"]
    got = dumptable.index_of(texts, 42).tolist()
    assert got == [0, 7, 10, -1, -1, -1, -1, -1, -1, -1, -1, -1, 41, -1, -1, -1]
    assert dumptable.index_of(texts, 1 << 62).tolist()[10] == 123456789012345678
    assert dumptable.index_of(["a\x00[1]", "[2]"], 9).tolist() == [-1, 2]  # NUL: one by one


# ---------------------------------------------------------------------------------------------
# counts frames


def _counts_payload(items: list[list[int]], start: int = 0) -> bytes:
    return json.dumps({"what": "counts", "start": start, "items": items},
                      separators=(",", ":")).encode()


def test_compact_counts_are_the_ints_json_reads() -> None:
    rng = random.Random(3)
    for k in (0, 1, 2, 5, 1000):
        items = [[rng.randrange(10**rng.randint(1, 18)), rng.randrange(10**rng.randint(1, 18))]
                 for _ in range(k)]
        p = _counts_payload(items, rng.randrange(10**6))
        rows = dumpfile._compact_counts(p)
        assert rows is not None and rows.dtype == np.int64 and rows.shape == (k, 2)
        assert rows.tolist() == json.loads(p)["items"]
    # not the writer's form: left to JSON (which reads some, refuses others)
    good = _counts_payload([[1, 2], [3, 4]])
    for p in (
        json.dumps(json.loads(good)).encode(),  # spaces
        good.replace(b"[1,", b"[01,"), good.replace(b'"start":0', b'"start":00'),
        good.replace(b"[1,2]", b"[-1,2]"), good.replace(b"[1,2]", b"[1,2.0]"),
        good.replace(b"[1,2]", b"[1,2e0]"), good.replace(b"[1,2]", b"[1,2,3]"),
        good.replace(b"[1,2]", b"[[1,2]]"), good.replace(b"[1,2]", b"[1]"),
        good.replace(b"]]}", b"],]}"), good.replace(b"[1,2]", b"[1,1234567890123456789]"),
        good[:-1] + b',"what":"names"}', good.replace(b'"what":"counts"', b'"what":"names"'),
        good.replace(b"[1,2],", b"[1,2] ,"), good + b" ", good.replace(b"[1,2]", b"[1,true]"),
    ):
        assert dumpfile._compact_counts(p) is None, p


def test_counts_in_json_form_read_as_the_compact_ones(good: Path, tmp_path: Path) -> None:
    raw = _raw(good)
    out, done = bytearray(), 0
    for kind, a, b in _frames(raw):
        if kind == b"Y" and raw[a + 5 : a + 30].startswith(b'{"what":"counts"'):
            doc = json.loads(raw[a + 5 : b])
            out += raw[done:a] + _json_frame(b"Y", doc)  # json.dumps' own spaces
            done = b
    spaced = _write(tmp_path / "spaced.pydump", bytes(out + raw[done:]))
    a, b = dumpfile.load(str(good)), dumpfile.load(spaced)
    assert (a.counts >= 0).sum() > 100 and np.array_equal(a.counts, b.counts)
    assert a.labels.codes.tolist() == b.labels.codes.tolist()


# ---------------------------------------------------------------------------------------------
# the stream, decompressed as it is read


def test_a_dump_is_never_held_whole_while_read(good: Path, tmp_path: Path) -> None:
    """Labels of 2,000 characters (64 distinct): 40 MB of stream, read with a few MB."""
    raw = _raw(good)
    fr = _frames(raw)
    ys = [(a, b) for k, a, b in fr if k == b"Y" and b'"what":"labels"' in raw[a : a + 40]]
    total = sum(len(json.loads(raw[a + 5 : b])["items"]) for a, b in ys)
    rng = random.Random(5)  # texts a zlib window apart: the file is not a "zip bomb"
    texts = ["".join(rng.choices("abcdefghij", k=2000)) for _ in range(64)]
    frames, step = b"", 1000
    for s in range(0, total, step):
        items = [texts[i % 64] for i in range(s, min(s + step, total))]
        frames += _json_frame(b"Y", {"what": "labels", "start": s, "items": items})
    # the other frames as they were, the new labels where the first labels frame was
    big = raw[: len(records.MAGIC)] + b"".join(
        (frames if (a, b) == ys[0] else b"") if (a, b) in ys else raw[a:b] for _, a, b in fr
    )
    assert len(big) > 40 << 20
    path = _write(tmp_path / "long.pydump", big)
    tracemalloc.start()
    try:
        d = dumpfile.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(d.labels) == total and d.labels[total - 1] == texts[(total - 1) % 64]
    assert peak < 20 << 20, peak  # a frame (2 MB) and its strings, not the 40 MB stream


def test_a_big_frame_reads_through_its_own_buffer(good: Path, tmp_path: Path) -> None:
    """A frame past records.BIG_FRAME (a million-item container's references) reads whole."""
    raw = _raw(good)
    fr = _frames(raw)
    ((z0, _),) = [(a, b) for k, a, b in fr if k == b"Z"]
    d = dumpfile.load(str(good))
    free = [p for p in range(d.snap.n) if p not in d.names and p not in d.freevars][:3]
    names = [[free[0], "n" * 60_000], [free[1], "m" * 60_000]]
    payload = json.dumps(
        {"what": "freevars", "start": 0, "items": [[free[2], ["v" * 4000] * 400]]}
    )
    assert len(payload) > records.BIG_FRAME
    extra = _json_frame(b"Y", {"what": "names", "start": 0, "items": names})
    data = raw[:z0] + extra + b"Y" + len(payload).to_bytes(4, "little") + payload.encode()
    d = dumpfile.load(_write(tmp_path / "bigframe.pydump", data + raw[z0:]))
    assert d.freevars[free[2]] == ["v" * 4000] * 400 and d.names[free[1]] == "m" * 60_000


def test_broken_files_get_the_whole_reads_error(good: Path, tmp_path: Path) -> None:
    raw = _raw(good)
    fr = _frames(raw)
    ((z0, _),) = [(a, b) for k, a, b in fr if k == b"Z"]
    # a frame a byte longer than what is left: the rule of the stream's true size, as when the
    # stream was held whole (read with the largest bound first, then again with the true one)
    cut = raw[:z0] + b"Z" + (len(raw) - z0 - 4).to_bytes(4, "little") + raw[z0 + 5 :]
    msg = _refusal(_write(tmp_path / "long.pydump", cut))
    assert "'stream size'" in msg and f"bound of {len(cut):,} bytes" in msg, msg
    # records broken early and bytes after the compressed data: the compressed data's error,
    # which a whole read met first
    early = raw[:100] + b"\xff" * 8 + raw[108:]
    msg = _refusal(_write(tmp_path / "both.pydump", early, tail=b"junk"))
    assert msg.endswith("has bytes after the end of its compressed data"), msg
    # damaged compressed data after a record that breaks a rule: the damage is named
    comp = bytearray(zlib.compress(early))
    comp[-3] ^= 0xFF  # the checksum
    p = tmp_path / "damaged.pydump"
    p.write_bytes(dumpformat.DUMP_MAGIC + bytes(comp))
    assert "is corrupted: its compressed data is damaged" in _refusal(str(p))
    # a zip bomb after a whole dump, and data after the end frame
    bomb = _write(tmp_path / "bomb.pydump", raw + bytes(len(raw) * 300))
    assert "decompresses to more than" in _refusal(bomb)
    after = _write(tmp_path / "after.pydump", raw + b"x")
    assert _refusal(after).endswith("has data after its end frame")
    # truncated anywhere: each cut a plain error
    whole = good.read_bytes()
    for at in itertools.chain(range(HEAD, HEAD + 20), range(HEAD + 20, len(whole), 997)):
        p = tmp_path / "cut.pydump"
        p.write_bytes(whole[:at])
        assert str(p) in _refusal(str(p))
