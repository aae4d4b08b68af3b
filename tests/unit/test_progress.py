"""Progress lines: shown on a terminal after a second, erased when done, never off a terminal."""

from __future__ import annotations

import io

import pytest

from introspect import progress


def test_quiet_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    out = io.StringIO()  # isatty() is False, like a pipe or a CI log
    p = progress.Progress(out)
    p.update("counting")
    p.done()
    assert out.getvalue() == ""


def test_terminal_line_is_shown_then_erased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    out = io.StringIO()
    p = progress.Progress(out, force=True)
    p.update("pid 7: counting objects")
    shown = out.getvalue()
    assert shown.startswith("\rintrospect: pid 7: counting objects (") and "\n" not in shown
    p.done()
    assert out.getvalue().endswith("\r" + " " * (len(shown) - 1) + "\r")


def test_nothing_shown_before_a_second() -> None:
    out = io.StringIO()
    p = progress.Progress(out, force=True)
    p.update("quick")
    p.done()
    assert out.getvalue() == ""
