"""The record-stream reader (introspect/snapshot/records.py) against hostile streams: a real stream
from the agent's walker, mutated thousands of times with a fixed seed (scripts/fuzz-records runs
more), and hand-made breaks of each rule. Every case is a valid snapshot or a plain error."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest

from introspect.snapshot import dumpwrite, records
from scripts.fuzz_records import frames, fuzz, record

ROUNDS = 2000  # a few seconds here; scripts/fuzz-records --rounds N for more


@pytest.fixture(scope="module")
def stream() -> bytes:
    return record(sys.executable)


def test_the_real_stream_reads(stream: bytes) -> None:
    snap = records.read_snapshot(records.BytesReader(stream))
    assert snap.n > 1000 and snap.refs.shape[0] > snap.n // 2 and "dict" in snap.types
    assert any(r.kind == "module" and r.name == "__main__" for r in snap.roots)


def test_mutated_streams_end_in_a_snapshot_or_a_plain_error(stream: bytes) -> None:
    seen = fuzz(stream, ROUNDS, seed=24)
    refused = sum(c for k, c in seen.items() if "refused" in k)
    kinds = {k.split(" -> ")[0] for k in seen}
    # every kind of mutation was tried, and most broke a rule (the rest changed only content)
    assert {
        "flip",
        "truncate",
        "swap",
        "huge-length",
        "ref",
        "type",
        "nrefs",
        "header",
        "json",
    } <= kinds, kinds
    assert refused > ROUNDS // 2, seen
    assert (
        sum(c for k, c in seen.items() if k.endswith("(file)")) == ROUNDS // 10
    )  # read back as recorded files


def _frame(data: bytes, kind: bytes) -> tuple[int, int]:
    return next((a, b) for a, b in frames(data) if data[a : a + 1] == kind)


def _rule(data: bytes) -> str:
    with pytest.raises(records.FormatError) as caught:
        records.read_snapshot(records.BytesReader(data))
    assert caught.value.exit_code == 14 and "Traceback" not in str(caught.value)
    return caught.value.rule


def _o_column(data: bytes, name: str) -> int:
    """Offset of the first entry of column ``name`` in the first O frame (of the stream's format,
    from its magic)."""
    a, _ = _frame(data, b"O")
    _start, count, items, _known = records.ARRAY_HEADER.unpack_from(data, a + 5)
    off = a + 5 + records.ARRAY_HEADER.size
    fmt = records.MAGICS[data[: len(records.MAGIC)]]
    for col, dtype, per in records.FORMAT_FRAMES[fmt][b"O"]:
        if col == name:
            return off
        off += (count if per == records.PER_OBJECT else items) * int(np.dtype(dtype).itemsize)
    raise KeyError(name)


class _Raw:
    """dumpwrite's _Out without the compression: the frames' bytes as written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def put(self, data: bytes) -> None:
        self.data += data

    def frame(self, kind: bytes, payload: bytes) -> None:
        self.put(kind + len(payload).to_bytes(4, "little") + payload)

    def json(self, kind: bytes, doc: object) -> None:
        self.frame(kind, json.dumps(doc, separators=(",", ":")).encode())


@pytest.fixture(scope="module")
def stream2(stream: bytes) -> bytes:
    """The real stream as format 2 (positions), as dump files before format 3 hold it."""
    out = _Raw()
    dumpwrite._write_snapshot(out, records.read_snapshot(records.BytesReader(stream)))  # type: ignore[arg-type]
    return bytes(out.data)


def test_format_2_still_reads_the_same(stream: bytes, stream2: bytes) -> None:
    assert stream2.startswith(records.MAGIC_2) and stream.startswith(records.MAGIC)
    a = records.read_snapshot(records.BytesReader(stream))
    b = records.read_snapshot(records.BytesReader(stream2))
    assert a.n == b.n and a.types == b.types and a.roots == b.roots
    for col in ("type_of", "size", "tracked", "offsets", "refs", "excess"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col


@pytest.mark.parametrize("value, rule", [(99_999_999, "reference index"), (-1, "reference index")])
def test_reference_out_of_range(stream2: bytes, value: int, rule: str) -> None:
    at = _o_column(stream2, "refs")
    assert _rule(stream2[:at] + struct.pack("<i", value) + stream2[at + 4 :]) == rule


@pytest.mark.parametrize("value", [0, 8, 99_999_999, (1 << 64) - 1])
def test_reference_to_no_object_is_dropped_and_counted(stream: bytes, value: int) -> None:
    """Format 3: a reference is an address; one that no object has is never looked up: dropped."""
    whole = records.read_snapshot(records.BytesReader(stream))
    at = _o_column(stream, "refs")
    snap = records.read_snapshot(
        records.BytesReader(stream[:at] + struct.pack("<Q", value) + stream[at + 8 :])
    )
    assert snap.end["unknown_refs"] == whole.end.get("unknown_refs", 0) + 1
    assert snap.refs.shape[0] == whole.refs.shape[0] - 1
    assert int(snap.offsets[-1]) == snap.refs.shape[0] and 0 <= int(snap.refs.min())
    assert int(snap.refs.max()) < snap.n


def test_two_objects_at_one_address_share_its_references(stream: bytes) -> None:
    at = _o_column(stream, "addr")
    first = stream[at : at + 8]
    snap = records.read_snapshot(records.BytesReader(stream[: at + 8] + first + stream[at + 16 :]))
    whole = records.read_snapshot(records.BytesReader(stream))
    assert snap.end["duplicate_objects"] == 1 and snap.n == whole.n
    # the references to that address go to one of the two; those to object 1's own are dropped
    assert int(snap.refs.max()) < snap.n
    to0, to1 = np.count_nonzero(snap.refs == 0), np.count_nonzero(snap.refs == 1)
    assert (to0 == 0 or to1 == 0) and to0 + to1 == np.count_nonzero(whole.refs == 0)
    assert snap.end["unknown_refs"] == whole.end.get("unknown_refs", 0) + np.count_nonzero(
        whole.refs == 1
    )


def test_negative_type_index(stream: bytes) -> None:
    at = _o_column(stream, "type_of")
    assert _rule(stream[:at] + struct.pack("<i", -1) + stream[at + 4 :]) == "type index"


def test_huge_frame_length_is_refused_before_reading(stream: bytes) -> None:
    a, _ = _frame(stream, b"O")
    huge = stream[: a + 1] + (0xFFFFFFFF).to_bytes(4, "little") + stream[a + 5 :]
    limits = records.Limits.for_memory(64 << 20)
    with pytest.raises(records.FormatError, match="stream size"):
        records.read_snapshot(records.BytesReader(huge, limits))
    assert (
        _rule(stream[:a] + b"M" + (2 << 20).to_bytes(4, "little") + stream[a + 5 :]) == "frame size"
    )


def test_swapped_and_missing_frames(stream: bytes) -> None:
    spans = frames(stream)
    parts = [stream[a:b] for a, b in spans]
    assert _rule(records.MAGIC + b"".join([parts[1], parts[0], *parts[2:]])) == "meta first"
    e = next(i for i, p in enumerate(parts) if p[:1] == b"E")
    c = next(i for i, p in enumerate(parts) if p[:1] == b"C")
    assert _rule(records.MAGIC + b"".join(parts[:c] + parts[c + 1 :])) == "refcount per object"
    with pytest.raises(
        records.StreamError, match="ended early"
    ):  # no end frame: never a partial snapshot
        records.read_snapshot(records.BytesReader(records.MAGIC + b"".join(parts[:e])))


def test_json_where_arrays_belong_and_deep_nesting(stream: bytes) -> None:
    a, b = _frame(stream, b"R")
    for payload, rule in [
        (b"[" * 200_000, "json"),
        (b'[["module", "m", -1]]', "root index"),
        (b'[["module", "m", 99999999]]', "root index"),
        (b'{"a": 1}', "roots"),
    ]:
        assert (
            _rule(stream[: a + 1] + len(payload).to_bytes(4, "little") + payload + stream[b:])
            == rule
        )
