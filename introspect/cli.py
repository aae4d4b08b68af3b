"""Command line: argv -> command; expected failures -> one plain paragraph and an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from introspect import __version__, errors
from introspect.commands import MODULES, all_commands, one_command


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``only``: a command's name) one with that subcommand alone, which
    parses that command's arguments the same way and imports nothing of the other commands."""
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
    for command in [one_command(only)] if only is not None else all_commands():
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
    from introspect.commands.fanout import ERROR_FILE_ENV  # not imported by every command

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
    args_in = sys.argv[1:] if argv is None else argv
    # `introspect top 4822 ...`: only top's parser. Anything else (--help, --version, a mistyped
    # command) gets the whole parser, for its full help or its list of choices.
    parser = build_parser(args_in[0] if args_in and args_in[0] in MODULES else None)
    try:
        args = parser.parse_args(args_in)
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
