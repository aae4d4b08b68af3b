"""Allocation sites from tracemalloc's traces: names, deltas between shows, the CLI's memory of
the previous show (kept here, never in the target).

The agent returns raw groups ``[[[file, line], ...], size, count]`` (innermost frame first);
everything that interprets them runs here: the function around each line is read from the
target's own source file (through ``/proc/PID/root``), deltas are taken against the previous
show of the same process (pid + start time, so a reused pid starts afresh).
"""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

Frame = tuple[str, int]


@dataclass(frozen=True)
class Site:
    file: str
    line: int
    function: str
    size: int
    count: int
    size_delta: int
    count_delta: int
    # (file, line, function), innermost first
    traceback: tuple[tuple[str, int, str], ...] = field(default=())

    def as_json(self, with_traceback: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": self.file, "line": self.line, "function": self.function,
                               "size": self.size, "count": self.count,
                               "size_delta": self.size_delta, "count_delta": self.count_delta}
        if with_traceback:
            doc["traceback"] = [
                {"file": f, "line": ln, "function": fn} for f, ln, fn in self.traceback
            ]
        return doc


class FunctionNames:
    """file:line -> the qualified name of the innermost def around it (``<module>`` outside any),
    from the source file as the target sees it; ``?`` when the file cannot be read or parsed."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._spans: dict[str, list[tuple[int, int, str]] | None] = {}
        self._lines: dict[str, list[str]] = {}

    def _host(self, path: str) -> str:
        return path if self.root in ("", "/") else os.path.join(self.root, path.lstrip("/"))

    def _load(self, path: str) -> list[tuple[int, int, str]] | None:
        if path in self._spans:
            return self._spans[path]
        spans: list[tuple[int, int, str]] | None = None
        if path.startswith("/") and path.endswith(".py"):
            try:
                with open(self._host(path), "rb") as f:
                    tree = ast.parse(f.read(), filename=path)
                spans = []
                _collect(tree, "", spans)
            except (OSError, SyntaxError, ValueError, RecursionError):
                spans = None
        self._spans[path] = spans
        return spans

    def line(self, path: str, line: int) -> str:
        """The source line, stripped ('' when unreadable)."""
        if path not in self._lines:
            try:
                with open(self._host(path), "rb") as f:
                    self._lines[path] = f.read(4 << 20).decode("utf-8", "replace").splitlines()
            except OSError:
                self._lines[path] = []
        lines = self._lines[path]
        return lines[line - 1].strip() if 0 < line <= len(lines) else ""

    def __call__(self, path: str, line: int) -> str:
        spans = self._load(path)
        if spans is None:
            return "?"
        best = "<module>"
        best_len = None
        for start, end, name in spans:
            if start <= line <= end and (best_len is None or end - start < best_len):
                best, best_len = name, end - start
        return best


def _collect(node: ast.AST, prefix: str, out: list[tuple[int, int, str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            start = min([child.lineno] + [d.lineno for d in child.decorator_list])
            out.append((start, child.end_lineno or child.lineno, name))
            _collect(child,
                     f"{name}.<locals>." if not isinstance(child, ast.ClassDef) else f"{name}.",
                     out)
        else:
            _collect(child, prefix, out)


def site_key(frames: list[list[Any]]) -> str:
    return "|".join(f"{f}:{ln}" for f, ln in frames)


def sites(
    raw: list[list[Any]], previous: dict[str, list[int]] | None, names: FunctionNames
) -> list[Site]:
    """Sites with signed deltas against ``previous`` (key -> [size, count]; None: since tracing
    began, when every site was empty). Sites gone since then appear with size 0 and a negative
    delta. Ordered by size_delta, then size, largest first."""
    prev = previous or {}
    out: list[Site] = []
    seen: set[str] = set()
    for frames, size, count in raw:
        key = site_key(frames)
        seen.add(key)
        before = prev.get(key, [0, 0])
        tb = tuple((str(f), int(ln), names(str(f), int(ln))) for f, ln in frames)
        out.append(
            Site(tb[0][0], tb[0][1], tb[0][2], int(size), int(count), int(size) - before[0],
                 int(count) - before[1], tb)
        )
    for key, (size, count) in prev.items():
        if key in seen:
            continue
        frames = [_split(part) for part in key.split("|")]
        tb = tuple((f, ln, names(f, ln)) for f, ln in frames)
        out.append(Site(tb[0][0], tb[0][1], tb[0][2], 0, 0, -size, -count, tb))
    out.sort(key=lambda s: (-s.size_delta, -s.size, s.file, s.line))
    return out


def _split(part: str) -> Frame:
    f, _, ln = part.rpartition(":")
    return f, int(ln) if ln.isdigit() else 0


def figures(raw: list[list[Any]]) -> dict[str, list[int]]:
    return {site_key(frames): [int(size), int(count)] for frames, size, count in raw}


# --- the previous show, per process, in the CLI's state directory ------------------------------


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "introspect")


def _path(pid: int, create_time: float) -> str:
    return os.path.join(state_dir(), f"trace-{pid}-{int(create_time * 100)}.json")


def load(pid: int, create_time: float) -> dict[str, Any]:
    try:
        with open(_path(pid, create_time), encoding="utf-8") as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def save(pid: int, create_time: float, doc: dict[str, Any]) -> None:
    d = state_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".trace-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, _path(pid, create_time))
    except BaseException:
        os.unlink(tmp)
        raise


def forget(pid: int, create_time: float) -> None:
    try:
        os.unlink(_path(pid, create_time))
    except OSError:
        pass


# --- where instances were allocated (tracemalloc's object traceback), from a forked snapshot ---

SAMPLE = 500  # instances per type whose allocation is looked up


def instances(snap: Any, type_name: str, sample: int = SAMPLE) -> list[int]:
    """Positions of up to ``sample`` instances of ``type_name`` in a snapshot, evenly spread."""
    import numpy as np  # only with a snapshot

    ids = [i for i, name in enumerate(snap.types) if name == type_name]
    if not ids:
        return []
    pos = np.flatnonzero(np.isin(snap.type_of, ids))
    if pos.shape[0] > sample:
        pos = pos[np.linspace(0, pos.shape[0] - 1, sample).astype(np.int64)]
    return [int(p) for p in pos]


@dataclass(frozen=True)
class Allocated:
    """Allocation sites of sampled instances: ``sites`` [{file, line, function, count}], most first;
    a site reached through an object the instance alone holds (CPython 3.11, see HELD_NOTE) also
    carries ``"via": "held"``."""

    sites: list[dict[str, Any]]
    sampled: int
    traced: int  # of the sampled, those allocated while tracing was on
    held: int = 0  # of the traced, those placed by an object they alone hold
    # the forked copy's tracing during its walk: "paused" (its own allocations untraced), or why not
    walk: str = ""

    def as_json(self) -> dict[str, Any]:
        doc = {"allocated_at": self.sites, "allocated_sampled": self.sampled,
               "allocated_traced": self.traced}
        if self.held:
            doc["allocated_held"] = self.held
        if self.walk:
            doc["allocated_walk"] = self.walk
        return doc


HELD_NOTE = (
    "CPython 3.11's tracemalloc cannot look up an instance of a class with a managed "
    "__dict__ (a class without __slots__: its memory starts 16 bytes before where 3.11 "
    "looks; fixed in 3.12). Read inside the target, such an instance is placed where an "
    "object it alone holds (an attribute value, its __dict__) was allocated: its "
    "constructor's lines, or the line that called it"
)


def allocated(
    walker: Any, positions: list[int], names: FunctionNames, limit: int = 5
) -> Allocated | None:
    """None when the target does not trace (the walker's copy has no tracemalloc traces)."""
    if not positions:
        return Allocated([], 0, 0)
    on, frames, walk = walker.allocated(positions)
    got = summarize(on, frames, names, limit)
    return None if got is None else Allocated(got.sites, got.sampled, got.traced, got.held, walk)


_RUN_AGENT = re.compile(r"/introspect-\d+-[0-9a-f]{16}/agent\.py$")


def ours(file: str) -> bool:
    """introspect's own allocations: its bootstrap's stage 1, its agent's code (``<introspect>/``,
    the target's and the walker's) or an agent file in a run dir."""
    return (
        file == "<introspect-bootstrap>"
        or file.startswith("<introspect>/")
        or bool(_RUN_AGENT.search(file))
    )


def summarize(
    on: bool, frames: list[Any], names: FunctionNames, limit: int = 5
) -> Allocated | None:
    """Sites of the sampled instances' innermost allocation frames ([file, line], [file, line,
    "held"] or None each)."""
    if not on:
        return None
    counts: dict[tuple[str, int, bool], int] = {}
    for fr in frames:
        if fr is not None and not ours(str(fr[0])):
            key = (str(fr[0]), int(fr[1]), len(fr) > 2 and fr[2] == "held")
            counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    sites = [
        {"file": f, "line": ln, "function": names(f, ln), "count": n,
         **({"via": "held"} if held else {})}
        for (f, ln, held), n in ranked
    ]
    held_n = sum(n for k, n in counts.items() if k[2])
    return Allocated(sites, len(frames), sum(counts.values()), held_n)


def allocated_text(doc: dict[str, Any], pid: int, names: FunctionNames | None = None) -> list[str]:
    """Lines for a text report from a doc holding ``tracing`` and ``allocated_*``
    (Allocated.as_json)."""
    if not doc.get("tracing"):
        return [
            f"allocation sites: tracing is off (turn it on with `introspect trace start {pid}`, "
            "let the leak grow, look again)"
        ]
    if not doc.get("allocated_traced"):
        return [
            f"allocation sites: none of {doc.get('allocated_sampled', 0):,} sampled instances was "
            "allocated while tracing was on"
        ]
    out = [
        f"allocated at ({doc['allocated_traced']:,} of {doc['allocated_sampled']:,} sampled "
        "instances were allocated while tracing):"
    ]
    for s in doc["allocated_at"]:
        code = names.line(s["file"], s["line"]) if names is not None else ""
        held = "   [held: an object it alone holds]" if s.get("via") == "held" else ""
        out.append(
            f"  {s['count']:>5,}  {s['file']}:{s['line']} in {s['function']}"
            + (f"   {code}" if code else "")
            + held
        )
    if doc.get("allocated_held"):
        out.append(f"  [held]: {HELD_NOTE}.")
    return out
