"""`--children`: the command line each child introspect gets, rebuilt from the parsed options."""

from __future__ import annotations

from pathlib import Path

import pytest

from introspect.cli import build_parser
from introspect.commands.fanout import child_argv


@pytest.mark.parametrize("argv", [
    ["backrefs", "4810", "tasks.Job", "--children", "--samples", "5", "--max-depth", "7", "--budget", "3",
     "--format", "png", "--method", "gdb", "--timeout", "9"],
    ["top", "4810", "--children", "--by", "size", "-n", "0", "--collect", "--json", "-o", "/x"],
    ["growth", "4810", "--children", "--interval", "2", "--samples", "3", "--reset", "-v"],
])
def test_child_argv_keeps_the_users_options(argv: list[str]) -> None:
    # GIVEN a command line with --children
    parser = build_parser()
    args = parser.parse_args(argv)
    # WHEN it is rebuilt for child 4822
    child = parser.parse_args(child_argv(args, 4822, Path("/out/child-4822")))
    # THEN the child gets every option of the user's, its own pid, no --children, and our output options
    skip = {"pid", "children", "json", "output", "verbose", "handler", "parser"}
    assert {k: v for k, v in vars(child).items() if k not in skip} == {k: v for k, v in vars(args).items() if k not in skip}
    assert (child.pid, child.children, child.json, child.output, child.verbose) == (4822, False, True, "/out/child-4822", True)
