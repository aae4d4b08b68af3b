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

With --walk: what tracing costs the forked walk instead (`backrefs`, `growth`, `report` and `top`
walk the heap in a copy of the target). For each of --sizes, two idle processes build the same heap
(about N objects, half not tracked by gc: scripts/bench_trace_target.py heap), one of them while
tracing (`introspect trace start`, so each of its objects has a trace); then, --repeat times and
alternating, `introspect backrefs PID BenchRecord` on each: the walker's walk time (start to end of
its stream), the whole command's time, and where the traced one's instances were allocated.

Example: scripts/bench-trace --walk --sizes 100000,1000000 --repeat 3
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


CLI_REPO = [REPO]  # whose introspect the bench runs (--cli-repo: another checkout, to compare)


def cli(*args: str, timeout: float = 120) -> dict[str, Any]:
    """`introspect ARGS --json`; the bench stops on any failure (the message says which)."""
    cmd = [sys.executable, "-m", "introspect", *args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(CLI_REPO[0])}, cwd=str(CLI_REPO[0]))
    if proc.returncode != 0:
        raise SystemExit(f"introspect {' '.join(args)} failed: {proc.stderr.strip()}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def introspect(*args: str, timeout: float = 120) -> dict[str, Any]:
    """`introspect trace ARGS --json`."""
    return cli("trace", *args, timeout=timeout)


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


class Heap(Worker):
    """An idle bench target (bench_trace_target.py heap) whose heap the forked walk goes through."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen([python, str(TARGET_SCRIPT), "heap"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        line = self._line(20)
        if not line.startswith("ready"):
            raise SystemExit(f"bench target did not start: {line!r}")

    def build(self, objects: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"build {objects}\n".encode())
        self.proc.stdin.flush()
        doc: dict[str, Any] = json.loads(self._line(600))
        return doc


def _walk_sample(pid: int, timeout: float, out: str) -> dict[str, Any]:
    t0 = time.monotonic()
    doc = cli("backrefs", str(pid), "BenchRecord", "--timeout", str(timeout), "-o", out,
              timeout=timeout + 120)
    wall = time.monotonic() - t0
    col = doc["collector"]
    if col.get("path") != "fork":
        raise SystemExit(f"backrefs did not fork: {col.get('why')}")
    sites = doc.get("allocated_at") or []
    return {"walk_s": col["walk_s"], "objects": col["objects"], "command_s": wall,
            "tracing": doc.get("tracing"), "allocated_traced": doc.get("allocated_traced"),
            "allocated_sampled": doc.get("allocated_sampled"),
            "allocated_walk": doc.get("allocated_walk"),
            "first_site": f"{Path(sites[0]['file']).name}:{sites[0]['line']}" if sites else None}


def run_walk(python: str, sizes: list[int], repeat: int, timeout: float) -> dict[str, Any]:
    """Per size: two processes with the same heap, one traced while it built it; their forked walks
    alternate (load on the machine spreads over both)."""
    import tempfile

    result: dict[str, Any] = {"python": python, "repeat": repeat, "cli_repo": str(CLI_REPO[0]),
                              "sizes": {}}
    for size in sizes:
        on, off = Heap(python), Heap(python)
        samples: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        try:
            introspect("start", str(on.pid), "--for", "1h")
            built = {"on": on.build(size), "off": off.build(size)}
            with tempfile.TemporaryDirectory(prefix="bench-trace-walk-") as tmp:
                for r in range(repeat):
                    for name, target in (("on", on), ("off", off)):
                        s = _walk_sample(target.pid, timeout, os.path.join(tmp, f"{name}{r}"))
                        samples[name].append(s)
                        print(f"  {size:,} objects, tracing {name:3}, repeat {r + 1}/{repeat}: "
                              f"walk {s['walk_s']:.2f} s ({s['objects']:,} objects), "
                              f"command {s['command_s']:.1f} s", file=sys.stderr, flush=True)
            introspect("stop", str(on.pid), "-n", "0")
        finally:
            on.close()
            off.close()
        result["sizes"][str(size)] = {"built": built, "samples": samples}
    result["version"] = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                       capture_output=True, text=True, timeout=30).stdout.strip()
    return result


def walk_table(doc: dict[str, Any]) -> str:
    """Walk times with tracing off and on: the fastest of the repeats (the machine's load only
    ever adds) and the median."""
    lines = [f"Python {doc['version']} ({doc['python']}), forked walk of `backrefs BenchRecord`, "
             f"{doc['repeat']} repeats: fastest (median)",
             f"{'objects':>10} {'walk off':>15} {'walk on':>15} {'on/off':>13} {'command off':>12} "
             f"{'command on':>11}  allocation sites (tracing on)"]
    for d in doc["sizes"].values():
        s = d["samples"]
        off, on = [x["walk_s"] for x in s["off"]], [x["walk_s"] for x in s["on"]]
        last = s["on"][-1]
        if last.get("allocated_traced"):
            sites = (f"{last['allocated_traced']:,} of {last['allocated_sampled']:,} sampled at "
                     f"{last['first_site']}; copy: {last['allocated_walk']}")
        else:
            sites = f"none ({last.get('allocated_walk')})"
        ratio = f"{min(on) / min(off):.2f}x ({_median(on) / _median(off):.2f}x)"
        lines.append(f"{_median([x['objects'] for x in s['on']]):>10,.0f} "
                     f"{min(off):>6.2f}s ({_median(off):.2f}s) "
                     f"{min(on):>6.2f}s ({_median(on):.2f}s) "
                     f"{ratio:>13} {_median([x['command_s'] for x in s['off']]):>11.1f}s "
                     f"{_median([x['command_s'] for x in s['on']]):>10.1f}s  {sites}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
    p.add_argument("--python", default=default, help=f"the target's interpreter (default: {default})")
    p.add_argument("--window", type=float, default=3.0, metavar="S", help="measured window per mode (default: 3)")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S", help="window discarded after each start (default: 2)")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="rounds over the three modes (default: 3)")
    p.add_argument("--results-dir", default=str(REPO / "bench-results"), metavar="DIR")
    p.add_argument("--walk", action="store_true",
                   help="measure the forked walk with tracing on and off instead")
    p.add_argument("--sizes", default="100000,1000000", metavar="N,N",
                   help="--walk: heap sizes (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="--walk: each command's --timeout (default: 300)")
    p.add_argument("--cli-repo", default=str(REPO), metavar="DIR",
                   help="the introspect checkout to run (default: this one; another, to compare)")
    args = p.parse_args(argv)
    CLI_REPO[0] = Path(args.cli_repo).resolve()
    if args.walk:
        sizes = [int(x) for x in args.sizes.split(",")]
        doc = run_walk(args.python, sizes, args.repeat, args.timeout)
        print(walk_table(doc))
    else:
        doc = run(args.python, args.window, args.warmup, args.repeat)
        print(table(doc))
    os.makedirs(args.results_dir, exist_ok=True)
    kind = "bench-trace-walk" if args.walk else "bench-trace"
    path = Path(args.results_dir) / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
