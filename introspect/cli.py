"""Command line: argv -> command; expected failures -> one plain paragraph and an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from introspect import __version__, errors
from introspect.commands import all_commands
from introspect.commands.fanout import ERROR_FILE_ENV


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in errors.EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="introspect",
        description="Look inside a live Python process (a leaking worker, a daemon) without "
                    "restarting it.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"introspect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in all_commands():
        doc = (sys.modules[type(command).__module__].__doc__ or "").strip()
        p = sub.add_parser(command.name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.prepare_parser(p)
        p.set_defaults(handler=command, parser=p)
    return parser


def format_error(exc: errors.IntrospectError) -> str:
    text = f"introspect: error: {exc}."
    if exc.help:
        text += f" {exc.help}"
    return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)


def _write_error_file(exc: errors.IntrospectError) -> None:
    """For `--children`: the parent introspect reads a child's error from the file it named."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    doc = {"type": type(exc).__name__, "message": exc.msg, "pid": exc.pid, "name": exc.name,
           "help": exc.help, "exit_code": exc.exit_code}
    try:
        with open(path, "x") as f:
            json.dump(doc, f)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version or a usage error
        return int(exc.code or 0)
    try:
        return int(args.handler.run(args))
    except errors.IntrospectError as exc:
        print(format_error(exc), file=sys.stderr)
        _write_error_file(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("introspect: interrupted; the request was withdrawn and nothing was left behind.",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
