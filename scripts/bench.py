"""How long does the *target* stop: introspect's top / growth / backrefs against objgraph in-process.

For each heap size it starts scripts/bench_target.py (a process that builds N gc-tracked objects and
watches its own pauses, see that file), then, on that same process and heap:

  introspect top PID                 vs  objgraph.most_common_types()
  introspect growth PID (2nd call)   vs  objgraph.growth() (2nd call)
  introspect backrefs PID BenchLeaf  vs  objgraph.find_backref_chain(holder, is_proper_module)
  introspect backrefs PID Holder     vs  the same chain (the same object: apples to apples)

objgraph runs inside the target on its main thread (a command on the target's stdin), exactly where
introspect's agent runs. The pause is what the target observes, not what either tool reports:

  pause       time the target's main thread lost in the window around the operation: the sum of
              its loop's gaps beyond the loop period (gdb's stops + the agent's run, or objgraph's run)
  thread gap  the longest gap of a 1 ms ticker thread: how long *other* threads stood still (gdb
              stops all threads; a long C call holds the GIL; Python code yields every 5 ms)

introspect's own report (paused_s = attach_pause_s + agent_s) is shown next to the measured pause.
Results: a table on stdout and bench-results/bench-<time>.json in the repository.

With --injection N it measures the injectors alone instead: for every interpreter kind on this
machine (tests/conftest.py's discovery) and every method (ptrace = ours, gdb, pep768 on 3.14+), N
injections of a bootstrap that does nothing into scripts/bench_stop_target.py (pep768 is our own
client, remote_exec is sys.remote_exec run by a python3.X subprocess), a process whose
only thread spins in Python and times its own gaps. Per injection, the *target-observed stop* is
the time that thread lost in a window around it (the injector's stop, gdb's second attach to free
its page, and the no-op bootstrap's run as a pending call); median and p99 are printed.

Examples: scripts/bench --quick
          scripts/bench --injection 200
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_SCRIPT = Path(__file__).resolve().parent / "bench_target.py"
STOP_TARGET_SCRIPT = Path(__file__).resolve().parent / "bench_stop_target.py"

# Goals at 1M objects: introspect's pause / objgraph's pause.
GOALS = {"top": 0.5, "growth": 0.35, "backrefs": 0.1}
GOAL_SIZE = 1_000_000
PRE_S = 0.05  # quiet time inside each window before the operation
POST_S = 0.10  # and after it: lets the target's main loop record the last gap
BASELINE_S = 1.0


class BenchError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# the target process


class Target:
    """One bench_target.py process: started, spoken to line by line, always killed and reaped."""

    def __init__(self, python: str, size: int, workdir: Path, script: Path = TARGET_SCRIPT) -> None:
        env = {**os.environ, "PYTHONPATH": str(workdir)}
        env.pop("PYTHONSTARTUP", None)
        self.proc = subprocess.Popen(
            [python, str(script), str(size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(workdir),
        )
        self.buf = b""
        self.pid = self.proc.pid

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"target {self.pid} did not answer within {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"target {self.pid} exited (status {self.proc.poll()})")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        doc: dict[str, Any] = json.loads(line)
        return doc

    def call(self, command: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        doc = self.read(timeout)
        if not doc.get("ok"):
            raise BenchError(f"target command {command!r} failed: {doc.get('error')}")
        return doc

    def call_raw(self, command: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        """Ask, then kill by pid; always reap. Only ever our own child."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


# ------------------------------------------------------------------------------------------------
# one measurement


@dataclass
class Sample:
    ok: bool
    pause_s: float = 0.0  # main thread lost time in the window
    main_max_s: float = 0.0  # its longest single gap
    thread_gap_s: float = 0.0  # ticker's longest gap
    thread_lost_s: float = 0.0
    stalls_s: list[float] = field(default_factory=list)  # the main thread's longest gaps, for the breakdown
    error: str = ""
    timeout: bool = False
    reported: dict[str, Any] = field(default_factory=dict)  # introspect's own numbers / objgraph's

    def as_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _window(target: Target, operation: Any) -> tuple[Any, dict[str, Any]]:
    target.call("mark")
    time.sleep(PRE_S)
    result = operation()
    time.sleep(POST_S)
    return result, target.call("report")


def _sample_from(report: dict[str, Any], **kw: Any) -> Sample:
    return Sample(pause_s=report["main"]["lost_s"], main_max_s=report["main"]["max_s"],
                  thread_gap_s=report["ticker"]["max_s"], thread_lost_s=report["ticker"]["lost_s"],
                  stalls_s=report["main"]["stalls_s"], **kw)


def _cli_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error paragraph (it is wrapped over several lines), or its last words."""
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    start = next((n for n, ln in enumerate(lines) if ln.startswith("introspect: error:") or ln.startswith("usage:")), None)
    if start is not None:
        picked = [ln for ln in lines[start:] if not ln.startswith("introspect: results")]
    else:
        picked = lines[-2:] or [f"exit status {proc.returncode}"]
    msg = " ".join(picked)
    if msg.startswith("introspect: error: "):
        msg = msg[len("introspect: error: "):]
    return f"exit {proc.returncode}: {msg}"


class Introspect:
    def __init__(self, python: str, method: str, workdir: Path, timeout: float) -> None:
        self.python = python
        self.method = method
        self.workdir = workdir
        self.timeout = timeout
        self.n = 0

    def run(self, args: list[str]) -> tuple[dict[str, Any] | None, str]:
        self.n += 1
        out = self.workdir / f"out-{self.n}"
        cmd = [self.python, "-m", "introspect", *args, "--json", "-o", str(out), "--timeout", str(self.timeout)]
        if self.method != "auto":
            cmd += ["--method", self.method]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=self.timeout + 60)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {self.timeout + 60:g} s"
        finally:
            if out.is_file():  # a dump's file (-o names it)
                out.unlink()
            shutil.rmtree(out, ignore_errors=True)
        if proc.returncode != 0:
            return None, _cli_error(proc)
        try:
            doc: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            return None, "no JSON on stdout"
        return doc, ""

    def measure(self, target: Target, args: list[str]) -> Sample:
        t0 = time.monotonic()
        (doc, err), report = _window(target, lambda: self.run(args))
        wall = time.monotonic() - t0
        if doc is None:
            return Sample(ok=False, error=err)
        reported = {k: doc.get(k) for k in ("paused_s", "attach_pause_s", "agent_s", "wall_s", "method")}
        reported["window_s"] = round(wall, 6)
        return _sample_from(report, ok=True, reported=reported)


def measure_objgraph(target: Target, command: str, timeout: float) -> Sample:
    def op() -> dict[str, Any]:
        return target.call(command, timeout=timeout)

    try:
        doc, report = _window(target, op)
    except BenchError as exc:
        return Sample(ok=False, error=str(exc))
    reported = {k: v for k, v in doc.items() if k not in ("ok", "rows")}
    return _sample_from(report, ok=True, timeout=bool(doc.get("timeout")), reported=reported)


# ------------------------------------------------------------------------------------------------
# one heap size


OPERATIONS = [
    # (row, introspect args after PID or None, objgraph command or None, goal key)
    ("top", ["top"], "objgraph_top", "top"),
    ("growth (2nd call)", ["growth"], "objgraph_growth", "growth"),
    ("backrefs BenchLeaf", ["backrefs", "{leaf}"], "objgraph_chain", "backrefs"),
    ("backrefs Holder", ["backrefs", "{holder}"], "objgraph_chain", "backrefs"),
]


def _measure_introspect(
    intro: Introspect, target: Target, iargs: list[str], names: dict[str, str], retry_qualified: bool
) -> Sample:
    args = [a.format(**names) for a in iargs]
    s = intro.measure(target, [args[0], str(target.pid), *args[1:]])
    if not s.ok and retry_qualified and args[0] == "backrefs" and "." not in args[1] and args[1] in s.error:
        # the short type name was refused: try module.qualname once, and keep it if it works
        qualified = "__main__." + args[1]
        s2 = intro.measure(target, [args[0], str(target.pid), qualified])
        if s2.ok:
            names["leaf" if "{leaf}" in iargs else "holder"] = qualified
            return s2
    return s


def bench_size(size: int, opts: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    sizedir = Path(tempfile.mkdtemp(prefix=f"size-{size}-", dir=workdir))
    shutil.copy(opts.objgraph_py, sizedir / "objgraph.py")
    target = Target(opts.python, size, sizedir)
    try:
        ready = target.read(timeout=60 + size / 50_000)
        log(f"target pid {target.pid}: {ready['objects']:,} gc-tracked objects, Python {ready['python']}, "
            f"built in {ready['build_s']:.1f} s")
        time.sleep(0.3)
        _, base = _window(target, lambda: time.sleep(BASELINE_S))
        baseline = _sample_from(base, ok=True).as_json()
        log(f"baseline jitter ({BASELINE_S:g} s idle): main thread lost {baseline['pause_s'] * 1000:.1f} ms "
            f"(max gap {baseline['main_max_s'] * 1000:.1f} ms), ticker max gap {baseline['thread_gap_s'] * 1000:.1f} ms")

        intro = Introspect(opts.cli_python, opts.method, sizedir, opts.timeout)
        names = {"leaf": opts.leaf_type, "holder": "Holder"}
        slow = size > GOAL_SIZE
        chain_repeat = 0 if (slow and opts.skip_slow) else (opts.slow_repeat if slow else opts.repeat)
        if opts.skip_chain:
            chain_repeat = 0

        # Baselines: growth's first call (both tools) is not a measurement.
        warm: dict[str, Any] = {}
        doc, err = intro.run(["growth", str(target.pid)])
        warm["introspect_growth_1st"] = doc and {k: doc.get(k) for k in ("paused_s", "attach_pause_s", "agent_s")} or err
        warm["objgraph_growth_1st"] = measure_objgraph(target, "objgraph_growth", 300).as_json()
        log(f"growth baselines taken (introspect: {'ok' if doc else err})")

        samples: dict[str, dict[str, list[Sample]]] = {row: {"introspect": [], "objgraph": []} for row, *_ in OPERATIONS}
        chain_samples: list[Sample] = []  # shared by both backrefs rows
        failed: dict[str, str] = {}  # a command that failed once is not retried (it is not there yet)
        for r in range(opts.repeat):
            for row, iargs, ocmd, _goal in OPERATIONS:
                if row not in failed:
                    s = _measure_introspect(intro, target, iargs, names, retry_qualified=(r == 0))
                    samples[row]["introspect"].append(s)
                    if not s.ok:
                        failed[row] = s.error
                    said = s.error
                    if s.ok:
                        said = f"{s.pause_s * 1000:.0f} ms (reports {s.reported.get('paused_s', 0) * 1000:.0f} ms)"
                    log(f"[{r + 1}/{opts.repeat}] introspect {row}: {said}")
                if ocmd == "objgraph_chain":
                    # one chain search serves both backrefs rows
                    if row != "backrefs BenchLeaf" or len(chain_samples) >= chain_repeat:
                        continue
                    s = measure_objgraph(target, f"objgraph_chain {opts.chain_timeout:g}", opts.chain_timeout + 60)
                    chain_samples.append(s)
                else:
                    s = measure_objgraph(target, ocmd, 300)
                    samples[row]["objgraph"].append(s)
                log(f"[{r + 1}/{opts.repeat}] objgraph {ocmd}: "
                    + (f"{s.pause_s * 1000:.0f} ms{' (timeout)' if s.timeout else ''}" if s.ok else s.error))
        for row, *_ in OPERATIONS:
            if row.startswith("backrefs"):
                samples[row]["objgraph"] = chain_samples
        end = target.call("report count")
    finally:
        target.stop()
        shutil.rmtree(sizedir, ignore_errors=True)
    return {
        "size": size,
        "objects": ready["objects"],
        "objects_at_end": end.get("objects"),
        "python": ready["python"],
        "build_s": ready["build_s"],
        "baseline": baseline,
        "warmup": warm,
        "type_names": names,
        "rows": {row: {tool: [s.as_json() for s in ss] for tool, ss in by_tool.items()} for row, by_tool in samples.items()},
        "summary": summarize(samples, size, opts.chain_timeout),
    }


# ------------------------------------------------------------------------------------------------
# summary and table


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _side(ss: list[Sample], chain_timeout: float) -> dict[str, Any]:
    if not ss:
        return {"status": "skipped"}
    bad = [s for s in ss if not s.ok]
    if bad:
        return {"status": "failed", "error": bad[0].error}
    out: dict[str, Any] = {
        "status": "timeout" if any(s.timeout for s in ss) else "ok",
        "n": len(ss),
        "pause_s": _median([s.pause_s for s in ss]),
        "main_max_s": _median([s.main_max_s for s in ss]),
        "thread_gap_s": _median([s.thread_gap_s for s in ss]),
        "thread_lost_s": _median([s.thread_lost_s for s in ss]),
    }
    if out["status"] == "timeout":
        out["pause_s"] = max(out["pause_s"], chain_timeout)
    for key in ("paused_s", "attach_pause_s", "agent_s", "elapsed_s"):
        vals = [s.reported[key] for s in ss if isinstance(s.reported.get(key), (int, float))]
        if vals:
            out[key] = _median(vals)
    return out


def summarize(samples: dict[str, dict[str, list[Sample]]], size: int, chain_timeout: float) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for row, _i, _o, goal in OPERATIONS:
        i = _side(samples[row]["introspect"], chain_timeout)
        o = _side(samples[row]["objgraph"], chain_timeout)
        entry: dict[str, Any] = {"introspect": i, "objgraph": o, "goal": GOALS[goal] if size == GOAL_SIZE else None}
        if i["status"] == "ok" and o["status"] in ("ok", "timeout") and o["pause_s"] > 0:
            entry["ratio"] = i["pause_s"] / o["pause_s"]
            entry["ratio_is_upper_bound"] = o["status"] == "timeout"
            if entry["goal"] is not None and (entry["ratio"] <= entry["goal"] or not entry["ratio_is_upper_bound"]):
                entry["goal_met"] = entry["ratio"] <= entry["goal"]  # unknown when objgraph timed out above it
        summary[row] = entry
    return summary


def _ms(x: float) -> str:
    return f"{x * 1000:,.0f} ms" if x < 10 else f"{x:,.1f} s"


def _cell(side: dict[str, Any], chain_timeout: float) -> str:
    if side["status"] == "skipped":
        return "skipped"
    if side["status"] == "failed":
        return f"n/a (command failed: {side['error']})"
    if side["status"] == "timeout":
        return f">{chain_timeout:g} s (timeout)"
    return _ms(side["pause_s"])


def render_table(result: dict[str, Any], chain_timeout: float, repeat: int) -> str:
    b = result["baseline"]
    lines = [
        f"== {result['objects']:,} gc-tracked objects (target Python {result['python']}, "
        f"heap built in {result['build_s']:.1f} s; "
        f"median of {repeat}) ==",
        f"baseline, {BASELINE_S:g} s idle: main thread lost {_ms(b['pause_s'])} (max gap {_ms(b['main_max_s'])}), "
        f"ticker max gap {_ms(b['thread_gap_s'])}",
        "",
    ]
    head = ["operation", "introspect pause", "objgraph pause", "ratio", "goal",
            "introspect paused_s (attach + agent)", "thread gap intro / objgraph"]
    rows = [head]
    failed_notes = []
    for row, entry in result["summary"].items():
        i, o = entry["introspect"], entry["objgraph"]
        icell, ocell = _cell(i, chain_timeout), _cell(o, chain_timeout)
        if i["status"] == "failed":
            failed_notes.append(f"{row}: {icell}")
            icell = "n/a (command failed)"
        ratio = "-"
        if "ratio" in entry:
            ratio = ("<" if entry["ratio_is_upper_bound"] else "") + f"{entry['ratio']:.2f}x"
        goal = "-"
        if entry["goal"] is not None:
            goal = f"<={entry['goal']:g}x " + {True: "MET", False: "NOT MET"}.get(entry.get("goal_met"), "n/a")
        reported = "-"
        if i["status"] == "ok" and "paused_s" in i:
            reported = f"{_ms(i['paused_s'])} ({_ms(i.get('attach_pause_s', 0))} + {_ms(i.get('agent_s', 0))})"
        igap = _ms(i["thread_gap_s"]) if i["status"] == "ok" else "-"
        ogap = _ms(o["thread_gap_s"]) if o["status"] in ("ok", "timeout") else "-"
        gaps = f"{igap} / {ogap}"
        rows.append([row, icell, ocell, ratio, goal, reported, gaps])
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    for n, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for note in failed_notes:
        lines.append(f"  {note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# --injection: the injectors alone


BOOT_S = 0.003


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.99 * len(ordered)) - 1))]


def bench_injection(opts: argparse.Namespace, log: Any) -> list[dict[str, Any]]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from introspect.channel import MAGIC, make_run_dir
    from introspect.errors import IntrospectError
    from introspect.inject.gdb import GdbInjector
    from introspect.inject.pep768 import RemoteExecInjector
    from introspect.inject.ptrace import PtraceInjector
    from introspect.inject.remote import OwnRemoteExecInjector
    from introspect.target import inspect_target
    from tests.conftest import discover

    injectors: dict[str, Any] = {"ptrace": PtraceInjector(), "gdb": GdbInjector(), "pep768": OwnRemoteExecInjector(),
                                 "remote_exec": RemoteExecInjector()}
    kinds = [i for i in discover() if not opts.kinds or i.id in opts.kinds.split(",")]
    methods = [m for m in opts.methods.split(",") if m]
    bootstrap = f"{MAGIC}\npass\n"
    rows = []
    for interp in kinds:
        for method in methods:
            if (method in ("pep768", "remote_exec") and interp.version < (3, 14)) or (method not in injectors and method != "none"):
                continue
            target_proc = Target(interp.path, 0, Path(tempfile.gettempdir()), STOP_TARGET_SCRIPT)
            proc = target_proc.proc
            stops: list[float] = []
            longest: list[float] = []
            reported: list[float] = []
            error = ""
            try:
                target_proc.read(20)
                time.sleep(0.2)
                target = inspect_target(proc.pid)
                for _ in range(opts.injection):
                    run = make_run_dir(target)
                    try:
                        target_proc.call_raw("mark")
                        time.sleep(0.002)
                        # Only gaps overlapping the injector's calls count (+ BOOT_S after the first,
                        # for the no-op bootstrap's run): scheduler noise elsewhere in the window does not.
                        t0 = time.monotonic()
                        inj = injectors[method].inject(target, run, bootstrap) if method != "none" else None
                        spans = [(t0, time.monotonic() + BOOT_S)]
                        time.sleep(0.02)  # the pending call runs (the loop is always in Python code)
                        if inj is not None:
                            t1 = time.monotonic()
                            injectors[method].release(target, inj)
                            spans.append((t1, time.monotonic()))
                        time.sleep(0.002)
                        rep = target_proc.call_raw("report")
                    finally:
                        run.remove()
                    inside = [min(e, se) - max(s, ss) for s, e in rep["gaps"] for ss, se in spans if s < se and e > ss]
                    stops.append(sum(inside))
                    longest.append(max(inside, default=0.0))
                    reported.append(inj.attach_pause_s if inj is not None else 0.0)
            except (IntrospectError, BenchError, OSError) as exc:
                error = str(exc)
            finally:
                target_proc.stop()
            row = {"kind": interp.id, "python": ".".join(map(str, interp.version)), "method": method, "n": len(stops),
                   "error": error}
            if stops:
                row.update(stop_median_s=statistics.median(stops), stop_p99_s=_p99(stops),
                           max_gap_median_s=statistics.median(longest), reported_median_s=statistics.median(reported))
            log(f"{interp.id} {method}: " + (f"median {row['stop_median_s'] * 1e3:.2f} ms, p99 {row['stop_p99_s'] * 1e3:.2f} ms"
                                            if stops else error))
            rows.append(row)
    return rows


def render_injection(rows: list[dict[str, Any]], n: int) -> str:
    head = ["kind", "method", f"stop median (of {n})", "stop p99", "injector's own figure (median)", "note"]
    table = [head]
    for r in rows:
        if "stop_median_s" in r:
            table.append([r["kind"], r["method"], f"{r['stop_median_s'] * 1e3:.2f} ms", f"{r['stop_p99_s'] * 1e3:.2f} ms",
                          f"{r['reported_median_s'] * 1e3:.2f} ms", r["error"][:60]])
        else:
            table.append([r["kind"], r["method"], "-", "-", "-", f"failed: {r['error'][:80]}"])
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    lines = []
    for k, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="interpreter for the targets (default: this one, %(default)s)")
    p.add_argument("--cli-python", default=sys.executable, metavar="PATH",
                   help="interpreter that runs introspect itself (default: %(default)s)")
    p.add_argument("--sizes", default="1000000,5000000", help="heap sizes in gc-tracked objects (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help=f"only {GOAL_SIZE:,} objects (where the goals apply)")
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="measurements per operation; the median is reported (default: 3)")
    p.add_argument("--slow-repeat", type=int, default=1, metavar="N",
                   help=f"objgraph chain measurements above {GOAL_SIZE:,} objects (~60 s each at 5M; default: 1)")
    p.add_argument("--skip-slow", action="store_true", help=f"skip objgraph's chain search above {GOAL_SIZE:,} objects")
    p.add_argument("--skip-chain", action="store_true", help="skip objgraph's chain search at every size")
    p.add_argument("--chain-timeout", type=float, default=120.0, metavar="S",
                   help="interrupt objgraph's chain search after S s and report '>S s (timeout)' (default: 120)")
    p.add_argument("--method", default="auto", help="introspect --method (default: auto)")
    p.add_argument("--timeout", type=float, default=20.0, metavar="S", help="introspect --timeout (default: 20)")
    p.add_argument("--leaf-type", default="BenchLeaf", help="type name given to `introspect backrefs` (default: %(default)s)")
    p.add_argument("--results-dir", default=str(REPO / "bench-results"), metavar="DIR",
                   help="where the JSON goes (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--injection", type=int, default=0, metavar="N",
                   help="measure the injectors alone: N no-op injections per interpreter kind and method")
    p.add_argument("--kinds", default="", help="--injection: interpreter kinds (pyenv-3.8,sid-3.14,...; default: all)")
    p.add_argument("--methods", default="none,ptrace,gdb,pep768,remote_exec",
                   help="--injection: methods; none = the same window without injecting (noise floor), pep768 = our "
                        "own client, remote_exec = sys.remote_exec (default: %(default)s)")
    opts = p.parse_args(argv)
    try:
        opts.size_list = [GOAL_SIZE] if opts.quick else [int(s.replace("_", "")) for s in opts.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes: not a list of integers: {opts.sizes!r}")
    if opts.repeat < 1 or opts.slow_repeat < 0:
        p.error("--repeat must be >= 1 and --slow-repeat >= 0")
    return opts


def find_objgraph() -> str:
    try:
        import objgraph  # noqa: F401 - only its file is needed: it is copied next to the target
    except ImportError:
        raise BenchError(f"objgraph is not installed for {sys.executable}: {sys.executable} -m pip install objgraph") from None
    return str(Path(objgraph.__file__))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def log(msg: str) -> None:
        if not opts.quiet:
            print(f"bench: {msg}", file=sys.stderr, flush=True)

    # SIGTERM -> SystemExit, so the finally blocks kill and reap the targets.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        opts.objgraph_py = find_objgraph()
        if not shutil.which(opts.python) and not Path(opts.python).exists():
            raise BenchError(f"--python {opts.python}: not found")
        load0 = os.getloadavg()[0]
        if load0 > 0.5 * (os.cpu_count() or 1):
            log(f"warning: load average {load0:.1f} on {os.cpu_count()} CPUs: other work competes with the target, "
                "expect noisy numbers")
        if opts.injection:
            rows = bench_injection(opts, log)
            print(render_injection(rows, opts.injection))
            print(f"stop = time the target's only thread lost per injection (gaps > 0.1 ms in a window around it); "
                  f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
            return _write_results({"started": started, "mode": "injection", "n": opts.injection, "rows": rows,
                                   "loadavg_start": load0, "loadavg_end": os.getloadavg()[0], "git": _git_head()},
                                  opts, started)
        results = []
        with tempfile.TemporaryDirectory(prefix="introspect-bench-") as tmp:
            for size in opts.size_list:
                log(f"--- {size:,} objects ---")
                results.append(bench_size(size, opts, Path(tmp), log))
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; targets were killed", file=sys.stderr)
        return 130
    took = time.monotonic() - t0

    print()
    for res in results:
        print(render_table(res, opts.chain_timeout, opts.repeat))
        print()
    print("pause = main-thread time lost in the window (what the target's own code could not run); "
          "thread gap = longest stall of another thread (1 ms ticker).")
    print(f"whole run: {took:.0f} s; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"({os.cpu_count()} CPUs)")

    doc = {
        "started": started,
        "took_s": round(took, 3),
        "argv": sys.argv[1:] if argv is None else argv,
        "cli_python": opts.cli_python,
        "target_python": opts.python,
        "method": opts.method,
        "repeat": opts.repeat,
        "cpus": os.cpu_count(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg()[0],
        "git": _git_head(),
        "goals": {k: v for k, v in GOALS.items()},
        "goal_size": GOAL_SIZE,
        "results": results,
    }
    return _write_results(doc, opts, started)


def _write_results(doc: dict[str, Any], opts: argparse.Namespace, started: str) -> int:
    out_dir = Path(opts.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{started}.json"
    n = 1
    while path.exists():
        n += 1
        path = out_dir / f"bench-{started}-{n}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results written to {path}")
    return 0


def _git_head() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
