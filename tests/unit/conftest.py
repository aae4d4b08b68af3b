"""Fixtures shared by the unit tests of dump files (test_dumpfile, test_dumpread)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole dump of a small victim, made once per module (test_dumpfile._dump)."""
    from tests.unit.test_dumpfile import _dump

    p = tmp_path_factory.mktemp("dump") / "good.pydump"
    _dump(str(p))
    return p
