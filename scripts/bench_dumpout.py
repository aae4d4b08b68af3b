"""A dump's compressed output alone (introspect/snapshot/dumpout.py): a dump's decompressed
stream put into _Out as fast as the CLI could make it, in frames of a dump's records' size, with
COMPRESSORS threads and with one, in turn; wall and CPU time of each, and the file's size.

    .venv/bin/python scripts/bench_dumpout.py FILE.pydump [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from introspect.snapshot import dumpout  # noqa: E402
from introspect.snapshot.dumpformat import DUMP_MAGIC  # noqa: E402

FRAME = 1_700_000  # bytes: about one O frame of 65,536 objects


def once(raw: memoryview, threads: int) -> tuple[float, float, int]:
    dumpout.COMPRESSORS = threads
    fd, path = tempfile.mkstemp(prefix="bench-dumpout-")
    try:
        out = dumpout._Out(fd)
        t, c = time.perf_counter(), time.process_time()
        for a in range(0, len(raw), FRAME):
            out.put(bytes(raw[a : a + FRAME]))
        out.finish()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        return wall, cpu, os.fstat(fd).st_size
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    data = Path(opts.dump).read_bytes()
    if not data.startswith(DUMP_MAGIC):
        print(f"{opts.dump}: not a dump of this version", file=sys.stderr)
        return 2
    raw = memoryview(zlib.decompress(data[len(DUMP_MAGIC) :]))
    threads = dumpout.COMPRESSORS
    print(f"| compressing threads | wall | CPU | file ({len(raw):,} B put) |")
    print("|---|---|---|---|")
    for _ in range(opts.repeat):
        for k in (1, threads):
            wall, cpu, size = once(raw, k)
            print(f"| {k} | {wall:.2f} s | {cpu:.2f} s | {size:,} B |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
