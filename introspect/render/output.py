"""Result files: a predictable directory, nothing overwritten silently, the path printed.

Results can name a target's types, modules, keys and locals, so they are private: a directory we
create is 0700, each file 0600 (as the agent's own files in the run directory are)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from introspect import errors


class OutputDir:
    """``-o DIR`` or a new ``introspect-<cmd>-<pid>-<time>/``; checked writable *before* we touch
    the target."""

    def __init__(self, command: str, pid: int | str, requested: str | None) -> None:
        self.command = command
        if requested:
            self.path = Path(requested)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.path = Path(f"introspect-{command}-{pid}-{stamp}")
            n = 1
            while self.path.exists():
                n += 1
                self.path = Path(f"introspect-{command}-{pid}-{stamp}-{n}")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=bool(requested))
            probe = self.path / f".introspect-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise errors.OutputError(
                f"cannot write results to {self.path}: {exc.strerror or exc}",
                help="Choose a writable directory with -o DIR (nothing was done to the target).",
            ) from None

    def _free(self, name: str) -> Path:
        dest = self.path / name
        if not dest.exists():
            return dest
        stem, dot, ext = name.partition(".")
        n = 2
        while (self.path / f"{stem}-{n}{dot}{ext}").exists():
            n += 1
        return self.path / f"{stem}-{n}{dot}{ext}"

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> Path:
        dest = self._free(name)
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise errors.OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
        return dest

    def write_json(self, name: str, doc: dict[str, Any]) -> Path:
        return self.write_text(name, json.dumps(doc, indent=2) + "\n")
