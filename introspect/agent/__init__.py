"""The agent: code that runs *inside* the target process, a package of small files by where
they run (this module and ``whole.py`` are the only ones that do not: the CLI's and the tests').

In the target, on its main thread (shipped by command, docs/injection.md):

- ``core.py``: always, first: the bootstrap contract, the safety rules (stated there; the budget
  and the deadline, the agent's own objects), naming, counting, the JSON result writer.
- ``run.py``: always, last: the entry point (``run``), the answer and ``result.json``.
- the command's files (``PARTS``): ``objects.py`` (the traverse rule, sizes, allocation sites,
  reference kinds: for top and backrefs), ``sizes.py`` (in-process top), ``growth.py``,
  ``backrefs.py`` and ``chains.py``, ``exec.py``, ``trace.py`` (tracemalloc sessions),
  ``snapshot.py`` (the fork, its guard rails and reaper).

In the forked copy (``WALKER_PARTS``, compiled there by the walker, never by the target for a
snapshot): ``objects.py``, ``trace.py`` (to read the copy's traces), ``copytrace.py`` (tracemalloc
paused in the copy), ``labels.py`` (labels, names, previews, duplicates), ``walk.py`` (the walk and
the stream), ``memory.py`` (the allocator's figures).

Each file says in its first lines where it runs and what it may import: builtin C modules
only, Python 3.8 syntax, no reference to a target object kept (core.py's header has the rules).
The files share one namespace at run time: each is compiled on its own under the name
``<introspect>/FILE`` (``code_name``) and executed, in order, in one fresh dict, so a traceback
names the file and its true line. Their ``if MYPY:`` imports are the type checker's view of that
namespace; they are shipped as blank lines (``shipped``): nothing is imported at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

AGENT_DIR = Path(__file__).parent
# Every file loaded into one namespace, each under its real path: for tests and tools (a child of
# any interpreter execs it, or runpy.run_path(AGENT_PATH)); never shipped to a target.
AGENT_PATH = AGENT_DIR / "whole.py"
PREFIX = "<introspect>/"  # the file names of the agent's code objects, the same in every run
FIRST = "core.py"
LAST = "run.py"

# Files each agent command needs besides the core and run.py. An unknown command gets every file.
PARTS: dict[str, tuple[str, ...]] = {
    "top": ("objects.py", "sizes.py"),
    "growth": ("growth.py",),
    "backrefs": ("objects.py", "backrefs.py", "chains.py"),
    "exec": ("exec.py",),
    "trace_start": ("trace.py",),
    "trace_show": ("trace.py",),
    "trace_stop": ("trace.py",),
    # the tracing part, which the walker needs to read traces, is compiled in the fork
    # (WALKER_PARTS): the target compiles as little as it can (about 9 ms for 46 KB of source
    # with it, at 1M objects more than the fork itself); objects.py too: each name and constant
    # the target loads is a page it touches before its fork and copies after it (freed while the
    # walker shares it), about 4 us each (docs/snapshots.md, the pause)
    "snapshot": ("snapshot.py",),
}
# What the forked walker compiles in the child, in this order (copies in the run dir).
WALKER_PARTS = ("objects.py", "trace.py", "copytrace.py", "labels.py", "cwalk.py", "walk.py",
                "memory.py")
# Every file, in the order they are executed (whole.py has the same list).
ALL: tuple[str, ...] = tuple(
    dict.fromkeys([FIRST, *(f for p in PARTS.values() for f in p), *WALKER_PARTS, LAST])
)

Source = list[tuple[str, bytes]]  # (file name, source), in execution order


def code_name(name: str) -> str:
    """The file name the code of agent file ``name`` is compiled under (``<introspect>/name``)."""
    return PREFIX + name


def shipped(data: bytes) -> bytes:
    """A file's source as the target gets it: its ``MYPY = False`` line and ``if MYPY:`` block
    (the type checker's imports, dead code at run time that the target would compile and keep)
    as blank lines, so every other line keeps its number."""
    lines = data.split(b"\n")
    block = False
    for i, line in enumerate(lines):
        if line == b"MYPY = False" or line.startswith(b"if MYPY:"):
            block = line.startswith(b"if MYPY:")
            lines[i] = b""
        elif block and (line.startswith(b" ") or not line):
            lines[i] = b""
        else:
            block = False
    return b"\n".join(lines)


def _read(names: tuple[str, ...] | list[str]) -> Source:
    return [(n, shipped((AGENT_DIR / n).read_bytes())) for n in names]


def names(command: str | None = None) -> list[str]:
    """The files the target executes for ``command``, in order: core, the command's, run."""
    if command is None or command not in PARTS:
        return list(ALL)
    return list(dict.fromkeys([FIRST, *PARTS[command], LAST]))


def agent_files(command: str | None = None) -> Source:
    """The agent as the target gets it for ``command``: (name, source) of each of ``names``."""
    return _read(names(command))


def walker_files() -> Source:
    """The files the forked walker compiles in the child, on top of what it inherited."""
    return _read(WALKER_PARTS)


def compiled_walker() -> tuple[bytes | None, str]:
    """The compiled walk step (``_cwalk.c``'s build, installed next to this file, one stable-ABI
    build for every target 3.8-3.15) for the forked copy to load, or (None, why the copy walks
    with the Python step). ``INTROSPECT_WALKER=python`` leaves it out."""
    if os.environ.get("INTROSPECT_WALKER", "") == "python":
        return None, "INTROSPECT_WALKER=python"
    for path in sorted(AGENT_DIR.glob("_cwalk*.so")):
        try:
            return path.read_bytes(), ""
        except OSError as exc:
            return None, f"{path} unreadable: {exc.strerror}"
    return None, "not built: the install had no C compiler"
