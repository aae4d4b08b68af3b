"""How the agent gets into the target and what it leaves in the target's collector, on every kind.

- The agent's code is made once per interpreter by the CLI or by the target's trusted interpreter
  binary, never by the target (introspect/codecache.py): every run loads it, and a damaged or
  foreign code file is never loaded.
- The collector is held off while the agent runs and left as found (on, or off); the user's
  `exec` code sees it as the target had it; and no cyclic garbage of ours is left for the
  target's next collection but exec's capture class (the victim keeps all garbage:
  gc.DEBUG_SAVEALL). Found this way: the in-process backrefs left every object of the target
  listed in a cycle, and the agent's check for an earlier run its own frames.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from introspect import codecache
from tests.conftest import Interp, interp_params, introspect

EVERY_KIND = pytest.mark.parametrize("interp", interp_params())


def _code(tmp_path: Path, pid: int, name: str, *extra: str) -> str:
    run = introspect("top", str(pid), "--in-process", "--json", "-n", "3", *extra, "-o", str(tmp_path / name))
    assert run.rc == 0, run.stderr
    doc = run.json()
    assert doc["types"], doc
    return str(doc["agent_code"])


@EVERY_KIND
def test_every_run_loads_code_a_trusted_interpreter_made(
    interp: Interp, spawn, tmp_path: Path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    why = codecache.untrusted(interp.path)
    if why is not None and not os.path.samefile(interp.path, sys.executable):
        pytest.skip(f"no trusted compiler for {interp.id} ({why}): its targets compile the agent")
    victim = spawn(interp, "gc_quiet.py")
    # The first run already loads: the CLI compiled it (the target runs the CLI's interpreter file),
    # or the target's root-owned binary did, run by the CLI, and the CLI kept that.
    assert _code(tmp_path, victim.pid, "o1") == "loaded"
    code_dir = cache / "introspect" / codecache.CACHE_NAME
    kept = list(code_dir.glob("*.code")) if code_dir.exists() else []
    assert len(kept) == (0 if os.path.samefile(interp.path, sys.executable) else 1), kept
    assert _code(tmp_path, victim.pid, "o2") == "loaded"
    if kept:
        # A damaged file (its header right, its code not) is refused by marshal: compiled, correct.
        data = kept[0].read_bytes()
        header, _ = codecache.split(data)  # type: ignore[misc]
        kept[0].write_bytes(header + b"\xff" * 64)
        assert _code(tmp_path, victim.pid, "o3") == "compiled"
        # ... and one of another interpreter (its header not the target's) is not even read as code.
        kept[0].write_bytes(b"\x00\x00\r\n 30b07f0 \n" + data[len(header):])
        assert _code(tmp_path, victim.pid, "o4") == "compiled"
    assert victim.ask("state")["garbage"] == []
    assert victim.alive() and victim.stderr() == ""


@EVERY_KIND
@pytest.mark.parametrize("collector", ["on", "off"])
def test_collector_left_as_found_and_no_garbage_of_ours(interp: Interp, collector: str, spawn, tmp_path: Path) -> None:
    victim = spawn(interp, "gc_quiet.py", env={"VICTIM_GC": collector})
    assert victim.ask("state") == {"enabled": collector == "on", "garbage": []}
    commands = [["top", "-n", "3"], ["top", "--in-process", "-n", "3"]]
    if collector == "on":
        commands += [["growth", "--in-process"], ["backrefs", "Widget", "--in-process", "--samples", "2"]]
    for n, cmd in enumerate(commands):
        run = introspect(cmd[0], str(victim.pid), *cmd[1:], "-o", str(tmp_path / f"o{n}"))
        assert run.rc == 0, (cmd, run.stderr)
        st = victim.ask("state")
        assert st == {"enabled": collector == "on", "garbage": []}, cmd
    # The user's code runs with the collector as the target had it, and leaves it so.
    payload = tmp_path / "gc.py"
    payload.write_text("import gc\nprint('enabled', gc.isenabled())\n")
    run = introspect("exec", str(victim.pid), str(payload), "-o", str(tmp_path / "ox"))
    assert run.rc == 0, run.stderr
    assert run.stdout == f"enabled {collector == 'on'}\n"
    # exec's one leftover: the class that captures the user's output (a class is a cycle of its
    # own: its __mro__ holds it), freed by the target's next young collection.
    st = victim.ask("state")
    assert st["enabled"] == (collector == "on")
    capture = [g for g in st["garbage"] if "<introspect>/" in g or g == "type _Capture"]
    assert sorted(capture) == sorted(["type _Capture"] + [f"function {m} in <introspect>/exec.py"
                                                        for m in ("__init__", "write", "flush", "__getattr__")])
    assert len(st["garbage"]) <= 16 and not any(g.startswith(("frame", "list", "BufferedReader")) for g in st["garbage"]), st
    assert victim.ask("state") == {"enabled": collector == "on", "garbage": []}
    assert victim.alive() and victim.stderr() == ""
