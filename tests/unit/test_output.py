"""Result files are private and never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from introspect import errors
from introspect.render.output import OutputDir


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    out = OutputDir("top", 123, str(tmp_path / "new" / "dir"))
    first = out.write_text("top.json", "{}\n")
    second = out.write_text("top.json", "{}\n")
    assert first.name == "top.json" and second.name == "top-2.json"
    assert _mode(out.path) == 0o700
    assert _mode(first) == 0o600 and _mode(second) == 0o600


def test_unwritable_directory_is_refused_before_anything(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(errors.OutputError, match="cannot write results"):
        OutputDir("top", 123, str(blocker / "sub"))
