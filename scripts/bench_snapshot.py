"""The target's pause for forked snapshots, against guppy3's census and objgraph, on one heap half
of whose objects gc does not track (BENCH_MIXED=1 scripts/bench_target.py: lists holding dicts of
atomic values holding bytes).

For each size, on the same process and heap, in one run:
  introspect top / growth (2nd call) / backrefs BenchLeaf (tracked) / backrefs bytes (untracked)
      with the forked snapshot (the default): the target's pause, the fork's share of it, the
      injector's own stop, the walker's walk time
  introspect dump (the forked walk written to a file: its pause should be top's)
  introspect top --in-process
  guppy3 hpy().heap() and objgraph.most_common_types(), in the target (a command on its stdin)

The pause is what the target observes: its main loop's longest gap between wake-ups, less the
5 ms it sleeps in select() between them anyway (the agent runs when that select returns), less
the injector's own stop; see scripts/bench.py. Beside it: how the target got the agent's code
(compiled, or loaded precompiled: introspect/codecache.py) and how long that took, the agent's
own fork() call, and its snapshot command to the fork's return, both as the forked child reads
them (so with the child's own wait for a CPU: on a loaded machine more than the target's fork;
docs/snapshots.md, the pause). The first run of each
command compiles; later runs load. The walker's peak memory is sampled from /proc every 50 ms
while the CLI runs.

`memory` runs top's walk plus the breakdown (the allocators read in the walker before it walks):
its pause should be top's; its walker time is shown with the breakdown's share.

On a shared, loaded machine the target also waits for a CPU (a gap of 5 ms becomes 7-16 ms):
--rt runs its main thread at real-time priority (its threads and forked copies are not), so its
gaps are its own work and the kernel's; compare runs with and without it, never across.

A/B: --repos A,B runs each command with each code tree in turn (the CLI and the agent it injects:
PYTHONPATH=A, then B; the order flips every repeat), on the same target and heap, with a plain
fork measured after every pair: the rows are labelled by tree. A tree is a checkout (a git
worktree of an older commit); a command it lacks fails in its rows.

Usage: scripts/bench-snapshot [--sizes 1000000,5000000] [--repeat N] [--python PATH] [--only top,memory]
                              [--repos PATH,PATH] [--rt]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import REPO, Introspect, Target, _sample_from, _window, find_objgraph, measure_objgraph  # noqa: E402

MAIN_PERIOD_S = 0.005  # bench_target.py's main loop: select() with this timeout, then its gap is recorded


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


@contextlib.contextmanager
def _code_tree(repo: Path) -> Iterator[None]:
    """The CLI (and so the agent it injects) run from ``repo``: bench.Introspect.run puts
    bench.REPO on PYTHONPATH."""
    saved, bench.REPO = bench.REPO, repo
    try:
        yield
    finally:
        bench.REPO = saved


def _floor(target: Target, rows: dict[str, list[dict[str, Any]]]) -> None:
    floor = target.call("fork_time", timeout=60)
    rows.setdefault("one plain os.fork() (floor)", []).append(
        {"pause_s": floor["fork_s"], "main_max_s": floor["fork_s"], "floor": True, "error": ""})


def _measure(target: Target, intro: Introspect, args: list[str]) -> dict[str, Any]:
    stop, peak = threading.Event(), {}
    watcher = threading.Thread(target=_peak_of_copies, args=(target.pid, stop, peak), daemon=True)
    watcher.start()
    doc: dict[str, Any] = {}

    def op() -> None:
        got, err = intro.run([args[0], str(target.pid), *args[1:]])
        doc.update(got or {"error": err})

    _, report = _window(target, op)
    stop.set()
    watcher.join()
    s = _sample_from(report, ok="error" not in doc, error=doc.get("error", ""))
    col = doc.get("collector") or {}
    return {
        "pause_s": s.pause_s, "main_max_s": s.main_max_s, "stalls_s": s.stalls_s,
        "attach_pause_s": doc.get("attach_pause_s"), "fork_pause_s": col.get("fork_pause_s"),
        "fork_s": col.get("fork_s"), "walk_s": col.get("walk_s"), "path": col.get("path"),
        "agent_code": doc.get("agent_code"), "agent_code_s": doc.get("agent_code_s"),
        "walker_peak_bytes": peak.get("peak"), "error": s.error, "breakdown_s": doc.get("copy_s"),
        "gc_ms": report.get("gc_ms")}


def run_size(size: int, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    target = Target(opts.python, size, workdir)
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        ready = target.read(timeout=600)
        if opts.rt:
            # The main thread only (its threads and forks are not: SCHED_RESET_ON_FORK): its gaps
            # are then its own work and the kernel's, not waits for a CPU on a loaded machine.
            policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
            os.sched_setscheduler(target.pid, policy, os.sched_param(10))
        intro = Introspect(opts.python_cli, "auto", workdir, opts.timeout)
        ops = [("top", ["top"]), ("growth (2nd call)", ["growth"]), ("backrefs BenchLeaf", ["backrefs", "BenchLeaf"]),
               ("backrefs bytes", ["backrefs", "bytes"]), ("top --in-process", ["top", "--in-process"]),
               ("memory (top's walk + the breakdown)", ["memory"]),
               ("dump (the heap to a file: the run's -o)", ["dump"])]
        if opts.only:
            only = opts.only.split(",")
            ops = [(name, args) for name, args in ops
                   if ("in-process" if "--in-process" in args else args[0]) in only]
        repos = [Path(r).resolve() for r in opts.repos.split(",")] if opts.repos else [REPO]
        labels = {r: ("" if len(repos) == 1 else f" [{r.name}]") for r in repos}
        for repo in repos:
            with _code_tree(repo):
                # the baseline for "growth (2nd call)"
                intro.run(["growth", str(target.pid), "--reset"])
        for rep in range(opts.repeat):
            for name, args in ops:
                for repo in repos if rep % 2 == 0 else repos[::-1]:
                    with _code_tree(repo):
                        got = _measure(target, intro, args)
                        rows.setdefault(name + labels[repo], []).append(got)
                if len(repos) > 1:
                    _floor(target, rows)
            if len(repos) == 1:
                _floor(target, rows)
        # guppy3 and objgraph last: what they leave in the target (guppy's views, imported modules)
        # would otherwise weigh on the collections of the introspect runs after them.
        for _ in range(0 if opts.only else opts.repeat):
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
             "| operation | longest gap | pause - injector stop | ÷ plain fork | agent's code | its fork | snapshot command "
             "| target's gc (window) | walker walk | walker peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    floor = _med([s["main_max_s"] for s in result["rows"].get("one plain os.fork() (floor)", [])])
    for name, samples in result["rows"].items():
        mx = _med([s["main_max_s"] for s in samples])
        inj = _med([s.get("attach_pause_s") or 0.0 for s in samples])
        # The main loop sleeps up to MAIN_PERIOD_S in select() between wake-ups, and the agent runs
        # when that select returns: a gap is the period it would have slept anyway plus the pause.
        net = None if mx is None else mx if samples[0].get("floor") else max(0.0, mx - MAIN_PERIOD_S - inj)
        codes = {s.get("agent_code") for s in samples if s.get("agent_code")}
        code_s = _med([s.get("agent_code_s") for s in samples])
        code_text = "-" if code_s is None else f"{'/'.join(sorted(codes))} {code_s * 1000:.2f} ms"
        own_fork = ms(_med([s.get("fork_s") for s in samples]))
        gcs = [s.get("gc_ms") for s in samples if s.get("gc_ms") is not None]
        gc_text = "-" if not gcs else f"{_med([sum(ms_ for _, ms_ in g) for g in gcs]):.1f} ms" + (
            f" (gen {max(gen for g in gcs for gen, _ in g)})" if any(gcs) else "")
        peak = _med([s.get("walker_peak_bytes") for s in samples])
        errs = {s["error"] for s in samples if s.get("error")}
        walk = _med([s.get("walk_s") for s in samples])
        walk_text = "-" if walk is None else f"{walk:.2f} s"
        extra = _med([s.get("breakdown_s") for s in samples])
        if extra is not None:  # the allocators read in the walker before its walk (memory part)
            walk_text += f" + {extra * 1000:.0f} ms breakdown"
        peak_text = "-" if peak is None else f"{peak / 2**20:,.0f} MiB"
        fork = ms(_med([s.get("fork_pause_s") for s in samples]))
        ratio = "-" if net is None or not floor else f"{net / floor:.1f}x"
        lines.append(f"| {name} | {ms(mx)} | {ms(net)} | {ratio} | {code_text} | {own_fork} | {fork} | {gc_text} | {walk_text} | {peak_text} |"
                     + (f" errors: {'; '.join(errs)}" if errs else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-snapshot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=sys.executable, help="target interpreter (needs guppy3; default: this one)")
    p.add_argument("--python-cli", default=sys.executable, help="interpreter running introspect (default: this one)")
    p.add_argument("--sizes", default="1000000", help="total objects, comma separated (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--only", default="", metavar="CMDS",
                   help="only these introspect commands, comma separated (top, growth, backrefs, "
                        "memory, dump, in-process: top --in-process), and no guppy3/objgraph")
    p.add_argument("--rt", action="store_true",
                   help="the target's main thread at SCHED_FIFO 10, reset on fork (needs root or "
                        "CAP_SYS_NICE): the pause without waits for a CPU on a loaded machine")
    p.add_argument("--repos", default="", metavar="PATH,PATH",
                   help="A/B: run every command with each of these code trees in turn "
                        "(default: this one)")
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
