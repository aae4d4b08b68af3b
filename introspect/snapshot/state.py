"""Growth baselines kept by the CLI, never in the target: one small JSON file per process,
keyed by pid and process start time (a reused pid starts afresh), in the user's state directory
($XDG_STATE_HOME/introspect, else ~/.local/state/introspect), private (0700 / 0600)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "introspect")


def _path(pid: int, create_time: float) -> str:
    return os.path.join(state_dir(), f"growth-{pid}-{int(create_time * 100)}.json")


def load(pid: int, create_time: float) -> dict[str, Any] | None:
    try:
        with open(_path(pid, create_time), encoding="utf-8") as f:
            doc: dict[str, Any] = json.load(f)
        return doc
    except (OSError, ValueError):
        return None


def save(pid: int, create_time: float, doc: dict[str, Any]) -> str:
    d = state_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = _path(pid, create_time)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".growth-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
