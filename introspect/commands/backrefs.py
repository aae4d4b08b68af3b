"""Who keeps objects of a type alive: reference chains from a root to sampled instances.

TYPE may be `module.qualname`, a `qualname`, or a short class name. Roots are modules in
sys.modules and the locals of running thread frames (named by thread, function and variable).
The search walks back one heap scan per level (not one per object, as objgraph does) and stops
at --budget seconds, returning what it has, marked partial. No repr() of your objects is made.

Example: introspect backrefs 1234 MyCustomObject
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from typing import Any

from introspect import errors
from introspect.commands import add_target_options, emit, fanout, header, logger
from introspect.render.graph import FORMATS, write_graph
from introspect.render.output import OutputDir
from introspect.runner import Outcome, run_agent


class Command:
    name = "backrefs"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser)
        fanout.add_children_option(parser)
        parser.add_argument("type", metavar="TYPE", help="type name: module.qualname, qualname or short name")
        parser.add_argument("--samples", type=int, default=10, metavar="N", help="instances to trace, newest first (default: 10)")
        parser.add_argument("--max-depth", type=int, default=12, metavar="D", help="give up on chains longer than D (default: 12)")
        parser.add_argument("--budget", type=float, default=5.0, metavar="S",
                            help="stop searching after S seconds inside the target and report what was found (default: 5)")
        parser.add_argument("--format", choices=FORMATS, default="svg", help="graph format (default: svg; DOT is always written)")

    def run(self, args: argparse.Namespace) -> int:
        if args.samples < 1 or args.max_depth < 1 or args.budget <= 0:
            raise errors.UsageError("--samples and --max-depth must be >= 1 and --budget > 0")
        if (code := fanout.divert(self, args)) is not None:
            return code
        out = OutputDir(self.name, args.pid, args.output)
        outcome, doc = trace(out, args.pid, args.type, samples=args.samples, max_depth=args.max_depth, budget=args.budget,
                             fmt=args.format, method=args.method, timeout=args.timeout, log=logger(args))
        emit(args, out, doc, render(outcome, doc))
        return 0


def trace(out: OutputDir, pid: int, type_name: str, *, samples: int = 10, max_depth: int = 12, budget: float = 5.0,
          fmt: str = "svg", method: str = "auto", timeout: float = 30.0, log: Callable[[str], None] = lambda s: None,
          stem: str = "backrefs") -> tuple[Outcome, dict[str, Any]]:
    """Run the agent's backrefs search and write ``<stem>.dot`` (+ graph): the command's data, reused by `report`."""
    params = {"type": type_name, "samples": samples, "max_depth": max_depth, "budget": budget}
    outcome = run_agent(pid, "backrefs", params, method=method, timeout=max(timeout, budget + 10), log=log)
    res = outcome.result
    check_found(type_name, pid, res)
    files = write_graph(out, stem, res["graph"], f"who keeps {res['type']} alive (pid {pid})", fmt)
    doc: dict[str, Any] = {
        **outcome.meta(),
        "type": res["type"],
        "found": res["found"],
        "sampled": res["sampled"],
        "unrooted": res["unrooted"],
        "partial": res["partial"],
        "reason": res["reason"] or None,
        "opaque": res.get("opaque", {}),
        "levels": res["levels"],
        "chains": res["chains"],
        "graph": res["graph"],
        "files": files,
    }
    return outcome, doc


def check_found(type_name: str, pid: int, res: dict[str, Any]) -> None:
    if res["status"] == "unknown":
        close = difflib.get_close_matches(type_name, res["names"], n=5, cutoff=0.5)
        short = {n.rsplit(".", 1)[-1]: n for n in res["names"]}
        close += [short[s] for s in difflib.get_close_matches(type_name, list(short), n=5, cutoff=0.6) if short[s] not in close]
        hint = f"Did you mean: {', '.join(close[:5])}?" if close else "`introspect top PID` lists the types present."
        raise errors.UnknownType(f"no live object of type {type_name!r} in the process", pid=pid, help=hint)
    if res["status"] == "ambiguous":
        cands = ", ".join(f"{name} ({count:,})" for name, count in res["candidates"])
        raise errors.UnknownType(f"{type_name!r} matches several types: {cands}", pid=pid,
                                 help="Give the full module.qualname.")


def _merge_class_steps(path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A class reached by attribute and left by attribute reads as one step: `.Logger.manager`."""
    out: list[dict[str, Any]] = []
    for step in path:
        prev = out[-1] if out else None
        if (prev is not None and step["type"] == "type" and (prev.get("via") or "").startswith(".")
                and (step.get("via") or "").startswith(".")):
            out[-1] = {**prev, "via": prev["via"] + step["via"]}
            continue
        out.append(step)
    return out


def chain_text(chain: dict[str, Any]) -> str:
    """One chain on one line, from its root to the instance.

    >>> chain_text({"root": "module logging", "count": 1, "path": [
    ...     {"type": "module", "via": ".Logger", "name": "logging"}, {"type": "type", "via": ".manager", "name": "logging.Logger"},
    ...     {"type": "logging.Manager", "via": ".loggerDict"}, {"type": "dict", "via": "['req-7']"}, {"type": "logging.Logger", "via": None}]})
    "module logging --.Logger.manager--> logging.Manager --.loggerDict--> dict --['req-7']--> logging.Logger"
    """
    parts = []
    for step in _merge_class_steps(chain["path"]):
        name = step.get("name")
        parts.append(f"{step['type']} {name}" if name and step["type"] != "module" else (chain["root"] if step["type"] == "module" else step["type"]))
        if step["via"]:
            parts.append(f"--{step['via']}-->")
    if chain["path"] and chain["path"][0]["type"] != "module":
        parts.insert(0, f"[{chain['root']}] -->")
    return " ".join(parts)


def render(outcome: Outcome, doc: dict[str, Any]) -> str:
    lines = [header(outcome), f"{doc['found']:,} live {doc['type']} objects; traced {doc['sampled']} (newest first)"]
    if doc["partial"]:
        lines.append(f"PARTIAL: {doc['reason']}; chains below are what was found by then")
    for chain in doc["chains"]:
        lines.append("")
        lines.append(f"{chain['count']} of {doc['sampled']} held by: {chain['root']}")
        lines.append("  " + chain_text(chain))
    if doc.get("opaque"):
        n = sum(doc["opaque"].values())
        lines.append("")
        lines.append(f"{n:,} referrers of C types ({', '.join(sorted(doc['opaque'])[:4])}) were not traversed inside the target "
                     "(CPython gh-122695): which object each holds was found by pointer comparison")
    if doc["unrooted"]:
        lines.append("")
        lines.append(f"{doc['unrooted']} of {doc['sampled']} not traced to a root (held from C code, by a reference cycle only, or beyond --max-depth)")
    lines.append("")
    for kind, path in doc["files"].items():
        lines.append(f"graph ({kind}): {path}" if kind != "note" else path)
    return "\n".join(lines)
