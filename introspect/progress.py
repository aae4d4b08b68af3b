"""Feedback while waiting: one updating line on stderr, only when stderr is a terminal and only
once a wait has lasted a second; scripts, pipes and CI logs see nothing."""

from __future__ import annotations

import sys
import time
from typing import TextIO

SHOW_AFTER_S = 1.0
REFRESH_S = 0.1


class Progress:
    """``update(text)`` as often as you like; ``done()`` erases the line. Quiet off a terminal."""

    def __init__(self, stream: TextIO | None = None, *, force: bool = False) -> None:
        self.stream = stream or sys.stderr
        try:
            self.enabled = force or self.stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.t0 = time.monotonic()
        self.last = 0.0
        self.width = 0

    def update(self, text: str) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.t0 < SHOW_AFTER_S or now - self.last < REFRESH_S:
            return
        self.last = now
        line = f"introspect: {text} ({now - self.t0:.1f} s)"
        self._write("\r" + line.ljust(self.width))
        self.width = len(line)

    def done(self) -> None:
        if self.width:
            self._write("\r" + " " * self.width + "\r")
            self.width = 0

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False
