"""Watch a process's memory from the outside: RSS, VMS and USS over time, the trend and a verdict.

Nothing is injected and the process is never attached to or stopped: samples come from /proc
through psutil, so any process can be watched (not only Python). Stop with Ctrl-C (the normal way,
unless --duration is given): what was sampled is always written out: monitor.csv, monitor.svg
(memory over time with the least-squares trend line; monitor.png too where matplotlib is installed),
monitor.json and monitor.txt. On the terminal a one-line chart shows the shape.

Verdict (a line fitted through RSS): "steady growth" when the slope is significant (at least 4
times its standard error), the line explains at least 80% of the variance (r² >= 0.8) and it rose
by 64 KiB or more (a short window is judged by its slope, and the projection per hour and per day
is stated); "shrinking" the same, falling; "flat" when both the change and the scatter stay under
1 MiB; "noisy" otherwise; "too few samples" below 5 samples. "levelled off" when memory climbed
and then stayed flat for at least the last quarter of the window (a capped cache that filled up, a
worker that warmed up): the level and the time it levelled off are given, and only the slope after
it is projected. MB means MiB (2**20 bytes).

Examples:
  introspect monitor 1234                         # every second until Ctrl-C
  introspect monitor 1234 --interval 5 --duration 600 --children
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from introspect import errors
from introspect.commands import add_output_options, emit
from introspect.render.output import OutputDir
from introspect.trend import MIB, MIN_STEADY_BYTES, R2_STEADY, Trend, memory_trend


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the first sample
    rss: int  # with --children: summed over the process and its children
    vms: int
    uss: int | None  # None when it could not be read (another user's process without privileges)
    children: dict[int, int] = field(default_factory=dict)  # child pid -> its RSS (with --children)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"t": round(self.t, 3), "rss": self.rss, "vms": self.vms,
                               "uss": self.uss}
        if self.children:
            doc["children"] = {str(pid): rss for pid, rss in self.children.items()}
        return doc


def open_process(pid: int) -> psutil.Process:
    """The process to watch, or a plain error. No ptrace rule applies: only /proc is read."""
    if pid <= 0:
        raise errors.NoSuchProcess(f"{pid} is not a valid pid", pid=pid)
    try:
        proc = psutil.Process(pid)
        status = proc.status()
        name = proc.name()
    except psutil.ZombieProcess:
        status, name = psutil.STATUS_ZOMBIE, "?"
    except psutil.NoSuchProcess:
        raise errors.NoSuchProcess("no such process", pid=pid) from None
    except psutil.AccessDenied:
        raise errors.AccessDenied(
            "cannot read the process's details", pid=pid,
            help="Run introspect as the process's user or as root (sudo -E introspect ...).",
        ) from None
    if status == psutil.STATUS_ZOMBIE:
        raise errors.BadTargetState(
            "the process is a zombie: it has exited and waits for its parent to reap it", pid=pid,
            name=name, help="There is no memory left to watch. Look at its parent.",
        )
    return proc


class Sampler:
    """Reads memory figures from /proc through psutil; the first reading is t = 0."""

    def __init__(self, pid: int, children: bool) -> None:
        self.proc = open_process(pid)
        self.pid = pid
        self.name = self.proc.name()
        self.with_children = children
        self.uss_note: str | None = None
        self.t0: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def _memory(self, proc: psutil.Process) -> tuple[int, int, int | None]:
        if self.uss_note is None:
            try:
                full = proc.memory_full_info()
                return full.rss, full.vms, full.uss
            except psutil.AccessDenied:
                # USS needs /proc/PID/smaps, which only the owner (or root) may read.
                self.uss_note = (
                    "USS unavailable (reading /proc/PID/smaps was denied: another user's process); "
                    "RSS and VMS only. Run as the process's user or root to get USS."
                )
        info = proc.memory_info()
        return info.rss, info.vms, None

    def take(self) -> Sample:
        """One sample; raises TargetExited once the process is gone (or a zombie)."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        t = now - self.t0
        try:
            if self.proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.ZombieProcess(self.pid)
            rss, vms, uss = self._memory(self.proc)
            kids = self.proc.children(recursive=True) if self.with_children else []
        except psutil.NoSuchProcess:  # ZombieProcess included
            raise errors.TargetExited(
                f"the process exited {t:.1f} s after monitoring started", pid=self.pid,
                name=self.name, help="What was sampled until then has been written.",
            ) from None
        per_child: dict[int, int] = {}
        for kid in kids:
            try:
                k_rss, k_vms, k_uss = self._memory(kid)
            except psutil.NoSuchProcess:
                # a child that ended between listing and reading (a recycled prefork child)
                continue
            per_child[kid.pid] = k_rss
            rss += k_rss
            vms += k_vms
            uss = None if uss is None or k_uss is None else uss + k_uss
        if self.uss_note is not None:
            uss = None
        return Sample(t, rss, vms, uss, per_child)


def mb(n: float) -> str:
    return f"{n / MIB:,.1f} MB"


class Progress:
    """One updating line on stderr, only when stderr is a terminal; silent otherwise."""

    def __init__(self) -> None:
        self.on = sys.stderr.isatty()
        self.dirty = False

    def show(self, text: str) -> None:
        if self.on:
            sys.stderr.write(f"\r\x1b[Kintrospect: {text}")
            sys.stderr.flush()
            self.dirty = True

    def done(self) -> None:
        if self.dirty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.dirty = False


def sample_loop(
    sampler: Sampler, interval: float, duration: float | None,
    on_sample: Callable[[Sample], None] = lambda s: None,
) -> tuple[list[Sample], str, errors.TargetExited | None]:
    """Sample every ``interval`` s until ``duration`` (or Ctrl-C, or the target's exit).

    Returns the samples, why sampling stopped ("duration", "interrupted", "target exited") and the
    exit error to raise once the outputs are written. Ctrl-C is the normal way to stop: never lost.
    """
    samples: list[Sample] = []
    try:
        next_t = 0.0
        while True:
            samples.append(sampler.take())
            on_sample(samples[-1])
            if duration is not None and samples[-1].t >= duration - 1e-6:
                return samples, "duration", None
            next_t += interval
            if duration is not None:
                next_t = min(next_t, duration)
            delay = next_t - sampler.elapsed()
            if delay > 0:
                time.sleep(delay)
            else:
                # a slow read: skip the missed slots, keep the real times
                next_t = sampler.elapsed()
    except KeyboardInterrupt:
        return samples, "interrupted", None
    except errors.TargetExited as exc:
        return samples, "target exited", exc


def csv_text(samples: list[Sample], children: bool) -> str:
    """t, rss, vms, uss in bytes (uss empty when unavailable), then rss_<pid> per child ever
    seen."""
    kids = sorted({pid for s in samples for pid in s.children}) if children else []
    lines = [",".join(["t", "rss", "vms", "uss", *(f"rss_{pid}" for pid in kids)])]
    for s in samples:
        row = [f"{s.t:.3f}", str(s.rss), str(s.vms), "" if s.uss is None else str(s.uss)]
        row += [str(s.children[pid]) if pid in s.children else "" for pid in kids]
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def trend_of(samples: list[Sample]) -> Trend:
    return memory_trend([s.t for s in samples], [s.rss for s in samples])


def write_outputs(
    out: OutputDir, sampler: Sampler, samples: list[Sample], trend: Trend,
    parts: list[tuple[float, dict[str, Any]]] | None = None,
) -> tuple[str, str, str | None, list[str]]:
    """monitor.csv, monitor.svg and, where matplotlib is installed, monitor.png; returns their paths
    (png None when it could not be drawn) and notes. ``parts``: (time, memory breakdown) at the
    looks that had one, stacked under the RSS line in the SVG."""
    notes: list[str] = []
    csv_path = str(out.write_text("monitor.csv", csv_text(samples, sampler.with_children)))
    what = "RSS of the process and its children" if sampler.with_children else "RSS"
    title = (
        f"pid {sampler.pid} ({sampler.name}): {what} {trend.slope_mb_per_hour:+,.1f} MB/hour "
        f"(r² {trend.r2:.2f}): {trend.verdict}"
    )
    from introspect.render.plot import memory_png, memory_svg

    ts = [s.t for s in samples]
    rss_label = "RSS (with children)" if sampler.with_children else "RSS"
    series: list[tuple[str, list[float | None]]] = [(rss_label, [float(s.rss) for s in samples])]
    if samples and all(s.uss is not None for s in samples):
        series.append(("USS", [float(s.uss) if s.uss is not None else None for s in samples]))
    svg_path = str(out.write_text("monitor.svg", memory_svg(ts, series, trend, title, parts=parts)))
    try:
        data = memory_png(ts, [s.rss for s in samples], [s.uss for s in samples], trend, title,
                          rss_label=rss_label)
    except ImportError:
        # The SVG is the chart; a PNG is an extra for those who installed matplotlib.
        return csv_path, svg_path, None, notes
    return csv_path, svg_path, str(out.write_bytes("monitor.png", data)), notes


def wall(
    pid: int, rss: int, trend: Trend, summed: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """The limit that applies to ``pid``, when a growing trend reaches it, and the role's stopgap:
    (JSON fields ``limit``, ``seconds_to_limit``, ``stopgap``; lines for the text). ``summed``:
    ``rss`` is the process's with its children's (monitor --children on a master)."""
    from introspect import limits, procs

    growing = trend.verdict == "steady growth" and trend.slope_bytes_per_s > 0
    limit = limits.memory_limit(pid, rss)
    doc: dict[str, Any] = {"limit": limit.as_json() if limit else None, "seconds_to_limit": None,
                           "stopgap": None}
    lines: list[str] = []
    line = limits.wall_line(limit, trend.slope_bytes_per_s, growing)
    if line:
        lines.append(line)
    if not growing:
        return doc, lines
    secs = limits.seconds_to_limit(limit, trend.slope_bytes_per_s)
    doc["seconds_to_limit"] = round(secs, 1) if secs is not None else None
    try:  # the role decides the stopgap; a process that has exited has none
        me, kids = procs.workers_of(pid)
        if me is None:
            return doc, lines
        workers = max(1, len(kids))
        if me.role.endswith(("-child", "-worker")):
            _parent, siblings = procs.workers_of(me.ppid)
            workers = max(1, sum(1 for k in siblings if k.role == me.role))
    except (errors.IntrospectError, psutil.Error, OSError):
        return doc, lines
    per_worker = rss // workers if summed and kids else rss
    slope = trend.slope_bytes_per_s / workers if summed and kids else trend.slope_bytes_per_s
    gap = limits.stopgap(me.role, per_worker, slope, limit, workers)
    if gap is not None:
        doc["stopgap"] = gap.as_json()
        lines.append(gap.text)
    return doc, lines


def trend_fields(trend: Trend) -> dict[str, Any]:
    return {
        "slope_bytes_per_s": round(trend.slope_bytes_per_s, 3),
        "slope_mb_per_hour": round(trend.slope_mb_per_hour, 3),
        "slope_mb_per_day": round(trend.slope_mb_per_day, 3),
        "r2": round(trend.r2, 4),
        "verdict": trend.verdict,
        "change_bytes": round(trend.change_bytes),
        "noise_bytes": round(trend.noise_bytes),
        "levelled_off_at": None if trend.levelled_off_at is None else round(trend.levelled_off_at),
        "since_s": None if trend.since_s is None else round(trend.since_s, 3),
        "flat_for_s": None if trend.flat_for_s is None else round(trend.flat_for_s, 3),
        "recent_slope_bytes_per_s": (
            None
            if trend.recent_slope_bytes_per_s is None
            else round(trend.recent_slope_bytes_per_s, 3)
        ),
    }


def trend_line(trend: Trend, what: str = "RSS") -> str:
    """The slope and verdict, with the numbers the verdict was drawn from.

    >>> t = Trend(21, 20.0, 11_646.0, 0.0, 0.97, 232_920.0, 9_000.0, "steady growth", 25.0)
    >>> print(trend_line(t))
    RSS slope +11,646 bytes/s = +40.0 MB/hour: steady growth, +960 MB/day at this rate (fitted
    change +0.2 MB over 20.0 s, r² 0.97, noise 0.0 MB)
    """
    projection = (
        f", {_per_day(trend.slope_mb_per_day)} at this rate"
        if trend.verdict in ("steady growth", "shrinking")
        else ""
    )
    if trend.levelled_off_at is not None and trend.since_s is not None:
        return _plateau_line(trend, what)
    return (
        f"{what} slope {trend.slope_bytes_per_s:+,.0f} bytes/s = {trend.slope_mb_per_hour:+,.1f} "
        f"MB/hour: {trend.verdict}{projection} (fitted change {trend.change_bytes / MIB:+,.1f} MB "
        f"over {trend.span_s:.1f} s, "
        f"r² {trend.r2:.2f}, noise {mb(trend.noise_bytes)})" + _watch_longer(trend)
    )


def _plateau_line(trend: Trend, what: str) -> str:
    """A climb that stopped: the level, since when, and only the slope after it projected.

    >>> t = Trend(85, 420.0, 20_000.0, 0.0, 0.9, 8e6, 9e5, "levelled off", 30.0, 77.0 * MIB,
    ...           275.0, 50.0, 145.0)
    >>> print(_plateau_line(t, "RSS"))
    RSS grew then levelled off at ~77 MB since 275 s (+0.2 MB/hour over the last 145 s)
    """
    assert trend.levelled_off_at is not None and trend.since_s is not None
    recent = trend.projected_bytes_per_s * 3600 / MIB
    flat_for = trend.flat_for_s or 0.0
    return (
        f"{what} grew then levelled off at ~{trend.levelled_off_at / MIB:,.0f} MB "
        f"since {trend.since_s:,.0f} s ({recent:+,.1f} MB/hour over the last {flat_for:,.0f} s)"
    )


def _sparkline(values: list[int]) -> str:
    """The shape of the series in one line; plain ASCII where stdout cannot encode block
    characters."""
    from introspect.render.plot import BARS, sparkline

    try:
        BARS.encode(sys.stdout.encoding or "ascii")
        plain = False
    except (UnicodeEncodeError, LookupError):
        plain = True
    return sparkline([float(v) for v in values], ascii_only=plain)


def _per_day(mb_per_day: float) -> str:
    """MB/day, or GB/day once that reads better.

    >>> _per_day(960.2), _per_day(-25_000.0)
    ('+960 MB/day', '-24.4 GB/day')
    """
    if abs(mb_per_day) >= 10_000:
        return f"{mb_per_day / 1024:+,.1f} GB/day"
    return f"{mb_per_day:+,.0f} MB/day"


def _watch_longer(trend: Trend) -> str:
    """A flat window whose line rises cleanly but by too little to tell: say how long would tell.

    >>> _watch_longer(Trend(11, 5.0, 2_000.0, 0.0, 0.98, 10_000.0, 1_000.0, "flat"))
    '; it rises steadily but by too little to tell: watch for 33 s or more (the time to rise 64 KiB
    at this slope)'
    """
    if trend.verdict != "flat" or trend.slope_bytes_per_s <= 0 or trend.r2 < R2_STEADY:
        return ""
    need_s = MIN_STEADY_BYTES / trend.slope_bytes_per_s
    return (
        f"; it rises steadily but by too little to tell: watch for {need_s:,.0f} s or more (the "
        "time to rise 64 KiB at this slope)"
    )


class Command:
    name = "monitor"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "pid", type=int, help="process id to watch (any process; nothing is injected)"
        )
        parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                            help="seconds between samples (default: 1)")
        parser.add_argument("--duration", type=float, default=None, metavar="S",
                            help="stop after S seconds (default: at Ctrl-C)")
        parser.add_argument(
            "--children", action="store_true",
            help="sum over the process and all its children (per-child RSS columns in the CSV)",
        )
        add_output_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        if args.interval <= 0 or (args.duration is not None and args.duration <= 0):
            raise errors.UsageError("--interval and --duration must be > 0 seconds")
        sampler = Sampler(args.pid, args.children)
        out = OutputDir(self.name, args.pid, args.output)
        progress = Progress()

        until = "  (Ctrl-C to stop)" if args.duration is None else f" of {args.duration:g} s"

        def show(s: Sample) -> None:
            progress.show(
                f"pid {args.pid}: {s.t:.1f} s{until}, RSS {mb(s.rss)}"
                + (f", USS {mb(s.uss)}" if s.uss is not None else "")
            )

        samples, stopped, exited = sample_loop(sampler, args.interval, args.duration, show)
        progress.done()
        trend = trend_of(samples)
        csv_path, svg_path, png_path, notes = write_outputs(out, sampler, samples, trend)
        if sampler.uss_note:
            notes.insert(0, sampler.uss_note)
        wall_fields, wall_lines = (
            wall(args.pid, samples[-1].rss, trend, args.children) if samples else ({}, [])
        )
        doc: dict[str, Any] = {"pid": args.pid, "name": sampler.name, "interval_s": args.interval,
                               "duration_s": round(samples[-1].t, 3) if samples else 0.0,
                               "children": args.children, "stopped": stopped,
                               "samples": [s.as_json() for s in samples], **trend_fields(trend),
                               **wall_fields, "csv": csv_path, "svg": svg_path, "png": png_path,
                               "notes": notes}
        emit(args, out, doc, render(doc, trend, samples, wall_lines))
        if exited is not None:
            raise exited
        return 0


def render(
    doc: dict[str, Any], trend: Trend, samples: list[Sample], wall_lines: list[str] | None = None
) -> str:
    what = "RSS (process + children)" if doc["children"] else "RSS"
    lines = [
        f"pid {doc['pid']} ({doc['name']}): {len(samples)} samples over {doc['duration_s']:.1f} s, "
        f"every {doc['interval_s']:g} s"
        + ("" if doc["stopped"] == "duration" else f"; stopped: {doc['stopped']}")
    ]
    if samples:
        first, last = samples[0], samples[-1]
        span = f"{what} {mb(first.rss)} -> {mb(last.rss)}"
        if first.uss is not None and last.uss is not None:
            span += f", USS {mb(first.uss)} -> {mb(last.uss)}"
        lines.append(span)
    lines.append(trend_line(trend, what))
    lines += wall_lines or []
    if len(samples) >= 2:
        lines.append(
            f"{what} over time: {_sparkline([s.rss for s in samples])}  "
            f"({mb(min(s.rss for s in samples))} .. {mb(max(s.rss for s in samples))})"
        )
    lines += doc["notes"]
    lines.append(f"csv: {doc['csv']}")
    lines.append(f"svg: {doc['svg']}")
    if doc["png"]:
        lines.append(f"png: {doc['png']}")
    return "\n".join(lines)
