"""Python processes on this host as a tree: role, memory, and whether introspect can look inside.

Roles tell a Celery prefork master from its children (and celery-worker for the other pools),
gunicorn and uWSGI masters from their workers. Nothing is attached, stopped or injected: everything
is read from /proc. Roots and siblings are sorted by RSS, largest first, so a leaking worker stands
out. USS (memory only that process holds) needs the right to read its smaps: "-" when we lack it.

Nothing is written unless -o DIR is given (then ps.json and ps.txt).

Examples:
  introspect ps                      # every Python process
  introspect ps --role celery        # Celery masters, children and workers only
  introspect ps --user app tasks     # processes of user app whose command line mentions "tasks"
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from introspect import procs, roles
from introspect.commands import add_output_options, emit
from introspect.render.output import OutputDir
from introspect.render.text import human_bytes, table

CMD_WIDTH = 70


class Command:
    name = "ps"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "pattern", nargs="?",
            help="only processes whose command line contains PATTERN (case-insensitive)",
        )
        parser.add_argument("--user", metavar="USER", help="only processes of USER (name or uid)")
        parser.add_argument(
            "--role", metavar="ROLE",
            help=f"only this role, or a family (celery, gunicorn, uwsgi): {', '.join(roles.ROLES)}",
        )
        add_output_options(parser, files_by_default=False)

    def run(self, args: argparse.Namespace) -> int:
        # ps only looks: it writes files only when asked to (-o DIR).
        out = OutputDir(self.name, os.getpid(), args.output) if args.output else None
        found = procs.select(procs.discover(), user=args.user, role=args.role, pattern=args.pattern)
        now = time.time()
        ordered = procs.forest(found)
        doc: dict[str, Any] = {"processes": [p.doc(now) for _, p in ordered]}
        emit(args, out, doc,
             render(ordered, now, filtered=bool(args.user or args.role or args.pattern)))
        return 0


def age(seconds: float) -> str:
    """Compact age, like ps's ELAPSED but shorter.

    >>> age(42), age(3725), age(200000)
    ('42s', '1h02m', '2d07h')
    """
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def short_cmdline(cmdline: list[str], width: int = CMD_WIDTH) -> str:
    """The command line with the interpreter's directory dropped, cut at ``width``.

    >>> short_cmdline(["/opt/venv/bin/python3.11", "-m", "celery", "-A", "proj", "worker"])
    'python3.11 -m celery -A proj worker'
    >>> short_cmdline(["python", "-c", "import time\\ntime.sleep(1)"])
    'python -c import time\\\\ntime.sleep(1)'
    """
    if not cmdline:
        return ""
    text = " ".join([cmdline[0].rsplit("/", 1)[-1], *cmdline[1:]])
    # A newline or escape sequence in someone's argv must not break (or drive) the terminal.
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= width else text[: width - 3] + "..."


def render(ordered: list[tuple[int, procs.Proc]], now: float, filtered: bool = False) -> str:
    if not ordered:
        return "no Python process matches." if filtered else "no Python process found."
    rows = []
    for depth, p in ordered:
        tree = ("   " * (depth - 1) + " \\_ " if depth else "") + str(p.pid)
        role = f"{p.role} ({p.pool})" if p.pool else p.role
        inspect = "yes" if p.inspectable else f"no: {p.reason}"
        rows.append(
            (tree, str(p.ppid), p.user, p.python or "?", role, human_bytes(p.rss),
             human_bytes(p.uss) if p.uss is not None else "-", age(now - p.create_time), inspect,
             short_cmdline(p.cmdline))
        )
    headers = ["PID", "PPID", "USER", "PY", "ROLE", "RSS", "USS", "AGE", "INSPECT", "COMMAND"]
    right = [False, True, False, False, False, True, True, True, False, False]
    masters = [p for _, p in ordered if p.role in roles.MASTER_ROLES and p.children]
    lines = [table(headers, rows, right)]
    if masters:
        lines.append("")
        lines.append(
            "The leak of a master lives in its workers: `introspect top PID --children` (or "
            "growth, backrefs) looks inside each of them."
        )
    return "\n".join(lines)
