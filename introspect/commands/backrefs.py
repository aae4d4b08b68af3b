"""Who keeps objects of a type alive: reference chains from a root to its instances.

TYPE may be `module.qualname`, a `qualname`, or a short class name, of any type: gc-tracked or
not (bytes, str, dicts of atomic values...). Roots are modules in sys.modules, the locals of
running thread frames (named by thread, function and variable), and objects held from C.
By default the target forks once and the chains are found in its frozen copy: every instance is
grouped by the shape of its shortest path from a root, and each group shows one instance's path
(chains pass through untracked containers: `module __main__ --.store--> list --[3]--> dict
--['data']--> bytes`). Without memory headroom, or with --in-process, the search runs inside the
target (gc-tracked types only), one heap scan per level, and stops at --budget seconds. No repr()
of your objects is made.

Example: introspect backrefs 1234 MyCustomObject
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from introspect import analysis, errors, tracing
from introspect.commands import (
    add_collector_options,
    add_target_options,
    collector_line,
    emit,
    fanout,
    header,
    logger,
)
from introspect.commands.dump import add_keep_option, check_keep, keep_missed, keeping
from introspect.render.graph import FORMATS, write_graph
from introspect.render.output import OutputDir
from introspect.runner import Outcome, run_agent
from introspect.snapshot import collect

if TYPE_CHECKING:
    from introspect.snapshot import heap as heap_mod
    from introspect.snapshot.collect import Walker
    from introspect.snapshot.records import Snapshot


class Command:
    name = "backrefs"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser, files=True)
        fanout.add_children_option(parser)
        parser.add_argument(
            "type", metavar="TYPE", help="type name: module.qualname, qualname or short name"
        )
        parser.add_argument("--samples", type=int, default=10, metavar="N",
                            help="instances to trace, newest first (default: 10)")
        parser.add_argument("--max-depth", type=int, default=12, metavar="D",
                            help="give up on chains longer than D (default: 12)")
        parser.add_argument(
            "--budget",
            type=float,
            default=5.0,
            metavar="S",
            help="stop searching after S seconds inside the target and report what was found "
                 "(default: 5)",
        )
        parser.add_argument("--format", choices=FORMATS, default="svg",
                            help="graph format (default: svg; DOT is always written)")
        add_collector_options(parser)
        add_keep_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        check_keep(args)
        if args.samples < 1 or args.max_depth < 1 or args.budget <= 0:
            raise errors.UsageError("--samples and --max-depth must be >= 1 and --budget > 0")
        if isinstance(args.pid, str):
            from introspect.snapshot import dumpfile

            out = OutputDir(self.name, dumpfile.out_key(args.pid), args.output)
            outcome, doc = on_file(
                out, args.pid, args.type, samples=args.samples, fmt=args.format, log=logger(args)
            )
            emit(args, out, doc, render(outcome, doc))
            return 0
        if (code := fanout.divert(self, args)) is not None:
            return code
        out = OutputDir(self.name, args.pid, args.output)
        outcome, doc = trace(out, args.pid, args.type, samples=args.samples,
                             max_depth=args.max_depth, budget=args.budget, fmt=args.format,
                             method=args.method, timeout=args.timeout, log=logger(args),
                             collector=args.collector, keep=args.keep)
        emit(args, out, doc, render(outcome, doc))
        return 0


def trace(out: OutputDir, pid: int, type_name: str, *, samples: int = 10, max_depth: int = 12,
          budget: float = 5.0, fmt: str = "svg", method: str = "auto", timeout: float = 30.0,
          log: Callable[[str], None] = lambda s: None, stem: str = "backrefs",
          collector: str = "auto", keep: str | None = None) -> tuple[Outcome, dict[str, Any]]:
    """Find chains (forked snapshot, or the agent's in-process search) and write ``<stem>.dot`` (+
    graph): the command's data, reused by `report`."""
    col: dict[str, Any] = {"path": "in-process", "why": "--in-process given"}
    if collector == "in-process" and keep:
        keep_missed(argparse.Namespace(keep=keep), col["why"])
    if collector != "in-process":

        def analyse(snap: Snapshot, walker: Walker) -> dict[str, Any]:
            return forked_chains(snap, walker, type_name, pid, samples)

        kept = keeping(argparse.Namespace(keep=keep, pid=pid), analyse, log)
        got_outcome, got, col = collect.take(
            pid, collector, kept, method=method, timeout=timeout, log=log
        )
        if got_outcome is not None and got is not None:
            files = write_graph(
                out, stem, got["graph"], f"who keeps {got['type']} alive (pid {pid})", fmt
            )
            return got_outcome, {**got_outcome.meta(), "collector": col, **got, "files": files}
        log(f"backrefs in-process: {col['why']}")
        if keep:
            keep_missed(argparse.Namespace(keep=keep), col["why"])
    params = {"type": type_name, "samples": samples, "max_depth": max_depth, "budget": budget}
    outcome = run_agent(
        pid, "backrefs", params, method=method, timeout=max(timeout, budget + 10), log=log
    )
    res = outcome.result
    check_found(type_name, pid, res)
    files = write_graph(out, stem, res["graph"], f"who keeps {res['type']} alive (pid {pid})", fmt)
    doc: dict[str, Any] = {
        **outcome.meta(),
        "type": res["type"],
        "found": res["found"],
        "sampled": res["sampled"],
        "unrooted": res["unrooted"],
        **{
            k: res[k]
            for k in ("unrooted_held_from_c", "unrooted_cycle", "unrooted_limit")
            if k in res
        },
        "partial": res["partial"],
        "reason": res["reason"] or None,
        "opaque": res.get("opaque", {}),
        "levels": res["levels"],
        "chains": res["chains"],
        "graph": res["graph"],
        "files": files,
        "collector": col,
    }
    on, frames = res.get("allocated") or [False, []]
    doc.update(
        _allocated_doc(tracing.summarize(on, frames, tracing.FunctionNames(outcome.target.root)))
    )
    return outcome, doc


def on_file(out: OutputDir, path: str, type_name: str, *, samples: int = 10, fmt: str = "svg",
            log: Callable[[str], None] = lambda s: None,
            stem: str = "backrefs") -> tuple[Outcome, dict[str, Any]]:
    """Chains of ``type_name`` in the dump at ``path``: the document of a forked snapshot's."""
    from introspect.snapshot import dumpfile

    pid = [0]

    def analyse(snap: Snapshot, walker: Walker) -> dict[str, Any]:
        pid[0] = int(snap.meta.get("pid", 0))
        return forked_chains(snap, walker, type_name, pid[0], samples)

    outcome, got, col = dumpfile.take(path, analyse, log)
    files = write_graph(out, stem, got["graph"], f"who keeps {got['type']} alive ({path})", fmt)
    return outcome, {**outcome.meta(), "collector": col, **got, "files": files}


def forked_chains(snap: Snapshot, walker: Walker, type_name: str, pid: int, samples: int,
                  analysed: heap_mod.Heap | None = None) -> dict[str, Any]:
    from introspect.snapshot import heap  # numpy and igraph: only when a snapshot is analysed

    names = heap.match_type(snap, type_name)
    if not names:
        present = sorted(set(snap.types))
        check_found(type_name, pid, {"status": "unknown", "names": present})
    if len(names) > 1:
        rows = heap.type_rows(snap)
        check_found(type_name, pid,
                    {"status": "ambiguous", "candidates": [[n, rows[n].count] for n in names]})
    h = analysed if analysed is not None else heap.analyse(snap)
    chains, found, unreachable = heap.chains(
        h, names[0], walker.labels, walker.names, samples, walker.freevars
    )
    alloc = tracing.allocated(
        walker, tracing.instances(snap, names[0]), tracing.FunctionNames(f"/proc/{pid}/root")
    )
    return {
        **_allocated_doc(alloc),
        "type": names[0],
        "found": found,
        "sampled": sum(int(str(c["count"])) for c in chains),
        "unrooted": unreachable,
        # C-held objects are roots of the forked graph and it has no depth limit: what no root
        # reaches is held by reference cycles only
        "unrooted_held_from_c": 0,
        "unrooted_cycle": unreachable,
        "unrooted_limit": 0,
        "partial": False,
        "reason": None,
        "levels": max((len(c["path"]) for c in chains), default=0),  # type: ignore[arg-type]
        "chains": chains,
        "graph": chain_graph(chains, names[0]),
        "sampling": (
            "every instance grouped by its path's shape; one instance's path shown per group "
            "(walk order: roots first, then breadth first)"
        ),
    }


def _allocated_doc(alloc: tracing.Allocated | None) -> dict[str, Any]:
    return {"tracing": alloc is not None, **(alloc.as_json() if alloc is not None else {})}


def chain_graph(chains: list[dict[str, Any]], tname: str) -> dict[str, Any]:
    """Nodes and edges for render.graph from grouped chains (one node per step of each chain)."""
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    ids: dict[tuple[Any, ...], str] = {}
    for ch in chains:
        prev: tuple[str, str] | None = None
        path = ch["path"]
        if path and path[0]["type"] != "module":
            key: tuple[Any, ...] = ("root", ch["root"])
            if key not in ids:
                ids[key] = f"n{len(ids)}"
                nodes.append({"id": ids[key], "label": ch["root"], "role": "root", "type": "root"})
            prev = (ids[key], "")
        for k, step in enumerate(path):
            last = k == len(path) - 1
            key = (ch["root"], tuple((s["type"], s.get("via")) for s in path[: k + 1]))
            if key not in ids:
                ids[key] = f"n{len(ids)}"
                role = (
                    "target"
                    if last
                    else (
                        "root"
                        if k == 0 and prev is None
                        else ("holder" if k == len(path) - 2 else "path")
                    )
                )
                label = (
                    ch["root"]
                    if role == "root"
                    else (step["type"] + (" " + step["name"] if step.get("name") else ""))
                )
                if last:
                    label += f" x{ch['count']:,}"
                nodes.append({"id": ids[key], "label": label, "role": role, "type": step["type"]})
            if prev is not None:
                edges.append({"src": prev[0], "dst": ids[key], "label": prev[1]})
            prev = (ids[key], step.get("via") or "")
    return {"nodes": nodes, "edges": edges}


def check_found(type_name: str, pid: int, res: dict[str, Any]) -> None:
    if res["status"] == "unknown":
        close = difflib.get_close_matches(type_name, res["names"], n=5, cutoff=0.5)
        short = {n.rsplit(".", 1)[-1]: n for n in res["names"]}
        close += [
            short[s]
            for s in difflib.get_close_matches(type_name, list(short), n=5, cutoff=0.6)
            if short[s] not in close
        ]
        hint = (
            f"Did you mean: {', '.join(close[:5])}?"
            if close
            else "`introspect top PID` lists the types present."
        )
        raise errors.UnknownType(
            f"no live object of type {type_name!r} in the process", pid=pid, help=hint
        )
    if res["status"] == "ambiguous":
        cands = ", ".join(f"{name} ({count:,})" for name, count in res["candidates"])
        raise errors.UnknownType(f"{type_name!r} matches several types: {cands}", pid=pid,
                                 help="Give the full module.qualname.")


def _merge_class_steps(path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A class reached by attribute and left by attribute reads as one step: `.Logger.manager`."""
    out: list[dict[str, Any]] = []
    for step in path:
        prev = out[-1] if out else None
        if (
            prev is not None
            and step["type"] == "type"
            and (prev.get("via") or "").startswith(".")
            and (step.get("via") or "").startswith(".")
        ):
            out[-1] = {**prev, "via": prev["via"] + step["via"]}
            continue
        out.append(step)
    return out


def chain_text(chain: dict[str, Any]) -> str:
    """One chain on one line, from its root to the instance.

    >>> chain_text({"root": "module logging", "count": 1, "path": [
    ...     {"type": "module", "via": ".Logger", "name": "logging"},
    ...     {"type": "type", "via": ".manager", "name": "logging.Logger"},
    ...     {"type": "logging.Manager", "via": ".loggerDict"}, {"type": "dict", "via": "['req-7']"},
    ...     {"type": "logging.Logger", "via": None}]})
    "module logging --.Logger.manager--> logging.Manager --.loggerDict--> dict --['req-7']-->
    logging.Logger"

    A chain through other modules names each by its own name, not the root's:

    >>> chain_text({"root": "module collections", "count": 1, "path": [
    ...     {"type": "module", "via": "._sys", "name": "collections"},
    ...     {"type": "module", "via": ".modules", "name": "sys"},
    ...     {"type": "dict", "via": "['app']"}, {"type": "module", "via": ".cache", "name": "app"},
    ...     {"type": "list", "via": None}]})
    "module collections --._sys--> module sys --.modules--> dict --['app']--> module app --.cache-->
    list"
    """
    parts = []
    for k, step in enumerate(_merge_class_steps(chain["path"])):
        name = step.get("name")
        if name:  # every module by its own name: only the first step is the root
            parts.append(f"{step['type']} {name}")
        else:
            parts.append(chain["root"] if k == 0 and step["type"] == "module" else step["type"])
        if step["via"]:
            parts.append(f"--{step['via']}-->")
    if chain["path"] and chain["path"][0]["type"] != "module":
        parts.insert(0, f"[{chain['root']}] -->")
    return " ".join(parts)


def render(outcome: Outcome, doc: dict[str, Any]) -> str:
    lines = [header(outcome)]
    if doc.get("collector"):
        lines.append(collector_line(doc["collector"]))
    if doc.get("sampling"):
        lines.append(
            f"{doc['found']:,} live {doc['type']} objects; {doc['sampled']:,} traced to a root, "
            "grouped by path (the biggest groups; one instance's path each)"
        )
    else:
        lines.append(
            f"{doc['found']:,} live {doc['type']} objects; traced {doc['sampled']} (newest first)"
        )
    if doc["partial"]:
        lines.append(f"PARTIAL: {doc['reason']}; chains below are what was found by then")
    for chain in doc["chains"]:
        lines.append("")
        lines.append(f"{chain['count']} of {doc['sampled']} held by: {chain['root']}")
        lines.append("  " + chain_text(chain))
    if doc.get("opaque"):
        n = sum(doc["opaque"].values())
        lines.append("")
        lines.append(
            f"{n:,} referrers of C types ({', '.join(sorted(doc['opaque'])[:4])}) were not "
            "traversed inside the target (CPython gh-122695): which object each holds was found "
            "by pointer comparison"
        )
    if doc["unrooted"]:
        lines.append("")
        if doc.get("sampling"):
            lines.append(
                f"{doc['unrooted']:,} not reachable from any root (garbage awaiting collection: a "
                "reference cycle only)"
            )
        else:
            lines.append(
                f"{doc['unrooted']} of {doc['sampled']} not traced to a root: "
                f"{analysis.unrooted_text(doc)}"
            )
    lines.append("")
    lines += tracing.allocated_text(
        doc, doc["pid"], tracing.FunctionNames(f"/proc/{doc['pid']}/root")
    )
    lines.append("")
    for kind, path in doc["files"].items():
        lines.append(f"graph ({kind}): {path}" if kind != "note" else path)
    return "\n".join(lines)
