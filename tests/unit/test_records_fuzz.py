"""The record-stream reader (introspect/snapshot/records.py) against hostile streams: a real stream
from the agent's walker, mutated thousands of times with a fixed seed (scripts/fuzz-records runs
more), and hand-made breaks of each rule. Every case is a valid snapshot or a plain error."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from introspect.snapshot import records
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
    """Offset of the first entry of column ``name`` in the first O frame."""
    a, _ = _frame(data, b"O")
    _start, count, items, _known = records.ARRAY_HEADER.unpack_from(data, a + 5)
    off = a + 5 + records.ARRAY_HEADER.size
    for col, dtype, per in records.OBJECT_COLUMNS:
        if col == name:
            return off
        off += (count if per == records.PER_OBJECT else items) * int(np.dtype(dtype).itemsize)
    raise KeyError(name)


@pytest.mark.parametrize("value, rule", [(99_999_999, "reference index"), (-1, "reference index")])
def test_reference_out_of_range(stream: bytes, value: int, rule: str) -> None:
    at = _o_column(stream, "refs")
    assert _rule(stream[:at] + struct.pack("<i", value) + stream[at + 4 :]) == rule


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
