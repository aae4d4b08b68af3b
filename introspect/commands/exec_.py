"""Run a Python file inside a live process and show its output and exception here.

The payload runs on the target's main thread at a safe point, in a fresh namespace
(``__name__ == "__introspect_exec__"``; ``import __main__`` to reach the program). What it
prints through ``sys.stdout``/``sys.stderr`` on that thread comes back to you; other threads'
output still goes to the target's own streams. Keep payloads short: the target's Python code
does not run while the payload does.

Example: introspect exec 1234 payload.py
"""

from __future__ import annotations

import argparse
import linecache
import sys
from pathlib import Path
from typing import Any

from introspect import errors
from introspect.commands import add_target_options, emit, header, logger
from introspect.render.output import OutputDir
from introspect.runner import run_agent


class Command:
    name = "exec"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_target_options(parser)
        parser.add_argument("payload", help="Python file to run inside the target")

    def run(self, args: argparse.Namespace) -> int:
        path = Path(args.payload)
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise errors.UsageError(f"cannot read payload {path}: {exc.strerror or exc}") from None
        try:
            compile(source, str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise errors.UsageError(
                f"payload {path} has a syntax error: {exc}",
                help="Fix the payload; nothing was sent to the target.",
            ) from None
        out = OutputDir(self.name, args.pid, args.output)
        outcome = run_agent(args.pid, "exec", {"display_name": str(path)}, method=args.method,
                            timeout=args.timeout, log=logger(args), files={"payload": source})
        res = outcome.result
        exc_info: dict[str, Any] | None = res.get("exception")
        tb_text = format_exception(exc_info, str(path), source) if exc_info else ""
        doc = {**outcome.meta(), "payload": str(path), "stdout": res["stdout"],
               "stderr": res["stderr"], "exception": exc_info, "traceback": tb_text or None,
               "run_s": round(res["run_s"], 6)}
        if args.json:
            emit(args, out, doc, _text(outcome, res, tb_text))
        else:
            sys.stdout.write(res["stdout"])
            sys.stdout.flush()
            sys.stderr.write(res["stderr"])
            if tb_text:
                sys.stderr.write(tb_text)
            out.write_json("exec.json", doc)
            out.write_text("exec.txt", _text(outcome, res, tb_text) + "\n")
            print(f"introspect: {header(outcome)}; results written to {out.path}/", file=sys.stderr)
        if exc_info:
            raise errors.PayloadRaised(f"the payload raised {exc_info['type']} (traceback above)",
                                       pid=args.pid, help="The target itself was not affected.")
        return 0


def format_exception(exc: dict[str, Any], payload_name: str, source: bytes) -> str:
    """Python-style traceback; source lines come from our copy of the payload."""
    payload_lines = source.decode("utf-8", "replace").splitlines()
    lines = ["Traceback (most recent call last, inside the target):"]
    for filename, lineno, func in exc.get("frames", []):
        lines.append(f'  File "{filename}", line {lineno}, in {func}')
        if filename == payload_name and 0 < lineno <= len(payload_lines):
            code = payload_lines[lineno - 1].strip()
        else:
            code = linecache.getline(filename, lineno).strip()
        if code:
            lines.append(f"    {code}")
    message = exc.get("message") or ""
    lines.append(f"{exc['type']}: {message}" if message else str(exc["type"]))
    return "\n".join(lines) + "\n"


def _text(outcome: Any, res: dict[str, Any], tb_text: str) -> str:
    parts = [header(outcome), "--- stdout ---", res["stdout"].rstrip("\n"), "--- stderr ---",
             res["stderr"].rstrip("\n")]
    if tb_text:
        parts += ["--- exception ---", tb_text.rstrip("\n")]
    return "\n".join(parts)
