"""No code from one target reaches another (issue 24): a compromised worker that replaces its
``marshal`` with a look-alike and writes its own bytes into the run directory's code files, then
an innocent worker of the same interpreter; no process but the hostile one ever runs its payload,
and the innocent one still loads precompiled code (the fast path) made by a trusted interpreter."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from introspect import codecache
from tests.conftest import Interp, interp_params, introspect


@pytest.mark.parametrize("mode", ["marshal", "plant"])
@pytest.mark.parametrize("interp", interp_params())
def test_hostile_code_never_reaches_another_process(
    interp: Interp, mode: str, spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    marker = tmp_path / "payload-ran"
    same = os.path.samefile(interp.path, sys.executable)
    trusted = codecache.untrusted(interp.path) is None  # else the target compiles, nothing kept
    # GIVEN a hostile worker: a look-alike marshal, or its bytes planted in the run dir's code files
    hostile = spawn(
        interp, "hostile_code.py", env={"HOSTILE_MARKER": str(marker), "HOSTILE_MODE": mode}
    )
    # WHEN introspect looks at it, every way that ships the agent (its answers do not matter here:
    # what it planted may run in itself, and then our agent does not)
    for n, cmd in enumerate(
        [
            ["top", "--timeout", "8"],
            ["top", "--in-process", "--timeout", "8"],
            ["growth", "--in-process", "--timeout", "8"],
        ]
    ):
        run = introspect(cmd[0], str(hostile.pid), *cmd[1:], "-o", str(tmp_path / f"h{n}"))
        assert "Traceback" not in run.stderr, run.stderr
    assert (hostile.ask("state")["writes"] > 0) == (mode == "plant")  # it did plant its bytes
    # AND then at an innocent worker of the same interpreter, as the same user
    innocent = spawn(interp, "gc_quiet.py")
    for n, cmd in enumerate([["top"], ["top", "--in-process"], ["growth", "--in-process"]]):
        run = introspect(
            cmd[0], str(innocent.pid), *cmd[1:], "--json", "-o", str(tmp_path / f"i{n}")
        )
        assert run.rc == 0, run.stderr
        # THEN the innocent one loaded precompiled code: made by the CLI or by the trusted binary
        assert run.json()["agent_code"] == ("loaded" if same or trusted else "compiled"), run.json()
    # AND no process but the hostile one ever ran the payload
    ran = {int(x) for x in marker.read_text().split()} if marker.exists() else set()
    assert ran <= {hostile.pid}, (ran, hostile.pid, innocent.pid)
    # AND nothing the hostile worker made was kept: the cache holds only a trusted compile
    kept = (
        list((cache / "introspect" / codecache.CACHE_NAME).glob("*.code")) if cache.exists() else []
    )
    assert all(str(marker).encode() not in p.read_bytes() for p in kept)
    # one per source shipped (snapshot, top, growth) when the target's own binary made them
    assert len(kept) == (0 if same or not trusted else 3), kept
    assert innocent.alive() and innocent.stderr() == ""
