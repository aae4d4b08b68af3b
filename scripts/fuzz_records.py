"""Fuzz the CLI's reader of the walker's record stream (introspect/snapshot/records.py).

Records one real stream (the agent's forked walker in a child of ``--python``, a small heap),
then feeds the reader mutated copies: bit flips, truncations, swapped, dropped and repeated
frames, huge lengths, out-of-range and negative indices and counts. Every case must end in a
valid snapshot (every index in range) or a plain IntrospectError, within --max-case-s and with
the reader's own peak memory under --max-case-mib; anything else (a traceback, a hang, a partial
snapshot) is printed with the case's seed and fails the run. One case in ten is also read as
`dump` reads it (its columns spilled to files, format 3's addresses resolved there: dumpspill.py),
which must end alike and hold the same references. tests/unit/test_records_fuzz.py
runs a few thousand cases with a fixed seed; this script runs as many as asked.

Usage: scripts/fuzz-records [--rounds 20000] [--seed 1] [--python PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from introspect.errors import IntrospectError  # noqa: E402
from introspect.snapshot import records  # noqa: E402

# A victim's last lines (argv: STREAM CONTROL AGENT): load the agent, take one forked snapshot.
TAKE = r"""
agent = sys.argv[3]
ns = {"__name__": "__introspect_agent__", "__file__": agent}
with open(agent, "rb") as f:
    exec(compile(f.read(), agent, "exec"), ns)
params = {"stream": sys.argv[1], "control": sys.argv[2], "child_deadline": time.time() + 60}
ns["cmd_snapshot"](params)
"""
VICTIM = r"""
import sys, time
data = [{"k": i, "v": b"x" * (i % 50)} for i in range(300)]
chain = [[i] for i in range(100)]
""" + TAKE


def record(python: str = sys.executable) -> bytes:
    """One real stream, as the walker sent it, from a small heap in a child of ``python``."""
    from introspect.agent import AGENT_PATH
    from introspect.snapshot.collect import Walker

    with tempfile.TemporaryDirectory(prefix="fuzz-records-") as d:
        stream, control = f"{d}/stream", f"{d}/control"
        os.mkfifo(stream, 0o600)
        os.mkfifo(control, 0o600)
        fd = os.open(stream, os.O_RDONLY | os.O_NONBLOCK)
        proc = subprocess.Popen(
            [python, "-I", "-S", "-c", VICTIM, stream, control, str(AGENT_PATH)],
            stdout=subprocess.DEVNULL,
        )
        walker = None
        try:
            reader = records.Reader(fd, time.monotonic() + 60)
            raw: list[bytes] = []
            metas: list[dict[str, object]] = []
            records.read_snapshot(reader, tee=raw, on_meta=metas.append)
            walker = Walker(
                reader,
                control,
                int(str(metas[0]["pid"])),
                int(str(metas[0]["start_ticks"])),
                reader.deadline,
            )
        finally:
            if walker is not None:
                walker.close()
                walker.kill()
            proc.wait(30)
            os.close(fd)
    return records.MAGIC + b"".join(raw)


def frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of every frame of a well-formed stream."""
    out = []
    off = len(records.MAGIC)
    while off + 5 <= len(data):
        end = off + 5 + int.from_bytes(data[off + 1 : off + 5], "little")
        out.append((off, end))
        off = end
    return out


def _array_frames(data: bytes, spans: list[tuple[int, int]], kind: bytes) -> list[tuple[int, int]]:
    return [(a, b) for a, b in spans if data[a : a + 1] == kind]


def _poke_column(
    data: bytes, spans: list[tuple[int, int]], rng: random.Random, column: str, values: list[int]
) -> bytes:
    """Write one value into ``column`` of a random O frame."""
    frs = _array_frames(data, spans, b"O")
    if not frs:
        return data
    a, _b = rng.choice(frs)
    body = a + 5
    _start, count, items, _known = records.ARRAY_HEADER.unpack_from(data, body)
    off = body + records.ARRAY_HEADER.size
    for name, dtype, per in records.ARRAY_FRAMES[b"O"]:  # the current format's
        k = count if per == records.PER_OBJECT else items
        width = int(np.dtype(dtype).itemsize)
        if name == column:
            if k == 0:
                return data
            i = rng.randrange(k)
            fmt = {"<i8": "<q", "<i4": "<i", "<u4": "<I", "u1": "<B", "<u8": "<Q"}[dtype]
            lo, hi = {
                "<Q": (0, (1 << 64) - 1),
                "<q": (-(1 << 63), (1 << 63) - 1),
                "<i": (-(1 << 31), (1 << 31) - 1),
                "<I": (0, (1 << 32) - 1),
                "<B": (0, 255),
            }[fmt]
            v = min(max(rng.choice(values), lo), hi)
            return data[: off + i * width] + struct.pack(fmt, v) + data[off + (i + 1) * width :]
        off += k * width
    return data


def _header_field(data: bytes, spans: list[tuple[int, int]], rng: random.Random) -> bytes:
    frs = [s for s in spans if data[s[0] : s[0] + 1] in records.ARRAY_FRAMES]
    if not frs:
        return data
    a, _b = rng.choice(frs)
    field = rng.randrange(4)
    v = rng.choice([0, 1, (1 << 64) - 1, 1 << 63, 1 << 31, (1 << 32) + 1, rng.randrange(1 << 20)])
    at = a + 5 + 8 * field
    return data[:at] + struct.pack("<Q", v) + data[at + 8 :]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of a well-formed stream: (its kind, the mutated bytes)."""
    spans = frames(data)
    n = len(data)
    how = rng.choice(
        [
            "flip",
            "flips",
            "truncate",
            "swap",
            "drop",
            "repeat",
            "length",
            "huge-length",
            "ref",
            "addr",
            "type",
            "nrefs",
            "size",
            "flag",
            "header",
            "json",
            "splice",
        ]
    )
    if how == "flip":
        i = rng.randrange(n)
        return how, data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if how == "flips":
        b = bytearray(data)
        for _ in range(rng.randrange(2, 40)):
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        return how, bytes(b)
    if how == "truncate":
        return how, data[: rng.randrange(n)]
    if how in ("swap", "drop", "repeat") and len(spans) >= 2:
        parts = [data[a:b] for a, b in spans]
        i, j = rng.sample(range(len(parts)), 2)
        if how == "swap":
            parts[i], parts[j] = parts[j], parts[i]
        elif how == "drop":
            del parts[i]
        else:
            parts.insert(j, parts[i])
        return how, records.MAGIC + b"".join(parts)
    if how in ("length", "huge-length"):
        a, _b = rng.choice(spans)
        v = (
            rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 1 << 30])
            if how == "huge-length"
            else rng.randrange(1 << 24)
        )
        return how, data[: a + 1] + v.to_bytes(4, "little") + data[a + 5 :]
    if how == "ref":
        return how, _poke_column(
            data, spans, rng, "refs", [-1, -(1 << 31), 1 << 30, 99_999_999, len(data)]
        )
    if how == "addr":  # format 3: an object's own address (another's, or none's)
        return how, _poke_column(data, spans, rng, "addr", [0, 16, (1 << 64) - 1, 1 << 47])
    if how == "type":
        return how, _poke_column(data, spans, rng, "type_of", [-1, -5, 10_000, 1 << 30])
    if how == "nrefs":
        return how, _poke_column(data, spans, rng, "nrefs", [0, 1, 1000, (1 << 32) - 1])
    if how == "size":
        return how, _poke_column(data, spans, rng, "size", [-1, 1 << 62, 0])
    if how == "flag":
        return how, _poke_column(data, spans, rng, "tracked", [2, 255])
    if how == "header":
        return how, _header_field(data, spans, rng)
    if how == "json":
        js = [s for s in spans if data[s[0] : s[0] + 1] in (b"M", b"T", b"R", b"E")]
        a, b = rng.choice(js)
        payload = rng.choice(
            [
                b"[" * 100_000,
                b"{}",
                b"[]",
                b"null",
                b'{"format": 2}',
                b'{"format": 3}',
                b"[[0, 1]]",
                b'[["module", "m", -1]]',
                b'[["module", "m", 99999999]]',
                b'{"objects": -1, "edges": 0}',
                b"\xff\xfe",
            ]
        )
        return how, data[: a + 1] + len(payload).to_bytes(4, "little") + payload + data[b:]
    # splice: a random slice of the stream copied over another place
    i, j = rng.randrange(n), rng.randrange(n)
    k = rng.randrange(1, 256)
    return "splice", data[:i] + data[j : j + k] + data[i + k :]


def valid(snap: records.Snapshot) -> None:
    """A snapshot the reader returned must be whole: every index in range."""
    n = snap.n
    assert snap.size.shape[0] == n and snap.tracked.shape[0] == n and snap.excess.shape[0] == n
    assert snap.offsets.shape[0] == n + 1 and int(snap.offsets[-1]) == snap.refs.shape[0]
    if n:
        assert 0 <= int(snap.type_of.min()) and int(snap.type_of.max()) < len(snap.types)
    if snap.refs.shape[0]:
        assert 0 <= int(snap.refs.min()) and int(snap.refs.max()) < n
    assert all(0 <= r.pos < n for r in snap.roots)


def run_case(data: bytes, path: str | None = None) -> str:
    """'ok' or 'refused: <the error's class>'; anything unexpected raises. With ``path``, the case
    is written there and read as a recorded file (``load_recorded``: bounded by the file's size)."""
    try:
        if path is None:
            snap = records.read_snapshot(records.BytesReader(data))
        else:
            with open(path, "wb") as f:
                f.write(data)
            snap = records.load_recorded(path)
    except IntrospectError as exc:
        return f"refused: {type(exc).__name__}"
    valid(snap)
    return "ok"


def check_spilled(data: bytes, d: str) -> str:
    """The case read as `dump` reads it (dumpwrite.DumpFile.read: the columns spilled to files,
    format 3's addresses resolved there) and whole (read_snapshot): the same outcome, and when
    read, the same type_of, offsets and references."""
    from introspect.snapshot import dumpwrite

    try:
        whole: records.Snapshot | None = records.read_snapshot(records.BytesReader(data))
    except IntrospectError as exc:
        whole, want = None, f"refused: {type(exc).__name__}"
    out = dumpwrite.DumpFile(f"{d}/spilled.pydump")
    try:
        snap = out.read(records.BytesReader(data))
        got = "ok"
        if whole is not None:
            for name in ("type_of", "offsets", "refs"):
                a, b = np.asarray(getattr(snap, name)), getattr(whole, name)
                assert np.array_equal(a, b), f"the spilled {name} differs from the whole read's"
            for key in ("unknown_refs", "duplicate_objects"):
                assert snap.end.get(key) == whole.end.get(key), key
    except IntrospectError as exc:
        got = f"refused: {type(exc).__name__}"
    finally:
        out.abort()
    if whole is not None:
        want = "ok"
    assert got == want, f"spilled: {got}, whole: {want}"
    return got


def fuzz(
    data: bytes,
    rounds: int,
    seed: int,
    *,
    max_case_s: float = 2.0,
    files_every: int = 10,
    log: Callable[[str], None] = lambda s: None,
) -> Counter[str]:
    """Run ``rounds`` mutated cases (every ``files_every``-th one read back from a file); raise
    AssertionError naming the first case that breaks a rule: an unexpected exception, more than
    ``max_case_s``, or a peak of memory the reader allocated above 8x the case's size + 1 MiB."""
    assert run_case(data) == "ok", "the unmutated stream must read"
    seen: Counter[str] = Counter()
    worst = {"s": 0.0, "mib": 0.0}
    with tempfile.TemporaryDirectory(prefix="fuzz-records-") as d:
        tracemalloc.start()
        try:
            for k in range(rounds):
                rng = random.Random(seed * 1_000_003 + k)
                how, case = mutate(data, rng)
                path = f"{d}/case" if files_every and k % files_every == 0 else None
                spilled = bool(files_every) and k % files_every == files_every // 2
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                t0 = time.monotonic()
                try:
                    outcome = run_case(case, path)
                except Exception as exc:
                    raise AssertionError(
                        f"case {k} (seed {seed}, {how}): {type(exc).__name__}: {exc}"
                    ) from exc
                took = time.monotonic() - t0
                peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
                worst["s"], worst["mib"] = max(worst["s"], took), max(worst["mib"], peak)
                assert took < max_case_s, f"case {k} (seed {seed}, {how}) took {took:.2f} s"
                bound = (8 * len(case) + (1 << 20)) / 2**20
                assert peak < bound, (
                    f"case {k} (seed {seed}, {how}) peaked at {peak:.1f} MiB (bound {bound:.1f})"
                )
                if spilled:  # after the reader's own time and peak were taken
                    try:
                        check_spilled(case, d)
                    except Exception as exc:
                        raise AssertionError(
                            f"case {k} (seed {seed}, {how}), spilled: {type(exc).__name__}: {exc}"
                        ) from exc
                tag = " (file)" if path else " (spilled too)" if spilled else ""
                seen[f"{how} -> {outcome}{tag}"] += 1
                if k and k % 5000 == 0:
                    log(f"{k:,} cases")
        finally:
            tracemalloc.stop()
    log(
        f"slowest case {worst['s'] * 1000:.1f} ms, largest reader peak {worst['mib']:.1f} MiB "
        f"(stream {len(data) / 2**20:.1f} MiB)"
    )
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--python", default=sys.executable, help="the interpreter whose walker records the stream"
    )
    args = ap.parse_args(argv)
    data = record(args.python)
    print(f"recorded {len(data):,} bytes, {len(frames(data))} frames from {args.python}")
    t0 = time.monotonic()
    try:
        seen = fuzz(data, args.rounds, args.seed, log=print)
    except AssertionError as exc:
        print(f"FAILED: {exc}")
        return 1
    for key, count in sorted(seen.items()):
        print(f"{count:8,}  {key}")
    print(
        f"{args.rounds:,} cases in {time.monotonic() - t0:.1f} s: "
        "every one a valid snapshot or a plain error"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
