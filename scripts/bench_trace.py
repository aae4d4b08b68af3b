"""What does `introspect trace` cost the target? Throughput and memory with tracing off, on with
1 frame and on with 16 frames, in one run on one process (scripts/bench_trace_target.py, a busy
worker filling a bounded cache of records).

For each repeat, for each mode in turn (so load on the machine spreads over all modes):
  off        a fresh worker's operations per second over --window seconds, and its RSS
  1 frame    a fresh worker: `introspect trace start PID --frames 1`, a warm-up window (the cache
             fills with traced records), the measured window, `introspect trace show` (read in a
             forked copy: its pause, tracemalloc's own memory), `trace show --in-process` (its
             pause, and the RSS it leaves), `introspect trace stop`
  16 frames  the same with --frames 16

Results: a table on stdout (medians) and bench-results/bench-trace-<time>.json in the repository.

Example: scripts/bench-trace --python /usr/bin/python3.11 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_SCRIPT = Path(__file__).resolve().parent / "bench_trace_target.py"
MODES = [("off", 0), ("1 frame", 1), ("16 frames", 16)]


class Worker:
    """The bench target: started, spoken to line by line, always killed and reaped."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen([python, str(TARGET_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        line = self._line(20)
        if not line.startswith("ready"):
            raise SystemExit(f"bench target did not start: {line!r}")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise SystemExit(f"bench target {self.pid} did not answer within {timeout:g} s")
        return self.proc.stdout.readline().decode()

    def window(self, seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"window {seconds}\n".encode())
        self.proc.stdin.flush()
        doc: dict[str, Any] = json.loads(self._line(seconds + 30))
        return doc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def introspect(*args: str, timeout: float = 120) -> dict[str, Any]:
    """`introspect trace ARGS --json`; the bench stops on any failure (the message says which)."""
    cmd = [sys.executable, "-m", "introspect", "trace", *args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"introspect trace {' '.join(args)} failed: {proc.stderr.strip()}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def run(python: str, window: float, warmup: float, repeat: int) -> dict[str, Any]:
    """Each mode on a fresh worker (RSS comparable: reading traces in-process leaves the target's
    RSS raised), modes interleaved within each repeat (machine load spreads over all of them)."""
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in MODES}
    for r in range(repeat):
        for name, frames in MODES:
            worker = Worker(python)
            try:
                pid = str(worker.pid)
                worker.window(warmup)  # the cache fills, the allocator settles
                if frames:
                    introspect("start", pid, "--frames", str(frames), "--for", "10m")
                    worker.window(warmup)  # every cached record is now a traced one
                w = worker.window(window)
                sample: dict[str, Any] = {"ops_per_s": w["ops_per_s"], "rss_kib": w["rss_kib"]}
                if frames:
                    show = introspect("show", pid, "-n", "3", "--timeout", "120", timeout=300)
                    sample.update(tracemalloc_memory=show["tracemalloc_memory"], traced_bytes=show["traced_bytes"],
                                  traces=show["traces"], show_paused_s=show["paused_s"], show_path=show["collector"]["path"])
                    inproc = introspect("show", pid, "-n", "3", "--in-process", "--max-traces", "100000000", "--budget", "60",
                                        timeout=300)
                    sample.update(inproc_paused_s=inproc["paused_s"], inproc_partial=inproc["partial"])
                    sample["rss_kib_after_inproc_show"] = worker.window(0.5)["rss_kib"]
                    stop = introspect("stop", pid, "-n", "0")
                    sample["memory_after_stop"] = stop["tracemalloc_memory_after"]
                samples[name].append(sample)
                print(f"  repeat {r + 1}/{repeat} {name:9}: {w['ops_per_s']:,.0f} ops/s, RSS {w['rss_kib'] / 1024:.1f} MiB",
                      file=sys.stderr, flush=True)
            finally:
                worker.close()
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    return {"python": python, "version": version, "window_s": window, "warmup_s": warmup, "repeat": repeat,
            "samples": samples}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(doc: dict[str, Any]) -> str:
    s = doc["samples"]
    base = _median([x["ops_per_s"] for x in s["off"]])
    lines = [f"Python {doc['version']} ({doc['python']}), median of {doc['repeat']} windows of {doc['window_s']:g} s",
             f"{'tracing':10} {'ops/s':>10} {'vs off':>7} {'RSS MiB':>8} {'tracemalloc MiB':>16} {'traces':>8} "
             f"{'show pause ms':>14} {'in-process show ms':>19} {'RSS after it':>13}"]
    for name, frames in MODES:
        rows = s[name]
        ops = _median([x["ops_per_s"] for x in rows])
        rss = _median([x["rss_kib"] / 1024 for x in rows])
        if frames:
            extra = (f"{_median([x['tracemalloc_memory'] / 2**20 for x in rows]):>16.1f} "
                     f"{_median([x['traces'] for x in rows]):>8,.0f} {_median([x['show_paused_s'] * 1000 for x in rows]):>14.0f} "
                     f"{_median([x['inproc_paused_s'] * 1000 for x in rows]):>19,.0f} "
                     f"{_median([x['rss_kib_after_inproc_show'] / 1024 for x in rows]):>13.1f}")
        else:
            extra = f"{'-':>16} {'-':>8} {'-':>14} {'-':>19} {'-':>13}"
        lines.append(f"{name:10} {ops:>10,.0f} {ops / base - 1:>+7.0%} {rss:>8.1f} {extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
    p.add_argument("--python", default=default, help=f"the target's interpreter (default: {default})")
    p.add_argument("--window", type=float, default=3.0, metavar="S", help="measured window per mode (default: 3)")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S", help="window discarded after each start (default: 2)")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="rounds over the three modes (default: 3)")
    p.add_argument("--results-dir", default=str(REPO / "bench-results"), metavar="DIR")
    args = p.parse_args(argv)
    doc = run(args.python, args.window, args.warmup, args.repeat)
    print(table(doc))
    os.makedirs(args.results_dir, exist_ok=True)
    path = Path(args.results_dir) / f"bench-trace-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
