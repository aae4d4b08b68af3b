"""The agent as a package of files (introspect/agent/): what is shipped for each command, the
rules every file states, and error reports that name the file and line where they were raised,
through the real bootstrap with the code compiled by the target (here) or loaded precompiled."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from introspect import codecache
from introspect.agent import (
    AGENT_DIR,
    AGENT_PATH,
    ALL,
    PARTS,
    WALKER_PARTS,
    agent_files,
    code_name,
    names,
    shipped,
    walker_files,
)
from introspect.channel import Request, RunDir, bootstrap_source
from introspect.target import Target

AGENT_FILES = sorted(p.name for p in AGENT_DIR.glob("*.py") if p.name not in ("__init__.py",))


def _target() -> Target:
    return Target(
        pid=os.getpid(), name="python", exe=sys.executable, cmdline=(), uid=os.getuid(),
        gid=os.getgid(), status="sleeping", tracer_pid=0, create_time=0.0,
        version=sys.version_info[:2], capi_object=None, libc_object=None, mappings=(),
        same_root=True,
    )


def test_every_file_is_shipped_somewhere_and_whole_loads_them_in_order() -> None:
    assert sorted([*ALL, "whole.py"]) == AGENT_FILES
    assert names("top") == ["core.py", "objects.py", "sizes.py", "run.py"]
    assert names("backrefs") == ["core.py", "objects.py", "backrefs.py", "chains.py", "run.py"]
    assert names("snapshot") == ["core.py", "snapshot.py", "run.py"]  # the walker's: in the copy
    assert names(None) == list(ALL) and ALL[0] == "core.py" and ALL[-1] == "run.py"
    for command in PARTS:
        assert [n for n, _ in agent_files(command)] == names(command)
    assert [n for n, _ in walker_files()] == list(WALKER_PARTS)
    # whole.py (tests and tools) executes the same files in the same order
    tree = ast.parse(AGENT_PATH.read_text())
    loop = next(s for s in tree.body if isinstance(s, ast.For))
    assert ast.literal_eval(loop.iter) == ALL


@pytest.mark.parametrize("name", AGENT_FILES)
def test_each_file_says_where_it_runs_and_keeps_the_rules(name: str) -> None:
    text = (AGENT_DIR / name).read_text()
    head = text[:800]
    assert "runs" in head and ("TARGET" in head or "FORKED COPY" in head or "NEVER shipped" in head)
    assert "Python 3.8" in head and ("builtin" in head or "Imports:" in head)
    ast.parse(text, feature_version=(3, 8))  # the oldest interpreter it runs in
    lines = text.split("\n")
    assert len(lines) <= 600
    assert [i + 1 for i, line in enumerate(lines) if len(line) > 100] == []
    # nothing is imported at run time but builtin C modules (through core's _builtin); the
    # walker's copy may import ctypes (nothing reaches the target)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert mod in ("sys", "typing", "ctypes") or str(mod).startswith("introspect.agent."), (
                name, mod)


def test_the_type_checkers_imports_are_shipped_as_blank_lines() -> None:
    for name, data in [*agent_files(None), *walker_files()]:
        real = (AGENT_DIR / name).read_bytes()
        assert data == shipped(real) and data.count(b"\n") == real.count(b"\n"), name
        assert not re.search(rb"^\s*(from introspect|from typing|MYPY =|if MYPY)", data, re.M), name
        kept = [(a, b) for a, b in zip(real.split(b"\n"), data.split(b"\n")) if a != b]
        assert kept and all(not b for _, b in kept), name  # only blanked, nothing else changed


def _line(name: str, text: str) -> int:
    lines = (AGENT_DIR / name).read_text().split("\n")
    return [i + 1 for i, line in enumerate(lines) if text in line][0]


def _frames(line: str) -> list[object]:
    """[code name, line, function] of the first line of an agent file holding ``line``:
    "FILE:text:function"."""
    name, text, function = line.split(":", 2)
    return [code_name(name), _line(name, text), function]


# (command, params, exception, frames innermost last): top --sizes whose budget is not a number
# raises in sizes.py; growth with params that are no dict raises in core.py below growth.py
CASES = {
    "top": ({"sizes": True, "budget": "no number"}, "ValueError", [
        'run.py:result = COMMANDS[request["command"]]:run',
        "sizes.py:return _sizes(params):cmd_top",
        'sizes.py:_start_clock(float(params.get("budget":_sizes',
    ]),
    "growth": ([], "AttributeError", [
        'run.py:result = COMMANDS[request["command"]]:run',
        "growth.py:total, counts, scan_s = _snapshot(params):cmd_growth",
        "core.py:    _settle(params):_snapshot",
        'core.py:if params.get("collect"):_settle',
    ]),
}


@pytest.mark.parametrize("command", sorted(CASES))
@pytest.mark.parametrize("how", ["compiled", "loaded"])
def test_an_error_in_a_part_names_its_file_and_true_line(
    tmp_path: Path, how: str, command: str
) -> None:
    # GIVEN the files the target gets for the command, written as the CLI writes them, and a
    # request that makes the agent raise (CASES)
    params, exception, frames = CASES[command]
    files = agent_files(command)
    paths = []
    for name, data in files:
        (tmp_path / name).write_bytes(data)
        paths.append((str(tmp_path / name), code_name(name)))
    code_path = ""
    if how == "loaded":
        code = codecache._local(files)
        assert code is not None
        (tmp_path / codecache.CODE_FILE).write_bytes(code)
        code_path = str(tmp_path / codecache.CODE_FILE)
    run = RunDir(_target(), "nonce", str(tmp_path))
    request = Request(command, params, 30.0, run)  # type: ignore[arg-type]
    text = bootstrap_source(paths, request, code_path)
    # WHEN the bootstrap runs in a fresh interpreter
    out = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    # THEN the result names each frame's file and its line in that file
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is False and result["code"][0] == how, result
    error = result["error"]
    assert error["type"] == exception, error
    assert error["frames"] == [_frames(f) for f in frames]
