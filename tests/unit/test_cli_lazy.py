"""A CLI run imports only its own command: its one-command parser is the whole parser's, and it
leaves the other commands, graphviz and pyelftools unimported."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from introspect.cli import build_parser
from introspect.commands import MODULES, all_commands
from tests.conftest import REPO


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> list[tuple[object, ...]]:
    return [(tuple(a.option_strings), a.dest, a.default, a.nargs, repr(a.choices), a.help)
            for a in parser._actions]


def test_modules_are_the_commands_in_help_order() -> None:
    commands = all_commands()
    assert list(MODULES) == [c.name for c in commands]
    assert [f"introspect.commands.{m}" for m in MODULES.values()] == [
        type(c).__module__ for c in commands]


@pytest.mark.parametrize("name", list(MODULES))
def test_one_command_parser_is_the_whole_ones(name: str) -> None:
    whole = _subparsers(build_parser())[name]
    alone = _subparsers(build_parser(name))
    assert list(alone) == [name]
    assert _options(alone[name]) == _options(whole)
    assert alone[name].description == whole.description
    assert alone[name].format_help() == whole.format_help()


_IMPORTED = (
    "import json, sys; from introspect.cli import build_parser; build_parser({name!r}); "
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith("
    "('introspect.commands.', 'graphviz', 'elftools', 'numpy')))))"
)


@pytest.mark.parametrize("name", ["top", "backrefs", "trace", "exec", "ps"])
def test_a_run_imports_its_command_only(name: str) -> None:
    out = subprocess.run([sys.executable, "-c", _IMPORTED.format(name=name)], capture_output=True,
                         text=True, check=True, timeout=60, cwd=REPO).stdout
    imported = json.loads(out)
    assert f"introspect.commands.{MODULES[name]}" in imported
    # report imports the other commands' modules; none of these does
    assert "introspect.commands.report" not in imported
    assert "introspect.commands.monitor" not in imported
    assert not [m for m in imported if m.split(".")[0] in ("graphviz", "elftools", "numpy")]


def test_unknown_command_still_lists_the_choices() -> None:
    run = subprocess.run([sys.executable, "-m", "introspect", "topp", "1"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert run.returncode == 2
    assert "invalid choice: 'topp'" in run.stderr and "backrefs" in run.stderr, run.stderr
