"""The agent: code that runs *inside* the target process.

``agent.py`` is shipped to the target as a file and executed there in a fresh namespace; it must
import nothing of ours and nothing beyond builtin stdlib modules. It is one module (linted and
unit-tested whole), cut into parts by ``# @part NAME`` lines: the target compiles only the core
and the parts its command needs, and the forked walker compiles its parts in the child. A part
left out is shipped as blank lines, so line numbers in the agent's error reports stay true.
"""

from __future__ import annotations

from pathlib import Path

AGENT_PATH = Path(__file__).with_name("agent.py")

# Parts each agent command needs besides the core. An unknown command gets every part.
PARTS: dict[str, tuple[str, ...]] = {
    "top": ("sizes",),
    "growth": ("growth",),
    "backrefs": ("backrefs",),
    "exec": ("exec",),
    "trace_start": ("trace",),
    "trace_show": ("trace",),
    "trace_stop": ("trace",),
    # the tracing part, which the walker needs to read traces, is compiled in the fork (WALKER_PARTS):
    # the target compiles as little as it can (about 9 ms for 46 KB of source with it, at 1M objects
    # more than the fork itself)
    "snapshot": ("snapshot",),
}
# What the forked walker compiles in the child (walker.py in the run dir).
WALKER_PARTS = ("trace", "walker", "memory")
MARK = "# @part "


def _select(parts: set[str]) -> bytes:
    out = []
    current = "core"
    for line in AGENT_PATH.read_text(encoding="utf-8").split("\n"):
        if line.startswith(MARK):
            current = line[len(MARK):].strip()
        out.append(line if current in parts else "")
    return "\n".join(out).encode("utf-8")


def all_parts() -> set[str]:
    names = {"core"}
    for line in AGENT_PATH.read_text(encoding="utf-8").split("\n"):
        if line.startswith(MARK):
            names.add(line[len(MARK):].strip())
    return names


def agent_source(command: str | None = None) -> bytes:
    """The agent as the target gets it for ``command``: the core and that command's parts."""
    if command is None or command not in PARTS:
        return AGENT_PATH.read_bytes()
    return _select({"core", *PARTS[command]})


def walker_source() -> bytes:
    """The parts the forked walker compiles in the child, on top of the core it inherited."""
    return _select(set(WALKER_PARTS))
