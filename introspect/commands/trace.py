"""Where memory is allocated: tracemalloc in a live process, started, read and stopped from here.

  start   start tracing (CPython's builtin _tracemalloc; nothing is installed). The trace ends
          by itself after --for (default 10m): a timer thread inside the target stops it, so a
          forgotten trace ends even if introspect is killed. If the application already traces,
          its tracing is left alone (show reads it, stop never stops it).
  show    live traced memory by allocation site (file:line, function), with the signed change
          since the previous show (the first show: since tracing began); --traceback N groups
          by the N innermost frames (start with --frames N to record them).
  stop    show what was seen last, stop tracing and free the traces.

Tracing costs the target CPU and memory while on (see docs/benchmarks.md, "Tracing overhead");
nothing is left once it has ended.

Examples:
  introspect trace start 1234 --for 15m
  introspect trace show 1234            # again a minute later: the leaking line comes first
  introspect trace stop 1234
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from introspect import errors, tracing
from introspect.commands import add_collector_options, add_target_options, emit, header, logger
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes, table
from introspect.runner import Outcome, run_agent
from introspect.snapshot import collect

DEFAULT_FOR_S = 600.0
MAX_FOR_S = 7 * 24 * 3600.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '1d' -> seconds.

    >>> parse_duration("15m")
    900.0
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (examples: 90s, 15m, 2h)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= MAX_FOR_S:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a trace lasts more than 0 s and at most 7 days"
        )
    return seconds


def _duration_text(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def _signed_bytes(n: int) -> str:
    return "0" if n == 0 else ("+" if n > 0 else "-") + human_bytes(abs(n))


class Command:
    name = "trace"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "action", choices=["start", "show", "stop"], help="start, show or stop tracing"
        )
        add_target_options(parser)
        group = parser.add_argument_group("start")
        group.add_argument(
            "--frames",
            type=int,
            default=1,
            metavar="N",
            help="frames recorded per allocation (1-100; default 1; more frames cost more, see "
                 "docs/benchmarks.md)",
        )
        group.add_argument(
            "--for", dest="for_s", type=parse_duration, default=DEFAULT_FOR_S, metavar="DURATION",
            help="tracing ends by itself after DURATION (e.g. 90s, 15m, 2h; default 10m)",
        )
        group = parser.add_argument_group("show and stop")
        group.add_argument(
            "--traceback", type=int, default=1, metavar="N",
            help="group by the N innermost frames and show them (needs start --frames N or more)",
        )
        group.add_argument("-n", "--limit", type=int, default=25,
                           help="show the N sites that grew most (default: 25; 0 = all)")
        group.add_argument(
            "--max-traces",
            type=int,
            default=200_000,
            metavar="N",
            help="with --in-process (or no memory to fork): read the traces in the target when "
                 "about N or fewer are live (default: 200000; reading pauses the target ~5-25 us "
                 "and leaves ~100 bytes of temporaries per trace)",
        )
        add_collector_options(parser)
        group.add_argument(
            "--budget",
            type=float,
            default=10.0,
            metavar="S",
            help="stop grouping after S seconds in the target; the show is then marked partial "
                 "(default: 10)",
        )

    def run(self, args: argparse.Namespace) -> int:
        if not 1 <= args.frames <= 100:
            raise errors.UsageError("--frames N needs 1 <= N <= 100")
        if not 1 <= args.traceback <= 100:
            raise errors.UsageError("--traceback N needs 1 <= N <= 100")
        out = OutputDir(f"trace-{args.action}", args.pid, args.output) if args.output else None
        log = logger(args)
        if args.action == "start":
            return self._start(args, out, log)
        outcome, res, col = read(args, log)
        return self._show(args, out, outcome, res, col)

    def _start(self, args: argparse.Namespace, out: OutputDir | None, log: Any) -> int:
        outcome = run_agent(args.pid, "trace_start", {"frames": args.frames, "for_s": args.for_s},
                            method=args.method, timeout=args.timeout, log=log)
        res = outcome.result
        pid, ctime = outcome.target.pid, outcome.target.create_time
        doc: dict[str, Any] = {**outcome.meta(), "status": res["status"], "tracing": res["tracing"],
                               "owner": res["owner"], "frames": res["frames"],
                               "remaining_s": _round(res["remaining_s"]),
                               "tracemalloc_memory": res["tracemalloc_memory"]}
        lines = [header(outcome)]
        if res["status"] == "application":
            lines.append(
                f"pid {pid} already traces: the application started tracemalloc itself "
                f"({res['frames']} frame(s)). It is left as it is: `introspect trace show` reads "
                "it, `introspect trace stop` will not stop it."
            )
        else:
            ends = time.strftime("%H:%M:%S", time.localtime(time.time() + res["remaining_s"]))
            verb = {
                "started": "tracing started", "extended": "tracing was on: its end moved",
                "restarted": "tracing restarted (new frame count; earlier traces dropped)",
            }[res["status"]]
            lines.append(
                f"{verb} in pid {pid}: {res['frames']} frame(s) per allocation; ends by itself in "
                f"{_duration_text(res['remaining_s'])} (at {ends}), even if introspect is gone."
            )
            lines.append(
                f"next: `introspect trace show {pid}` (again later: the growing lines come first), "
                f"`introspect trace stop {pid}` to end it now."
            )
            state = tracing.load(pid, ctime)
            if state.get("session") != res["session"] or res["status"] == "restarted":
                state = {"session": res["session"], "shows": {}}
            state["ends_at"] = time.time() + res["remaining_s"]
            tracing.save(pid, ctime, state)
        emit(args, out, doc, "\n".join(lines))
        return 0

    def _show(self, args: argparse.Namespace, out: OutputDir | None, outcome: Outcome,
              res: dict[str, Any], col: dict[str, Any]) -> int:
        target = outcome.target
        state = tracing.load(target.pid, target.create_time)
        names = tracing.FunctionNames(target.root)
        depth = str(args.traceback)
        session = res.get("session") or "application"
        if state.get("session") != session:
            previous_state: dict[str, Any] = {"session": session, "shows": {}}
            ended = state.get("ends_at") if state.get("session") else None
        else:
            previous_state, ended = state, None
        last = previous_state["shows"].get(depth)
        raw = res.get("sites", [])
        rows = tracing.sites(raw, last["sites"] if last else None, names) if res["tracing"] else []
        with_tb = args.traceback > 1
        doc: dict[str, Any] = {
            **outcome.meta(), "tracing": res["tracing"], "owner": res["owner"],
            "frames": res["frames"], "remaining_s": _round(res["remaining_s"]),
            "traced_bytes": res["traced"][0], "traced_peak_bytes": res["traced"][1],
            "tracemalloc_memory": res["tracemalloc_memory"], "traces": res.get("traces", 0),
            "since": "previous show" if last else "tracing began",
            "since_s": round(time.time() - last["time"], 3) if last else None, "collector": col,
            "partial": bool(res.get("partial")), "reason": res.get("reason") or None,
            "sites": [s.as_json(with_tb) for s in (rows[: args.limit] if args.limit else rows)],
        }
        if res.get("inherited_from"):
            doc["inherited_from"] = res["inherited_from"]
        if args.action == "stop":
            doc["stopped"] = res["stopped"]
            doc["tracing_after"] = res["tracing_after"]
            doc["tracemalloc_memory_after"] = res["tracemalloc_memory_after"]
        if res["tracing"] and not res.get("partial"):
            previous_state["shows"][depth] = {"time": time.time(), "sites": tracing.figures(raw)}
        if args.action == "stop" and res.get("stopped"):
            tracing.forget(target.pid, target.create_time)
        elif res["tracing"] or args.action == "stop":
            tracing.save(target.pid, target.create_time, previous_state)
        emit(
            args,
            out,
            doc,
            render(outcome, doc, rows[: args.limit] if args.limit else rows, names, with_tb, ended,
                   args),
        )
        return 0


def read(args: argparse.Namespace, log: Any) -> tuple[Outcome, dict[str, Any], dict[str, Any]]:
    """The traces, read in a forked copy of the target when it can fork (the target then pauses
    only for the fork), else in the target itself within --max-traces and --budget. For `stop`,
    tracing is then stopped in the target itself."""
    if args.collector != "in-process":
        mode = "fork" if args.collector == "fork" else "auto"
        depth = args.traceback

        def analyse(snap: Any, walker: collect.Walker) -> dict[str, Any]:
            return walker.traces(depth)

        outcome, got, col = collect.take(
            args.pid, mode, analyse, method=args.method, timeout=args.timeout, log=log, walk=False
        )
        if outcome is not None and got is not None:
            col = {"path": "fork", "why": col["why"], "fork_pause_s": col.get("fork_pause_s")}
            if args.action == "stop":
                stop = run_agent(args.pid, "trace_stop", {"read": False}, method=args.method,
                                 timeout=args.timeout, log=log)
                for key in ("stopped", "tracing_after", "tracemalloc_memory_after"):
                    got[key] = stop.result[key]
                outcome.injection.attach_pause_s += stop.paused_s
            return outcome, got, col
        log(f"reading the traces in the target: {col['why']}")
    else:
        col = {"path": "in-process", "why": "--in-process given"}
    params = {"traceback": args.traceback, "max_traces": args.max_traces, "budget": args.budget}
    outcome = run_agent(
        args.pid, f"trace_{args.action}", params, method=args.method, timeout=args.timeout, log=log
    )
    return outcome, outcome.result, {"path": "in-process", "why": col["why"]}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def render(outcome: Outcome, doc: dict[str, Any], rows: list[tracing.Site],
           names: tracing.FunctionNames, with_tb: bool, ended_at: float | None,
           args: argparse.Namespace) -> str:
    pid = doc["pid"]
    lines = [header(outcome)]
    if not doc["tracing"]:
        if ended_at and ended_at <= time.time() + 1:
            when = time.strftime("%H:%M:%S", time.localtime(ended_at))
            lines.append(
                f"tracing is off in pid {pid}: the trace introspect started ended by itself at "
                f"{when} (--for ran out)."
            )
        else:
            lines.append(f"tracing is off in pid {pid}.")
        lines.append(f"start it: `introspect trace start {pid} [--frames N] [--for 15m]`")
        return "\n".join(lines)
    if doc["owner"] == "application":
        who = "the application's own tracing (introspect will not stop it)"
    elif doc.get("inherited_from"):
        who = (
            f"inherited over fork from pid {doc['inherited_from']}: no timer ends it in this "
            f"process; `introspect trace stop {pid}` ends it"
        )
    else:
        who = f"started by introspect, ends by itself in {_duration_text(doc['remaining_s'] or 0)}"
    lines.append(f"tracing: on, {doc['frames']} frame(s), {who}")
    col = doc["collector"]
    lines.append(
        "traces read in a forked copy (the fork paused the target "
        f"{col['fork_pause_s'] * 1000:.1f} ms)"
        if col["path"] == "fork"
        else f"traces read inside the target ({col['why']})"
    )
    lines.append(
        f"traced now {human_bytes(doc['traced_bytes'])} (peak "
        f"{human_bytes(doc['traced_peak_bytes'])}) in {doc['traces']:,} traces; tracemalloc's own "
        f"memory {human_bytes(doc['tracemalloc_memory'])}"
    )
    if doc["partial"]:
        lines.append(f"PARTIAL: {doc['reason']}")
        if not rows and "not read" in (doc["reason"] or ""):
            lines.append(
                "raise --max-traces to read them anyway (the target then makes ~100 bytes of "
                "temporaries per trace)."
            )
    if doc["since"] == "previous show":
        lines.append(f"change since the previous show {doc['since_s']:g} s ago:")
    else:
        lines.append(
            "change since tracing began (show again later: the change is then since this show):"
        )
    if args.action == "stop":
        if doc["stopped"]:
            lines.append(
                "tracing stopped; traces freed (tracemalloc's memory now "
                f"{human_bytes(doc['tracemalloc_memory_after'])})."
            )
        else:
            lines.append("tracing left on: it is the application's own.")
    if not rows:
        lines.append("no allocation site holds memory." if not doc["partial"] else "")
        return "\n".join(line for line in lines if line)
    lines.append("")
    table_rows = []
    for s in rows:
        code = _code(names, s.file, s.line)
        table_rows.append(
            (f"{_short(s.file)}:{s.line}", s.function, human_bytes(s.size), s.count,
             _signed_bytes(s.size_delta), f"{s.count_delta:+,}" if s.count_delta else "0", code)
        )
    lines.append(
        table(["site", "function", "size", "count", "size change", "count change", "code"],
              table_rows, right=[False, False, True, True, True, True, False])
    )
    if with_tb:
        for i, s in enumerate(rows[:5], 1):
            lines.append("")
            lines.append(
                f"#{i} {_signed_bytes(s.size_delta)} ({s.count_delta:+,}), innermost frame first:"
            )
            for f, ln, fn in s.traceback:
                lines.append(f'  File "{f}", line {ln}, in {fn}')
                code = _code(names, f, ln)
                if code:
                    lines.append(f"    {code}")
    return "\n".join(lines)


def _short(path: str, width: int = 48) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3) :]


def _code(names: tracing.FunctionNames, path: str, line: int) -> str:
    text = names.line(path, line)
    return text if len(text) <= 60 else text[:57] + "..."
