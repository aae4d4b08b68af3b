"""Dump files (introspect/snapshot/dumpfile.py) written from a real walker (the agent's forked
snapshot in a child of this interpreter, as scripts/fuzz_records records one), read back whole,
then broken on purpose: every break is a plain DumpError naming the file, never a partial heap."""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from introspect.snapshot import (
    dumpfile,
    dumpformat,
    dumplabels,
    dumpspill,
    dumpwrite,
    native,
    records,
)
from introspect.snapshot.dumpout import adler32_combine
from scripts.fuzz_records import TAKE, VICTIM

HEAD = len(dumpformat.DUMP_MAGIC)


def _dump(
    path: str,
    no_keys: bool = False,
    streamed: bool = False,
    tee: list[bytes] | None = None,
    victim: str = VICTIM,
    then: Callable[[Any], None] | None = None,
) -> None:
    """A dump of a small real heap, the walker answering every question live; ``streamed``: the
    records written to the file as they come (`introspect dump`), else from a whole snapshot.
    ``then``: called with the walker once the file is written, while it still answers."""
    from introspect.agent import AGENT_PATH
    from introspect.snapshot.collect import Walker

    with tempfile.TemporaryDirectory(prefix="dumpfile-") as d:
        stream, control = f"{d}/stream", f"{d}/control"
        os.mkfifo(stream, 0o600)
        os.mkfifo(control, 0o600)
        fd = os.open(stream, os.O_RDONLY | os.O_NONBLOCK)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", victim, stream, control, str(AGENT_PATH)],
            stdout=subprocess.DEVNULL,
        )
        walker = None
        try:
            reader = records.Reader(fd, time.monotonic() + 60)
            metas: list[dict[str, object]] = []
            out = dumpwrite.DumpFile(path) if streamed else None
            read = out.read if out is not None else records.read_snapshot
            snap = read(reader, on_meta=metas.append, tee=tee)
            walker = Walker(
                reader,
                control,
                int(str(metas[0]["pid"])),
                int(str(metas[0]["start_ticks"])),
                reader.deadline,
            )
            facts = {"pid": proc.pid, "python": "test", "time": time.time()}
            if out is not None:
                out.answers(snap, walker, facts, no_keys, lambda s: None)
                out.commit()
            else:
                dumpwrite.write(path, snap, walker, facts, no_keys)
            if then is not None:
                then(walker)
        finally:
            if walker is not None:
                walker.close()
                walker.kill()
            proc.wait(30)
            os.close(fd)


def _raw(good: Path) -> bytes:
    return zlib.decompress(good.read_bytes()[HEAD:])


def _refused(tmp: Path, raw: bytes, name: str = "bad.pydump") -> str:
    p = tmp / name
    p.write_bytes(dumpformat.DUMP_MAGIC + zlib.compress(raw))
    with pytest.raises(dumpfile.DumpError) as caught:
        dumpfile.load(str(p))
    assert caught.value.exit_code == 14 and str(p) in str(caught.value)
    return str(caught.value)


def _frames(raw: bytes) -> list[tuple[bytes, int, int]]:
    """(kind, start, end) of every frame after the records' MAGIC."""
    out, off = [], len(records.MAGIC)
    while off + 5 <= len(raw):
        end = off + 5 + int.from_bytes(raw[off + 1 : off + 5], "little")
        out.append((raw[off : off + 1], off, end))
        off = end
    return out


def _json_frame(kind: bytes, doc: object) -> bytes:
    payload = json.dumps(doc).encode()
    return kind + len(payload).to_bytes(4, "little") + payload


def test_a_real_dump_reads_back_whole(good: Path) -> None:
    assert stat.S_IMODE(os.stat(good).st_mode) == 0o600
    d = dumpfile.load(str(good))
    snap = d.snap
    assert snap.n > 600 and len(d.labels) == snap.refs.shape[0] and d.facts["python"] == "test"
    # the walker's answers are in the file: labels of the victim's dicts, module names, counts
    assert len(_victims_records(d)) >= 300


def test_a_version_1_dump_still_reads(good: Path, tmp_path: Path) -> None:
    # GIVEN a dump as introspect wrote them before format 3: version 1, records of format 2
    # (what a dump written from a whole snapshot still holds)
    assert _raw(good).startswith(records.MAGIC_2)
    old = tmp_path / "v1.pydump"
    old.write_bytes(b"INTROSPECT-DUMP 1\n" + good.read_bytes()[HEAD:])
    # THEN it reads back as the same heap
    a, b = dumpfile.load(str(old)), dumpfile.load(str(good))
    assert a.snap.n == b.snap.n and np.array_equal(a.snap.refs, b.snap.refs)
    assert len(a.labels) == len(b.labels) == a.snap.refs.shape[0]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dump whose records went to the file as they streamed (what `introspect dump` does):
    the walker's own stream, of format 3 (addresses)."""
    p = tmp_path_factory.mktemp("dump") / "streamed.pydump"
    tee: list[bytes] = []
    _dump(str(p), streamed=True, tee=tee)
    (p.parent / "stream").write_bytes(records.MAGIC + b"".join(tee))  # as the walker sent it
    return p


def test_a_streamed_dump_reads_as_a_whole_one(good: Path, streamed: Path) -> None:
    # GIVEN a dump of a format-3 stream (addresses), resolved as it was read; its records are
    # written in format 2 (positions)
    p = streamed
    assert (p.parent / "stream").read_bytes().startswith(records.MAGIC)
    assert _raw(p).startswith(records.MAGIC_2)
    # THEN it reads back whole, as the one written from a snapshot held whole
    d, whole = dumpfile.load(str(p)), dumpfile.load(str(good))
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and not list(p.parent.glob("*.part"))
    assert len(d.labels) == d.snap.refs.shape[0] and d.snap.n > 600
    assert abs(d.snap.n - whole.snap.n) < 50 and set(d.snap.types) == set(whole.snap.types)
    # the walker answered by positions in the order it streamed the objects, which the
    # addresses resolved to: each of the victim's records is a dict labelled ['k'] and ['v']
    assert len(_victims_records(d)) >= 300


def _victims_records(d: dumpfile.Dump) -> list[int]:
    """The victim's records as the file's answers show them: dicts of two items labelled ['k']
    and ['v'] (and __main__ named by the file)."""
    snap, w = d.snap, dumpfile.FileWalker(d)
    main = next(r.pos for r in snap.roots if r.kind == "module" and r.name == "__main__")
    assert w.names([main]) == ["__main__"]
    dicts = [p for p in range(snap.n) if snap.type_name(p) == "dict" and w.counts([p]) == [2]]
    return [
        p
        for p in dicts
        if {"['k']", "['v']"} <= set(w.labels([(p, int(k)) for k in snap.referents(p)]))
    ]


def test_a_dump_of_format_3_records_still_reads(streamed: Path, tmp_path: Path) -> None:
    # GIVEN a version-2 dump whose records are the walker's own format-3 stream (addresses), as
    # `dump` wrote them for a while, with the answers of the dump that resolved them on disk
    raw = _raw(streamed)
    e_end = next(end for kind, _, end in _frames(raw) if kind == b"E")
    p = tmp_path / "f3.pydump"
    f3 = (streamed.parent / "stream").read_bytes()
    p.write_bytes(dumpformat.DUMP_MAGIC + zlib.compress(f3 + raw[e_end:]))
    # THEN it reads back as the same heap, every label in place (addresses resolved in memory)
    a, b = dumpfile.load(str(p)), dumpfile.load(str(streamed))
    assert a.snap.n == b.snap.n and np.array_equal(a.snap.refs, b.snap.refs)
    assert np.array_equal(a.snap.offsets, b.snap.offsets) and len(a.labels) == len(b.labels)


def _records(good: Path) -> bytes:
    """The record stream inside a dump: MAGIC up to its E frame."""
    raw = _raw(good)
    return raw[: next(end for kind, _, end in _frames(raw) if kind == b"E")]


def test_streaming_keeps_only_what_the_questions_need(good: Path, tmp_path: Path) -> None:
    # GIVEN the record stream of a real dump, read whole and streamed to a new dump's file
    stream = _records(good)
    whole = records.read_snapshot(records.BytesReader(stream))
    out = dumpwrite.DumpFile(str(tmp_path / "s.pydump"))
    snap = out.read(records.BytesReader(stream))
    out.abort()
    # THEN types and references are kept, not in memory but in unnamed spill files (the
    # snapshot maps them), sizes only summed, the rest dropped
    assert all(isinstance(a, np.memmap) for a in (snap.type_of, snap.offsets, snap.refs))
    assert (snap.type_of == whole.type_of).all() and (snap.refs == whole.refs).all()
    assert (snap.offsets == whole.offsets).all() and snap.roots == whole.roots
    assert out.size_total == int(whole.size.sum()) and snap.size.shape[0] == 0
    assert out.size_over == int(whole.size[whole.size > 512].sum())
    assert snap.excess.shape[0] == 0 and snap.tracked.shape[0] == 0
    assert not list(tmp_path.iterdir())  # aborted: no file, no temporary


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_addresses_resolve_on_disk_as_in_memory(streamed: Path, tmp_path: Path,
                                                compiled: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # (with the CLI's compiled loops, introspect/snapshot/_graphc.c, and with numpy's)
    if compiled:
        assert native.lib() is not None, "introspect/snapshot/_graphc.c is not built: scripts/setup"
    else:
        monkeypatch.setattr(native, "_LIB", None)
        monkeypatch.setattr(native, "_TRIED", True)
    # GIVEN the walker's record stream (format 3), two of its references made addresses of no
    # object and its last object given the first one's address (a duplicate)
    stream = bytearray((streamed.parent / "stream").read_bytes())
    fr = [(a, b) for kind, a, b in _frames(bytes(stream)) if kind == b"O"]
    start, count, items, _ = records.ARRAY_HEADER.unpack_from(stream, fr[0][0] + 5)
    head = fr[0][0] + 5 + records.ARRAY_HEADER.size
    assert start == 0 and items >= 3
    refs_at, addr_at = head + 16 * count, head + 16 * count + 8 * items + count
    first = stream[addr_at : addr_at + 8]
    stream[refs_at : refs_at + 8] = (8).to_bytes(8, "little")
    stream[refs_at + 16 : refs_at + 24] = (1 << 62).to_bytes(8, "little")
    stream[fr[-1][1] - 8 : fr[-1][1]] = first
    whole = records.read_snapshot(records.BytesReader(bytes(stream)))
    lost, dups = whole.end["unknown_refs"], whole.end["duplicate_objects"]
    assert lost >= 2 and dups >= 1
    # WHEN its object frames are spilled and resolved, in one pass or in 3 and in 40
    n = whole.n
    for per_pass, block in ((1 << 20, 1 << 18), (-(-n // 3), 4099), (-(-n // 40), 577)):
        spill = dumpspill.Spill(str(tmp_path), per_pass, block)
        for a, b in fr:
            spill.add(bytes(stream[a + 5 : b]), 3)
        # THEN the references, their offsets and the counts are those of the read in memory
        assert spill.resolve() == (lost, dups)
        got = spill.maps()
        assert np.array_equal(got["refs"], whole.refs), (per_pass, block)
        assert np.array_equal(got["offsets"], whole.offsets), (per_pass, block)
        assert np.array_equal(got["type_of"], whole.type_of)
        spill.close()
    # and a dump streamed from it holds the same, its end saying what was dropped
    out = dumpwrite.DumpFile(str(tmp_path / "s.pydump"))
    snap = out.read(records.BytesReader(bytes(stream)))
    assert np.array_equal(snap.refs, whole.refs) and np.array_equal(snap.offsets, whole.offsets)
    assert (snap.end["unknown_refs"], snap.end["duplicate_objects"]) == (lost, dups)
    out.abort()
    assert not list(tmp_path.iterdir())


def test_a_broken_stream_is_refused_while_streaming(good: Path, tmp_path: Path) -> None:
    # GIVEN the stream with one reference pointing past the known positions (an O frame's last
    # reference, just before its tracked flags), and the stream cut short
    stream = bytearray(_records(good))
    kind, start, end = next(f for f in _frames(bytes(stream)) if f[0] == b"O")
    count = int.from_bytes(stream[start + 5 + 8 : start + 5 + 16], "little")
    at = end - count - 4
    stream[at : at + 4] = (1 << 30).to_bytes(4, "little")
    for bad, rule in ((bytes(stream), "reference index"), (_records(good)[:-9], None)):
        out = dumpwrite.DumpFile(str(tmp_path / "b.pydump"))
        # THEN the frame that breaks a rule ends the read (FormatError, or the stream's end)
        with pytest.raises(records.StreamError) as caught:
            out.read(records.BytesReader(bad))
        out.abort()
        assert rule is None or getattr(caught.value, "rule", None) == rule
        assert not list(tmp_path.iterdir())


def test_no_keys_writes_key_types(tmp_path: Path) -> None:
    p = tmp_path / "nokeys.pydump"
    _dump(str(p), no_keys=True)
    d = dumpfile.load(str(p))
    table = set(d.labels.table)
    assert "['k']" not in table and "['v']" not in table and "[str]" in table


def test_broken_answers_each_break_a_rule(good: Path, tmp_path: Path) -> None:
    raw = _raw(good)
    fr = _frames(raw)
    ys = [(a, b) for k, a, b in fr if k == b"Y" and b'"what":"labels"' in raw[a : a + 40]]
    ((z0, z1),) = [(a, b) for k, a, b in fr if k == b"Z"]
    ((d0, d1),) = [(a, b) for k, a, b in fr if k == b"D"]
    first_y = json.loads(raw[ys[0][0] + 5 : ys[0][1]])
    assert first_y["what"] == "labels"
    cases = {
        "no end frame": raw[:z0],
        "a second end": raw + raw[z0:z1],
        "labels skipped": raw[: ys[0][0]] + raw[ys[0][1] :],
        "labels twice": raw[: ys[0][1]] + raw[ys[0][0] :],
        "no facts": raw[:d0] + raw[d1:],
        "facts twice": raw[:d1] + raw[d0:],
        "name out of range": raw[:z0]
        + _json_frame(b"Y", {"what": "names", "start": 0, "items": [[10**9, "x"]]})
        + raw[z0:],
        "name not a string": raw[:z0]
        + _json_frame(b"Y", {"what": "names", "start": 0, "items": [[1, 5]]})
        + raw[z0:],
        "negative count": raw[:z0]
        + _json_frame(b"Y", {"what": "counts", "start": 0, "items": [[1, -3]]})
        + raw[z0:],
        **{
            f"count {how}": raw[:z0]
            + _json_frame(b"Y", {"what": "counts", "start": 0, "items": items})
            + raw[z0:]
            for how, items in (
                ("a boolean", [[1, True]]),
                ("a float", [[1, 2.0]]),
                ("past int64", [[1, 2**70]]),
                ("not a pair", [[1, 2, 3]]),
                ("a string", [["1", 2]]),
                ("for one position twice", [[1, 2], [1, 2]]),
                ("out of range", [[10**9, 2]]),
            )
        },
        **{
            f"label {how}": raw[: ys[0][0]]
            + _json_frame(b"Y", {**first_y, "items": first_y["items"][:-1] + [bad]})
            + raw[ys[0][1] :]
            for how, bad in (("a list", ["x"]), ("a number", 1.5), ("too long", "x" * 70_000))
        },
        "unknown answer": raw[:z0]
        + _json_frame(b"Y", {"what": "values", "start": 0, "items": []})
        + raw[z0:],
        "label not a string": raw[: ys[0][0]]
        + _json_frame(b"Y", {**first_y, "items": [1] * len(first_y["items"])})
        + raw[ys[0][1] :],
        "pid not an int": raw[:d0] + _json_frame(b"D", {"pid": "1"}) + raw[d1:],
        "an unknown frame": raw[:z0] + b"Q\x00\x00\x00\x00" + raw[z0:],
        "records only": raw[:d0],
    }
    for name, data in cases.items():
        msg = _refused(tmp_path, data)
        assert "Traceback" not in msg, (name, msg)


def test_mutated_dumps_read_whole_or_refused(good: Path, tmp_path: Path) -> None:
    raw = _raw(good)
    rng = random.Random(19)
    outcomes = {"read": 0, "refused": 0}
    for i in range(150):
        data = bytearray(raw)
        how = rng.choice(("flip", "cut", "splice"))
        if how == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == "cut":
            data = data[: rng.randrange(len(data))]
        else:
            a = rng.randrange(len(data))
            data = data[:a] + data[a + rng.randint(1, 64) :]
        p = tmp_path / f"m{i}.pydump"
        p.write_bytes(dumpformat.DUMP_MAGIC + zlib.compress(bytes(data)))
        try:
            d = dumpfile.load(str(p))
        except dumpfile.DumpError as exc:
            assert str(p) in str(exc)
            outcomes["refused"] += 1
            continue
        # read whole: every reference has a label and every index is in range
        assert len(d.labels) == d.snap.refs.shape[0]
        assert all(0 <= q < d.snap.n for q in d.names)
        outcomes["read"] += 1
    assert outcomes["refused"] > 100, outcomes


def _memory_block(python_objects: int) -> dict[str, object]:
    """A breakdown as `introspect dump` writes it: this process's /proc, no allocator figures."""
    from introspect import breakdown

    missing: dict[str, str] = {}
    proc = breakdown.read_proc(os.getpid())
    mem = breakdown.compose(proc, python_objects, python_objects, None, missing)
    how = missing.pop("stacks_found", "")
    return dumpformat.memory_block(mem, missing, how, proc.threads, python_objects, 0.01)


def test_the_memory_breakdown_reads_back_checked(good: Path, tmp_path: Path) -> None:
    raw = _raw(good)
    ((d0, d1),) = [(a, b) for k, a, b in _frames(raw) if k == b"D"]
    facts = json.loads(raw[d0 + 5 : d1])
    py = int(dumpfile.load(str(good)).snap.size.sum())
    block = _memory_block(py)
    # GIVEN the facts with a breakdown whose verdict and advice were dropped by the writer
    assert "verdict" not in block["memory"]  # type: ignore[operator]

    def with_memory(b: object) -> bytes:
        return raw[:d0] + _json_frame(b"D", {**facts, "memory": b}) + raw[d1:]

    p = tmp_path / "mem.pydump"
    p.write_bytes(dumpformat.DUMP_MAGIC + zlib.compress(with_memory(block)))
    # THEN it reads back with its verdict made again from the figures
    got = dumpfile.load(str(p)).facts["memory"]
    assert got["memory"]["python_objects"] == py and got["memory"]["verdict"] in (
        *breakdown_verdicts(),
        None,
    )
    assert got["memory"]["advice"]

    # AND every figure out of its shape is refused whole, naming the memory breakdown
    def bent(**over: object) -> dict[str, object]:
        mem = {**block["memory"], **over}  # type: ignore[dict-item]
        return {**block, "memory": mem}

    cases: dict[str, object] = {
        "objects not the records'": bent(python_objects=py + 1),
        "negative uss": bent(uss=-5),
        "uss a string": bent(uss="big"),
        "uss a bool": bent(uss=True),
        "pymalloc not sizes": bent(pymalloc={"arenas": 1, "used": "x", "free": 0}),
        "malloc missing a field": bent(malloc={"allocator": "glibc"}),
        "an extra figure": bent(evil=1),
        "a verdict written in": bent(verdict="native"),
        "missing not texts": {**block, "missing": {"a": 1}},
        "missing huge": {**block, "missing": {str(i): "x" for i in range(100)}},
        "threads negative": {**block, "threads": -1},
        "copy_s a string": {**block, "copy_s": "1"},
        "a field short": {k: v for k, v in block.items() if k != "threads"},
        "not an object": [1, 2],
    }
    for name, b in cases.items():
        msg = _refused(tmp_path, with_memory(b), f"{name.replace(' ', '-')}.pydump")
        assert "memory" in msg and "Traceback" not in msg, (name, msg)


def breakdown_verdicts() -> tuple[str, ...]:
    from introspect import breakdown

    return breakdown.VERDICTS


# A heap of every shape whose labels a dump makes without asking the walker pair by pair: lists
# and tuples (labelled from their items' positions), items held twice (each gets its first
# index, as the walker answers), big containers (streamed, or mapped once by the walker), dicts
# sharing a value, keys that are references, split dicts whose keys came in another order.
TRICKY = r"""
import sys, time, collections
class Slot:
    __slots__ = ("a", "b")
class Plain:
    pass
x, y = object(), object()
s1 = Slot(); s1.a = x; s1.b = x
p1 = Plain(); p1.a = 1; p1.b = x
p2 = Plain(); p2.b = y; p2.a = x
dups = [x, x, y, x]
tdups = (y, x, y, "s")
selfish = []; selfish.append(selfish); selfish.append(x); selfish.append(selfish)
big = [object() for _ in range(1500)]
bigdup = [x, y, object()] * 500
bigtuple = tuple(object() for _ in range(1200))
bigdict = {i: (x if i % 3 else y) for i in range(1100)}
od = collections.OrderedDict(a=x, b=x)
keyed = {"k": x, "v": x, 5: y, (1, 2): y, 'q"\\': x}
nested = [[i] for i in range(100)] + [[x, x]] + [[y, x]] + [[]]
pairs = [(i, x) for i in range(200)]
members = {1, 2, 3, frozenset({x})}
def f():
    return x
""" + TAKE


def _asked_one_by_one(walker: Any, snap: records.Snapshot) -> list[str]:
    """Every reference's label asked of the live walker as `backrefs` asks them: pair by pair,
    fewer than the walker's run of one holder that it answers from a map (each scans its
    holder: _snap_via)."""
    out: list[str] = []
    for p in range(snap.n):
        kids = [int(c) for c in snap.referents(p)]
        for k in range(0, len(kids), 7):
            part = kids[k : k + 7]
            out += walker._ask(
                "L " + " ".join(f"{p} {c}" for c in part), len(part), lambda x: type(x) is str
            )
    return out


@pytest.mark.parametrize(("streamed", "ref_block"), [(False, 1000), (True, 1000), (True, 1)])
def test_labels_made_in_bulk_are_the_walkers_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool, ref_block: int
) -> None:
    # GIVEN small blocks, questions and chunks, so that the tricky heap spans many of each (with
    # blocks of one reference, every list or tuple of more is a big one, labelled on its own)
    small = {"LABEL_BLOCK": 97, "REF_BLOCK": ref_block, "COUNT_Q": 50, "CHUNK": 37}
    for name, value in small.items():
        monkeypatch.setattr(dumplabels, name, value)
        if hasattr(dumpwrite, name):
            monkeypatch.setattr(dumpwrite, name, value)
    p = tmp_path / "tricky.pydump"
    seen: dict[str, Any] = {}

    def oracle(walker: Any) -> None:
        d = dumpfile.load(str(p))
        seen["dump"] = d
        seen["labels"] = _asked_one_by_one(walker, d.snap)
        containers = [q for q in range(d.snap.n) if d.counts[q] >= 0]
        seen["counts"] = walker.counts(containers)
        seen["containers"] = containers

    logs: list[str] = []
    made: list[Any] = []
    monkeypatch.setattr(dumpwrite, "_Labeller", _logged(dumpwrite._Labeller, logs, made))
    _dump(str(p), streamed=streamed, victim=TRICKY, then=oracle)
    d = seen["dump"]
    # THEN every label in the file is the one the walker gives that reference alone
    got = [d.labels[k] for k in range(len(d.labels))]
    want = seen["labels"]
    assert len(got) == len(want) == d.snap.refs.shape[0] > 8000
    diff = [(k, got[k], want[k]) for k in range(len(got)) if got[k] != want[k]]
    assert not diff, diff[:10]
    # and every container's count is the walker's
    assert d.counts[seen["containers"]].tolist() == seen["counts"]
    # the items of lists and tuples (most of the heap's references) were not asked
    assert "dump: the items of list are traversed: reversed" in logs
    assert "dump: the items of tuple are traversed: reversed" in logs
    (lab,) = made
    assert len(got) - lab.asked > 1500 + 1200 + 300  # big, bigtuple, pairs and nested at least
    # every counts frame comes before the labels' (a reader parsing them among the labels'
    # frames fragments its heap)
    raw = _raw(p)
    whats = [
        json.loads(raw[a + 5 : b])["what"] for kind, a, b in _frames(raw) if kind == b"Y"
    ]
    first = whats.index("labels")
    assert whats.count("counts") > 3 and "counts" not in whats[first:]
    names = {d.labels[k] for k in range(len(d.labels))}
    assert {"[1499]", "[1199]", "['k']", "(key)", "[5]", ".a", ".b"} <= names


def _logged(cls: Any, logs: list[str], made: list[Any]) -> Any:
    """``cls`` (dumplabels._Labeller) with its log kept in ``logs``, each one made in ``made``."""

    def make(*args: Any) -> Any:
        made.append(cls(*args))
        made[-1].log = logs.append
        return made[-1]

    return make


def test_the_walkers_bulk_answers_are_its_pair_by_pair_ones() -> None:
    """In process (the agent's code, as the forked walker runs it): a run of pairs of one
    container answered from a map of its items equals _snap_via asked pair by pair, and the
    answers' JSON written at C speed is the JSON writer's."""
    import collections
    import runpy

    from introspect.agent import AGENT_PATH

    ag = runpy.run_path(str(AGENT_PATH))
    x, y = object(), object()
    holders: list[Any] = [
        [x, x, y] * 20,
        (y, x) * 10,
        {i: (x if i % 2 else y) for i in range(30)},
        collections.OrderedDict((str(i), x) for i in range(12)),
        {("t", i): x for i in range(10)},
        [],
    ]
    holders[5].extend([holders[5], x] * 6)
    keep = [*holders, x, y]
    for h in holders:
        kids = list(h) if not isinstance(h, dict) else [*h.values(), *h.keys()]
        keep += [k for k in kids if all(k is not q for q in keep)]
    nums: list[int] = []
    pos = {id(o): i for i, o in enumerate(keep)}
    for h in holders:
        kids = list(h) if not isinstance(h, dict) else [*h.values(), *h.keys()]
        for k in kids:
            nums += [pos[id(h)], pos[id(k)]]
    nums += [pos[id(holders[0])], pos[id(y)], pos[id(holders[2])], pos[id(x)]]  # short runs
    want = [ag["_snap_via"](keep[nums[k]], keep[nums[k + 1]]) for k in range(0, len(nums), 2)]
    cache: list[Any] = [None, None]
    assert ag["_snap_label_pairs"](keep, nums, cache) == want
    assert cache[0] is holders[5]  # the last long run's map is kept for the next question
    assert ag["_snap_label_pairs"](keep, nums, cache) == want
    for answer in (
        want,
        ['q"', "back\\slash", "ctl\x01", "é ☃", "\ud800"],
        [3, -1, 0, 2**40],
        [],
        [[1, "a"]],
        [True, 1],
    ):
        assert ag["_snap_answer_json"](answer) == ag["_snap_json"](answer), answer
    assert ag["_snap_counts"](keep, [0, 1, 2, 5]) == [60, 20, 30, 12]  # len() at C speed
    assert ag["_snap_counts"](keep, [0, 3, len(holders)]) == [60, 12, -1]  # one by one


def test_a_write_error_ends_the_dump_and_its_threads() -> None:
    # GIVEN a dump's compressed output going to a full disk (threads compress while the CLI
    # makes the next frames and writes what they compressed)
    fd = os.open("/dev/full", os.O_WRONLY)
    out = dumpwrite._Out(fd)
    try:
        # THEN the error reaches the CLI's thread (at a later put, or at the end), and the
        # threads are gone once stopped
        with pytest.raises(OSError) as caught:
            for _ in range(64):
                out.put(os.urandom(1 << 20))
            out.finish()
        assert caught.value.errno == errno.ENOSPC
    finally:
        out.stop()
        os.close(fd)
    assert out.threads == []


@pytest.mark.parametrize("sizes", [[], [0], [3], [100] * 10000, [5 << 20, 4, 1 << 18, 7]])
def test_pieces_compressed_apart_are_one_zlib_stream(sizes: list[int], tmp_path: Path) -> None:
    """What _Out writes is one zlib stream (its Adler-32 checked by zlib) of what was put, in
    order, whether put as small frames gathered or big ones cut into pieces."""
    rng = np.random.default_rng(len(sizes))
    parts = [
        rng.integers(0, 4, k, np.uint8).tobytes() if k % 2 else bytes(k) for k in sizes
    ]
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    out = dumpwrite._Out(fd)
    for p in parts:
        out.put(p)
    out.finish()
    os.close(fd)
    data = (tmp_path / "out").read_bytes()
    assert zlib.decompress(data) == b"".join(parts)
    assert out.written == len(data) and out.raw == sum(sizes)
    for _ in range(300):  # the pieces' checksums combined as zlib combines them
        a, b = rng.bytes(int(rng.integers(0, 100))), rng.bytes(int(rng.integers(0, 1 << 17)))
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


def test_pair_notes_say_other_process_and_order() -> None:
    # growth OLD NEW and report F1 F2 warn, never refuse: two processes, or the files swapped
    a = {"pid": 10, "start_ticks": 500, "time": 100.0}
    assert dumpfile.pair_notes("a.pydump", "b.pydump", a, dict(a, time=200.0)) == []
    other = {"pid": 10, "start_ticks": 900, "time": 50.0}  # a reused pid: another process
    notes = dumpfile.pair_notes("a.pydump", "b.pydump", a, other)
    assert len(notes) == 2
    assert notes[0].startswith("a.pydump and b.pydump are dumps of different processes (pid 10")
    assert notes[1].startswith("b.pydump was taken before a.pydump")
    assert dumpfile.other_process(a, other) and not dumpfile.other_process(a, dict(a))
