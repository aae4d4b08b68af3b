"""Growth baselines kept by the CLI, never in the target: one small JSON file per process,
keyed by pid and process start time (a reused pid starts afresh), in the user's state directory
($XDG_STATE_HOME/introspect, else ~/.local/state/introspect), private (0700 / 0600)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from introspect import errors


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "introspect")


def _path(pid: int, create_time: float, kind: str = "") -> str:
    """``kind`` "" for forked snapshots' looks (every object), "inproc" for in-process counts
    (gc-tracked objects only): two kinds of counts, never compared with each other."""
    return os.path.join(
        state_dir(), f"growth-{kind + '-' if kind else ''}{pid}-{int(create_time * 100)}.json"
    )


def load(pid: int, create_time: float, kind: str = "") -> dict[str, Any] | None:
    try:
        with open(_path(pid, create_time, kind), encoding="utf-8") as f:
            doc: dict[str, Any] = json.load(f)
        return doc
    except (OSError, ValueError):
        return None


def save(pid: int, create_time: float, doc: dict[str, Any], kind: str = "") -> str:
    """Keep ``doc``; an unwritable state directory is an OutputError naming it and the fix."""
    d = state_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        path = _path(pid, create_time, kind)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".growth-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise errors.OutputError(
            f"cannot keep the growth baseline in {d}: {exc.strerror or exc}",
            help="Make that directory writable, or point XDG_STATE_HOME at one that is, and run it "
                 "again.",
        ) from None
    return path
