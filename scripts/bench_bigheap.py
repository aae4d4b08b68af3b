"""Big heaps (issue 23): `introspect top PID --by retained` (and `growth`, `backrefs PID bytes`
with --commands) with default settings on heaps of 1M, 5M (10M) objects, for main before the
change and for this tree, in one run, on the same heaps.

Per size one target (this script with --target N: about N objects, half not tracked by gc: a list
holding a list holding a dict holding bytes, per 4 objects), then for each code tree:
  wall time and exit of each command (defaults: no --timeout), the CLI's CPU time (user + sys)
  and peak RSS (its rusage: CPU time is what a loaded machine leaves stable, with memory), the
  walker's private memory (the largest Private_Clean + Private_Dirty of the target's copies in
  /proc/PID/smaps_rollup, sampled every 50 ms), the walk's rate (objects / walk_s),
and as anchors, in the target: gc.get_objects()'s rate and guppy3's census time (hpy().heap()).

Usage: scripts/bench-bigheap [--sizes 1000000,5000000] [--commands top,growth,backrefs]
                             [--base COMMIT] [--python PATH] [--freeze]
The base tree is a `git worktree` of COMMIT in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def target(n: int, freeze: bool = False) -> None:
    data = [[[{"b": bytes(16)}]] for _ in range(n // 4)]
    gc.collect()
    if freeze:  # as a gunicorn master with preload does before forking its workers
        gc.freeze()
        data += [[[{"b": bytes(16)}]] for _ in range(n // 40)]  # a tenth more after the freeze
    print(json.dumps({"ready": len(gc.get_objects()), "data": len(data)}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "get_objects":
            t0 = time.perf_counter()
            k = len(gc.get_objects())
            out: dict[str, Any] = {"s": time.perf_counter() - t0, "objects": k}
        elif cmd == "guppy":
            try:
                from guppy import hpy

                t0 = time.perf_counter()
                h = hpy().heap()
                out = {"s": time.perf_counter() - t0, "count": h.count}
            except ImportError as exc:
                out = {"error": str(exc)}
        else:
            break
        print(json.dumps(out), flush=True)


def _kb(pid: int, key: str, fname: str = "status") -> int:
    total = 0
    try:
        with open(f"/proc/{pid}/{fname}") as f:
            for line in f:
                if line.split(":")[0] in key.split("+"):
                    total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return total * 1024


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        f = raw[raw.rindex(b")") + 2 :].split()
        return int(f[11]) + int(f[12])
    except (OSError, ValueError, IndexError):
        return 0


def _copies_private(pid: int, stop: threading.Event, out: dict[str, int]) -> None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    while not stop.is_set():
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != pid:
                try:
                    if Path(f"/proc/{d}/cmdline").read_bytes() != cmd:
                        continue
                except OSError:
                    continue
                got = _kb(int(d), "Private_Clean+Private_Dirty", "smaps_rollup")
                out["private"] = max(out.get("private", 0), got)
                out["cpu"] = max(out.get("cpu", 0), _cpu_ticks(int(d)))
        stop.wait(0.05)


COMMANDS = {
    "top": ["top", "{pid}", "--by", "retained"],
    "growth": ["growth", "{pid}"],  # after a first look that records the baseline
    "backrefs": ["backrefs", "{pid}", "bytes"],
}


def run_cli(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[int, float, Any, str, str]:
    """Run one CLI to its end: (exit code, wall s, its rusage (CPU, peak RSS), stdout, stderr).

    Reaped with wait4, so the rusage is the CLI's own; both pipes drained by threads so a chatty
    run cannot block on a full pipe. Shared by bench-bigheap and bench-dump.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    got: dict[str, str] = {}

    def drain(key: str, f: Any) -> None:
        got[key] = f.read()

    readers = [
        threading.Thread(target=drain, args=(k, f))
        for k, f in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for t in readers:
        t.start()
    _pid, status, ru = os.wait4(proc.pid, 0)  # reaped here: its rusage has the CLI's peak RSS
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    wall = time.monotonic() - t0
    for t in readers:
        t.join()
    return rc, wall, ru, got.get("out", ""), got.get("err", "")


def look(tree: Path, python: str, pid: int, outdir: Path, command: str = "top") -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "XDG_STATE_HOME": str(outdir / "state")}
    argv = [a.format(pid=pid) for a in COMMANDS[command]]
    if command == "growth":  # the baseline: not measured
        subprocess.run(
            [python, "-m", "introspect", *argv, "--json", "-o", str(outdir / "base")],
            cwd=str(tree),
            env=env,
            capture_output=True,
        )
    stop, peak = threading.Event(), {}  # type: ignore[var-annotated]
    watcher = threading.Thread(target=_copies_private, args=(pid, stop, peak), daemon=True)
    watcher.start()
    rc, wall, ru, out, err = run_cli(
        [python, "-m", "introspect", *argv, "--json", "-o", str(outdir)], str(tree), env
    )
    stop.set()
    watcher.join()
    doc: dict[str, Any] = {}
    try:
        doc = json.loads(out)
    except ValueError:
        pass
    col = doc.get("collector") or {}
    holders = doc.get("holders") or [{}]
    return {
        "command": command,
        "cli_cpu_s": ru.ru_utime + ru.ru_stime,
        "rc": rc,
        "wall_s": wall,
        "err": err.strip().splitlines()[-1:] if rc else [],
        "walk_s": col.get("walk_s"),
        "objects": col.get("objects"),
        "partial": col.get("partial"),
        "walker_private": peak.get("private"),
        # the copies' CPU time (the walker's, sampled every 50 ms: its last 50 ms may be missed);
        # the walker reports its own too (format 3: walk_cpu_s, up to the end of the walk)
        "walker_cpu_s": peak.get("cpu", 0) / os.sysconf("SC_CLK_TCK"),
        "walk_cpu_s": col.get("walk_cpu_s"),
        "top_holder": holders[0].get("path"),
        "cli_peak": ru.ru_maxrss * 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--base", default="1943f06", help="main before the change (a commit)")
    ap.add_argument(
        "--python", default=sys.executable, help="the target's interpreter (guppy3 importable)"
    )
    ap.add_argument("--commands", default="top", help="of top,growth,backrefs (default: top)")
    ap.add_argument("--target", type=int, help=argparse.SUPPRESS)
    ap.add_argument(
        "--freeze", action="store_true",
        help="gc.freeze() the heap once built, then add a tenth more (gc's list then misses "
             "most tracked objects: the walker indexes what it finds otherwise)",
    )
    opts = ap.parse_args()
    if opts.target is not None:
        target(opts.target, opts.freeze)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-bigheap-"))
    base = tmp / "base"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), opts.base],
        check=True,
        capture_output=True,
    )
    rows = []
    try:
        for size in [int(s) for s in opts.sizes.split(",")]:
            proc = subprocess.Popen(
                [opts.python, __file__, "--target", str(size)] + (["--freeze"] if opts.freeze else []),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdin is not None and proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            rss = _kb(proc.pid, "VmRSS")
            try:
                for name, tree in (("main before", base), ("this change", REPO)):
                    for command in opts.commands.split(","):
                        r = look(
                            tree,
                            sys.executable,
                            proc.pid,
                            tmp / f"{name[:4]}-{size}-{command}",
                            command,
                        )
                        r.update(name=name, size=size, tracked=ready["ready"], target_rss=rss)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
                proc.stdin.write("get_objects\n")
                proc.stdin.flush()
                go = json.loads(proc.stdout.readline())
                proc.stdin.write("guppy\n")
                proc.stdin.flush()
                gp = json.loads(proc.stdout.readline())
                for r in rows:
                    if r["size"] == size:
                        r["get_objects_rate"] = go["objects"] / go["s"] if go["s"] else None
                        r["guppy_s"] = gp.get("s")
            finally:
                proc.kill()
                proc.wait()
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
            capture_output=True,
        )
    print(render(rows))
    return 0


def _mib(b: int | None) -> str:
    return "-" if not b else f"{b / 2**20:,.0f} MiB"


def render(rows: list[dict[str, Any]]) -> str:
    out = [
        "| objects | code | target RSS | command (defaults) | wall | CLI CPU (user+sys) | "
        "CLI peak RSS | walker private | walker CPU | walk (wall) | walk rate | "
        "gc.get_objects() rate | guppy3 census |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = (
            f"{r['wall_s']:.1f} s"
            if r["rc"] == 0
            else f"**fails** (exit {r['rc']}) after {r['wall_s']:.1f} s: "
            + " ".join(r["err"])[:120]
        )
        if r.get("partial"):
            res += " PARTIAL"
        rate = (
            f"{r['objects'] / r['walk_s'] / 1e3:,.0f}k/s"
            if r.get("walk_s") and r.get("objects")
            else "-"
        )
        cli = (
            f"{_mib(r.get('cli_peak'))} ({r['cli_peak'] / r['target_rss']:.1f}x)"
            if r.get("cli_peak")
            else "-"
        )
        go = f"{r['get_objects_rate'] / 1e6:,.1f}M/s" if r.get("get_objects_rate") else "-"
        gp = f"{r['guppy_s']:.1f} s" if r.get("guppy_s") else "-"
        cmd = " ".join(COMMANDS[r["command"]]).replace("{pid}", "PID")
        out.append(
            f"| {r['size'] / 1e6:g}M | {r['name']} | {_mib(r['target_rss'])} | `{cmd}` | {res} | "
            f"{r['cli_cpu_s']:.1f} s | {cli} | {_mib(r.get('walker_private'))} | "
            f"{r.get('walker_cpu_s') or 0:.1f} s | {r.get('walk_s') or 0:.1f} s | {rate} | {go} | "
            f"{gp} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
