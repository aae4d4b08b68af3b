"""The target's pause for forked snapshots, against guppy3's census and objgraph, on one heap half
of whose objects gc does not track (BENCH_MIXED=1 scripts/bench_target.py: lists holding dicts of
atomic values holding bytes).

For each size, on the same process and heap, in one run:
  introspect top / growth (2nd call) / backrefs BenchLeaf (tracked) / backrefs bytes (untracked)
      with the forked snapshot (the default): the target's pause, the fork's share of it, the
      injector's own stop, the walker's walk time
  introspect top --in-process
  guppy3 hpy().heap() and objgraph.most_common_types(), in the target (a command on its stdin)

The pause is what the target observes (its main loop's lost time, see scripts/bench.py). The
walker's peak memory is sampled from /proc every 50 ms while the CLI runs.

Usage: scripts/bench-snapshot [--sizes 1000000,5000000] [--repeat N] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, Introspect, Target, _sample_from, _window, find_objgraph, measure_objgraph  # noqa: E402


def _peak_of_copies(pid: int, stop: threading.Event, out: dict[str, int]) -> None:
    """Largest VmHWM of any process forked from ``pid`` (same command line) while ``stop`` is unset."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return
    while not stop.is_set():
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == pid:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if f.read() != cmd:
                        continue
                with open(f"/proc/{d}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            out["peak"] = max(out.get("peak", 0), int(line.split()[1]) * 1024)
            except OSError:
                pass
        stop.wait(0.05)


def run_size(size: int, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    target = Target(opts.python, size, workdir)
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        ready = target.read(timeout=600)
        intro = Introspect(opts.python_cli, "auto", workdir, opts.timeout)
        ops = [("top", ["top"]), ("growth (2nd call)", ["growth"]), ("backrefs BenchLeaf", ["backrefs", "BenchLeaf"]),
               ("backrefs bytes", ["backrefs", "bytes"]), ("top --in-process", ["top", "--in-process"])]
        intro.run(["growth", str(target.pid), "--reset"])  # the baseline for "growth (2nd call)"
        for _ in range(opts.repeat):
            for name, args in ops:
                stop, peak = threading.Event(), {}
                watcher = threading.Thread(target=_peak_of_copies, args=(target.pid, stop, peak), daemon=True)
                watcher.start()
                doc: dict[str, Any] = {}

                def op(args: list[str] = args, doc: dict[str, Any] = doc) -> None:
                    got, err = intro.run([args[0], str(target.pid), *args[1:]])
                    doc.update(got or {"error": err})

                _, report = _window(target, op)
                stop.set()
                watcher.join()
                s = _sample_from(report, ok="error" not in doc, error=doc.get("error", ""))
                col = doc.get("collector") or {}
                rows.setdefault(name, []).append({
                    "pause_s": s.pause_s, "main_max_s": s.main_max_s, "attach_pause_s": doc.get("attach_pause_s"),
                    "fork_pause_s": col.get("fork_pause_s"), "walk_s": col.get("walk_s"), "path": col.get("path"),
                    "walker_peak_bytes": peak.get("peak"), "error": s.error})
            floor = target.call("fork_time", timeout=60)
            rows.setdefault("one plain os.fork() (floor)", []).append({"pause_s": floor["fork_s"], "main_max_s": floor["fork_s"],
                                                                       "error": ""})
            for name, cmd in (("guppy3 hpy().heap()", "guppy_census"), ("objgraph most_common_types", "objgraph_top")):
                s = measure_objgraph(target, cmd, timeout=600)
                rows.setdefault(name, []).append({"pause_s": s.pause_s, "main_max_s": s.main_max_s, "error": s.error})
    finally:
        target.stop()
    return {"size": size, "tracked": ready.get("objects"), "python": ready.get("python"), "rows": rows}


def _med(xs: list[Any]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def render(result: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:,.1f} ms"

    lines = [f"{result['size']:,} objects ({result['tracked']:,} tracked by gc), Python {result['python']}",
             "| operation | longest pause | pause - injector stop | agent's fork + reap | walker walk | walker peak RSS |",
             "|---|---|---|---|---|---|"]
    for name, samples in result["rows"].items():
        mx = _med([s["main_max_s"] for s in samples])
        inj = _med([s.get("attach_pause_s") for s in samples])
        net = None if mx is None or inj is None else max(0.0, mx - inj)
        peak = _med([s.get("walker_peak_bytes") for s in samples])
        errs = {s["error"] for s in samples if s.get("error")}
        walk = _med([s.get("walk_s") for s in samples])
        walk_text = "-" if walk is None else f"{walk:.2f} s"
        peak_text = "-" if peak is None else f"{peak / 2**20:,.0f} MiB"
        fork = ms(_med([s.get("fork_pause_s") for s in samples]))
        lines.append(f"| {name} | {ms(mx)} | {ms(net)} | {fork} | {walk_text} | {peak_text} |" + (f" errors: {'; '.join(errs)}" if errs else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-snapshot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=sys.executable, help="target interpreter (needs guppy3; default: this one)")
    p.add_argument("--python-cli", default=sys.executable, help="interpreter running introspect (default: this one)")
    p.add_argument("--sizes", default="1000000", help="total objects, comma separated (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--results-dir", default=str(REPO / "bench-results"))
    opts = p.parse_args(argv)
    os.environ["BENCH_MIXED"] = "1"
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        workdir = Path(tmp)
        import shutil

        shutil.copy(find_objgraph(), workdir / "objgraph.py")
        for size in (int(x) for x in opts.sizes.split(",")):
            result = run_size(size, opts, workdir)
            results.append(result)
            print(render(result), flush=True)
            print()
    out = Path(opts.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-snapshot-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
