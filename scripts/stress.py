"""Inject again and again into a busy victim and count every way it could go wrong.

For each interpreter kind (an interpreter on this machine × an injection method) one victim,
tests/victims/stress_victim.py, runs: three threads allocate and free dicts, lists and StressItem
objects without pause while the main thread recomputes checksums it knows and counts any mismatch
or exception. Each round runs the real CLI once, in turn

  introspect top PID  /  introspect growth PID  /  introspect backrefs PID StressItem  /
  introspect top PID --by size

and counts, per kind:

  crashes        the victim exited (it is restarted, with a new baseline)
  hangs          a round that did not end within --round-timeout, a victim left stopped
                 (state T/t), a victim that stopped answering or whose main thread stopped checking
  victim errors  the victim's own error counter (checksum mismatches, exceptions in its code) and
                 anything it wrote on stderr
  residue        distinct things left behind, against the state before round 1, looked at every
                 --check-every rounds and at the end: new or lost modules (beyond the agent's
                 documented ones), sys.path, threads, open fds, __main__ names, a run directory in
                 the victim's /tmp, a bootstrap page still mapped, a new anonymous executable
                 mapping, an introspect lock still held
  CLI failures   a non-zero exit or an answer that is wrong (top without StressItem, backrefs
                 that found none)

and the pause the CLI reports (paused_s: median and p99). Progress goes to stderr every 50
rounds; the table (or --json) to stdout. Exit status 1 when any count is not zero.

Example: scripts/stress --quick --kinds debian-3.11-ptrace,debian-3.11-gdb,sid-3.14-pep768
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from introspect.channel import MAGIC  # noqa: E402
from introspect.render.text import table  # noqa: E402
from introspect.runner import LOCK_DIR  # noqa: E402
from tests.conftest import Interp, Victim, discover  # noqa: E402 - needs REPO on sys.path

VICTIM = "stress_victim.py"
COMMANDS = ("top", "growth", "backrefs", "size")  # size: top --by size, the walk of untracked objects
# What the agent may leave imported, as tests/integration/test_inject.py allows: the growth
# baseline module, and builtin C modules it had to import once (importing one runs no code).
ALLOWED_MODULES = {"gc", "time", "_collections"}
DEFAULT_KINDS = ["pyenv-3.8-ptrace", "pyenv-3.13-ptrace", "debian-3.11-ptrace", "sid-3.14-ptrace", "sid-3.15-ptrace",
                 "pyenv-3.8-gdb", "pyenv-3.13-gdb", "debian-3.11-gdb", "sid-3.14-pep768", "sid-3.14-gdb",
                 "sid-3.15-pep768", "sid-3.15-gdb"]
PROGRESS_EVERY = 50
MAX_PROBLEMS = 20  # details kept per kind (counts are always complete)


class StressError(Exception):
    pass


@dataclass(frozen=True)
class Kind:
    interp: Interp
    method: str

    @property
    def id(self) -> str:
        return f"{self.interp.id}-{self.method}"


@dataclass
class Tally:
    kind: str
    method: str
    rounds: int = 0
    ok: int = 0
    crashes: int = 0
    hangs: int = 0
    victim_errors: int = 0
    residue: int = 0
    cli_failures: int = 0
    paused: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    residue_seen: set[str] = field(default_factory=set)

    def problem(self, round_no: int, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"round {round_no}: {text}")

    @property
    def failed(self) -> int:
        return self.crashes + self.hangs + self.victim_errors + self.residue + self.cli_failures

    def paused_median(self) -> float:
        return statistics.median(self.paused) if self.paused else 0.0

    def paused_p99(self) -> float:
        if not self.paused:
            return 0.0
        ordered = sorted(self.paused)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    def summary(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("paused")
        doc.pop("residue_seen")
        doc["paused_median_s"] = round(self.paused_median(), 6)
        doc["paused_p99_s"] = round(self.paused_p99(), 6)
        doc["wall_s"] = round(self.wall_s, 1)
        return doc


# ------------------------------------------------------------------------------------------------
# kinds


def all_kinds() -> list[Kind]:
    return [Kind(i, m) for i in discover() for m in i.methods]


def pick_kinds(spec: str | None) -> list[Kind]:
    """`--kinds a,b`: ID-METHOD (pyenv-3.8-gdb), a bare interpreter ID (all its methods), or `all`."""
    known = all_kinds()
    by_id = {k.id: k for k in known}
    if spec is None:
        chosen = [by_id[k] for k in DEFAULT_KINDS if k in by_id]
        missing = [k for k in DEFAULT_KINDS if k not in by_id]
        if missing:
            print(f"stress: not on this machine, skipped: {', '.join(missing)} (scripts/setup provisions sid-3.14/3.15)",
                  file=sys.stderr)
        return chosen
    chosen = []
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        if word == "all":
            chosen.extend(known)
        elif word in by_id:
            chosen.append(by_id[word])
        elif any(k.interp.id == word for k in known):
            chosen.extend(k for k in known if k.interp.id == word)
        else:
            raise StressError(f"unknown kind {word!r}; on this machine: {', '.join(by_id)}")
    return list(dict.fromkeys(chosen))


# ------------------------------------------------------------------------------------------------
# looking at the victim from outside


def proc_state(pid: int) -> str:
    """The one-letter state from /proc/PID/stat ('' if gone): T or t means stopped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _maps(pid: int) -> list[tuple[int, int, str, str]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def exec_anon_mappings(pid: int) -> int:
    """Anonymous executable mappings: none in CPython by itself; a leaked code page would be one."""
    return sum(1 for _lo, _hi, perms, name in _maps(pid) if "x" in perms and not name)


def bootstrap_pages(pid: int) -> list[int]:
    """Pages that begin with the bootstrap's magic line: the gdb injector's page, if still mapped
    (the ptrace injector's page is read+exec, counted by exec_anon_mappings).

    The injector writes the text at the start of a page it mmaps, so a page-aligned copy is that
    page; copies the interpreter made while compiling it live in the heap at other offsets.
    """
    found = []
    want = MAGIC.encode()
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for lo, hi, perms, name in _maps(pid):
            if not perms.startswith("rw") or name:
                continue
            for addr in range(lo, hi, 4096):
                try:
                    if os.pread(fd, len(want), addr) == want:
                        found.append(addr)
                except OSError:
                    break
    finally:
        os.close(fd)
    return found


def run_dirs(pid: int) -> list[str]:
    return glob.glob(f"/proc/{pid}/root/tmp/introspect-{pid}-*")


def lock_held(pid: int) -> bool:
    path = f"{LOCK_DIR}/{pid}.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return False


@dataclass
class Baseline:
    state: dict[str, Any]
    exec_anon: int
    pages: list[int]
    checks: int


def take_baseline(victim: Victim) -> Baseline:
    state = victim.ask("state")
    return Baseline(state, exec_anon_mappings(victim.pid), bootstrap_pages(victim.pid), state["checks"])


def residue(victim: Victim, base: Baseline) -> list[str]:
    """Everything that differs from the state before round 1 (each a short description)."""
    now = victim.ask("state")
    before = base.state
    found = []
    new = set(now["modules"]) - set(before["modules"]) - ALLOWED_MODULES
    lost = set(before["modules"]) - set(now["modules"])
    found += [f"module {m} added" for m in sorted(new)] + [f"module {m} removed" for m in sorted(lost)]
    for key, what in (("sys_path", "sys.path"), ("threads", "threads"), ("fds", "fds"), ("main_names", "__main__ names")):
        if now[key] != before[key]:
            added = [x for x in now[key] if x not in before[key]]
            gone = [x for x in before[key] if x not in now[key]]
            found.append(f"{what} changed: +{added} -{gone}" if added or gone else f"{what} reordered")
    found += [f"run dir left: {d}" for d in run_dirs(victim.pid)]
    pages = [p for p in bootstrap_pages(victim.pid) if p not in base.pages]
    found += [f"bootstrap page still mapped at {p:#x}" for p in pages]
    exec_now = exec_anon_mappings(victim.pid)
    if exec_now > base.exec_anon:
        found.append(f"anonymous executable mappings {base.exec_anon} -> {exec_now}")
    if lock_held(victim.pid):
        found.append(f"{LOCK_DIR}/{victim.pid}.lock still held")
    strays = stray_processes(victim.pid)
    if strays:  # a walker killed a moment ago may still be exiting: only what stays counts
        time.sleep(0.5)
        strays = [x for x in stray_processes(victim.pid) if x in strays]
    found += strays
    return found


def stray_processes(pid: int) -> list[str]:
    """Zombie children of the victim, and live copies of it (forked-snapshot walkers) left running."""
    import psutil

    out = []
    try:
        victim = psutil.Process(pid)
        born, cmd = victim.create_time(), victim.cmdline()
        out += [f"zombie child {c.pid}" for c in victim.children() if c.status() == psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return out
    for p in psutil.process_iter():
        try:
            if p.pid != pid and p.create_time() >= born and p.cmdline() == cmd and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"stray copy of the victim: pid {p.pid}")
        except psutil.Error:
            pass
    return out


# ------------------------------------------------------------------------------------------------
# one round


def cli_args(command: str, pid: int, method: str, outdir: str) -> list[str]:
    args = [command, str(pid)]
    if command == "size":
        args = ["top", str(pid), "--by", "size", "-n", "0"]
    elif command == "backrefs":
        # Few samples, shallow: the chain module __main__ -> pools -> list -> StressItem is short.
        args += ["StressItem", "--samples", "3", "--max-depth", "6", "--format", "dot"]
    else:
        args += ["-n", "0"]
    return args + ["--json", "--method", method, "--timeout", "30", "-o", outdir]


def check_answer(command: str, doc: dict[str, Any]) -> str | None:
    """Why the CLI's answer is wrong, or None: the injection must also give right results."""
    if command in ("top", "size"):
        counts = {t["type"]: t["count"] for t in doc.get("types", [])}
        if counts.get("__main__.StressItem", 0) <= 0:
            return f"{command}: no __main__.StressItem counted"
        if command == "size" and doc.get("partial"):
            return f"size: partial walk ({doc.get('stopped')})"
    elif command == "growth":
        if "types" not in doc:
            return "growth: no types in the answer"
    elif doc.get("found", 0) <= 0 or not doc.get("chains"):
        return f"backrefs: found {doc.get('found')} StressItem, {len(doc.get('chains') or [])} chains"
    if not isinstance(doc.get("paused_s"), (int, float)):
        return "no paused_s in the answer"
    return None


@dataclass
class RoundResult:
    rc: int | None  # None: timed out
    stdout: str
    stderr: str


def run_cli(args: list[str], timeout: float, cwd: str) -> RoundResult:
    """The real CLI in its own process group, so a hang is ended with everything it started (gdb)."""
    proc = subprocess.Popen([sys.executable, "-m", "introspect", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return RoundResult(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return RoundResult(None, out, err)


class KindRun:
    """All rounds on one kind: one victim (a new one after a crash), counted in one Tally."""

    def __init__(self, kind: Kind, rounds: int, check_every: int, round_timeout: float, workdir: str) -> None:
        self.kind = kind
        self.rounds = rounds
        self.check_every = check_every
        self.round_timeout = round_timeout
        self.workdir = workdir
        self.tally = Tally(kind.interp.id, kind.method)
        self.victim: Victim | None = None
        self.base: Baseline | None = None
        self.errors_seen = 0
        self.stderr_seen = 0
        self.victims: list[Victim] = []

    def start_victim(self) -> None:
        # faulthandler: a crash leaves the victim's Python stacks on its stderr, in our report.
        env = {"PYTHONPATH": "", "PYTHONFAULTHANDLER": "1"}
        self.victim = Victim(self.kind.interp, VICTIM, "", env)
        self.victims.append(self.victim)
        time.sleep(0.2)  # let the threads get going: the baseline is a running process
        self.base = take_baseline(self.victim)
        self.errors_seen = self.base.state["errors"]
        self.stderr_seen = 0

    def close(self) -> None:
        for v in self.victims:
            pid = v.pid
            v.close()
            # The lock file is introspect's, for a pid that no longer exists: ours to tidy.
            if os.path.exists(f"{LOCK_DIR}/{pid}.lock") and not lock_held(pid):
                os.unlink(f"{LOCK_DIR}/{pid}.lock")

    def run(self) -> Tally:
        t0 = time.monotonic()
        try:
            self.start_victim()
            for n in range(1, self.rounds + 1):
                self.one_round(n)
                if n % self.check_every == 0 or n == self.rounds:
                    self.check_residue(n)
                if n % PROGRESS_EVERY == 0 and n < self.rounds:
                    self.progress(n, t0)
        finally:
            self.tally.wall_s = time.monotonic() - t0
            self.close()
        return self.tally

    def progress(self, n: int, t0: float) -> None:
        t = self.tally
        print(f"stress: {self.kind.id} {n}/{self.rounds} rounds, {time.monotonic() - t0:.0f} s: ok {t.ok}, "
              f"crashes {t.crashes}, hangs {t.hangs}, victim errors {t.victim_errors}, residue {t.residue}, "
              f"CLI failures {t.cli_failures}", file=sys.stderr, flush=True)

    def one_round(self, n: int) -> None:
        assert self.victim is not None
        t, victim = self.tally, self.victim
        t.rounds += 1
        command = COMMANDS[(n - 1) % len(COMMANDS)]
        outdir = os.path.join(self.workdir, f"r{n}")
        res = run_cli(cli_args(command, victim.pid, self.kind.method, outdir), self.round_timeout, self.workdir)
        shutil.rmtree(outdir, ignore_errors=True)
        bad = False
        if res.rc is None:
            t.hangs += 1
            bad = True
            t.problem(n, f"{command}: no answer within {self.round_timeout:g} s; stderr: {_tail(res.stderr)}")
        if not victim.alive():
            self.crashed(n, command)
            return
        state = proc_state(victim.pid)
        if state in ("T", "t"):
            t.hangs += 1
            bad = True
            t.problem(n, f"{command}: victim left stopped (state {state}); sent SIGCONT")
            os.kill(victim.pid, signal.SIGCONT)
        if res.rc is not None and res.rc != 0:
            t.cli_failures += 1
            bad = True
            t.problem(n, f"{command}: exit {res.rc}: {_tail(res.stderr)}")
        elif res.rc == 0:
            try:
                doc = json.loads(res.stdout)
                why = check_answer(command, doc)
            except ValueError as exc:
                doc, why = {}, f"{command}: unreadable JSON ({exc})"
            if why:
                t.cli_failures += 1
                bad = True
                t.problem(n, why)
            else:
                t.paused.append(float(doc["paused_s"]))
        if not self.check_health(n, command):
            bad = True
        if not bad:
            t.ok += 1

    def crashed(self, n: int, command: str) -> None:
        assert self.victim is not None
        self.tally.crashes += 1
        self.tally.problem(n, f"{command}: victim exited with {self.victim.proc.returncode}; stderr: "
                              f"{_tail(self.victim.stderr())}")
        self.start_victim()

    def check_health(self, n: int, command: str) -> bool:
        """The victim's own error count and stderr, after every round."""
        assert self.victim is not None
        t, victim = self.tally, self.victim
        try:
            health = victim.ask("health", timeout=10)
        except (TimeoutError, ValueError) as exc:
            t.hangs += 1
            t.problem(n, f"{command}: victim did not answer: {exc}")
            return False
        healthy = True
        if health["errors"] > self.errors_seen:
            t.victim_errors += health["errors"] - self.errors_seen
            t.problem(n, f"{command}: victim counted {health['errors'] - self.errors_seen} error(s): {health['samples']}")
            self.errors_seen = health["errors"]
            healthy = False
        if not health["threads_alive"]:
            t.victim_errors += 1
            t.problem(n, f"{command}: a victim thread died")
            healthy = False
        err = victim.stderr()
        if len(err) > self.stderr_seen:
            t.victim_errors += 1
            t.problem(n, f"{command}: victim stderr: {_tail(err[self.stderr_seen:])}")
            self.stderr_seen = len(err)
            healthy = False
        return healthy

    def check_residue(self, n: int) -> None:
        assert self.victim is not None and self.base is not None
        t = self.tally
        try:
            found = residue(self.victim, self.base)
            checks = self.victim.ask("health", timeout=10)["checks"]
        except (TimeoutError, ValueError) as exc:
            t.hangs += 1
            t.problem(n, f"victim did not answer the residue check: {exc}")
            return
        if checks <= self.base.checks:
            t.hangs += 1
            t.problem(n, f"the victim's main thread made no progress (checks stay at {checks})")
        self.base.checks = checks
        for item in found:
            if item not in t.residue_seen:
                t.residue_seen.add(item)
                t.residue += 1
                t.problem(n, f"residue: {item}")


def _tail(text: str, n: int = 300) -> str:
    text = " / ".join(line for line in text.strip().splitlines() if line.strip())
    return (text[-n:] if len(text) > n else text) or "(empty)"


# ------------------------------------------------------------------------------------------------
# report


def render(tallies: list[Tally]) -> str:
    headers = ["kind", "method", "rounds", "ok", "crashes", "hangs", "victim errors", "residue", "CLI failures",
               "paused median s", "paused p99 s", "wall s"]
    rows = [[t.kind, t.method, t.rounds, t.ok, t.crashes, t.hangs, t.victim_errors, t.residue, t.cli_failures,
             f"{t.paused_median():.4f}", f"{t.paused_p99():.4f}", f"{t.wall_s:.0f}"] for t in tallies]
    out = [table(headers, rows, right=[False, False] + [True] * 10)]
    for t in tallies:
        if t.problems:
            out.append(f"\n{t.kind} {t.method}: first problems")
            out += [f"  {p}" for p in t.problems]
    bad = sum(t.failed for t in tallies)
    out.append("\nresult: " + ("all counts zero" if not bad else f"{bad} problem(s)"))
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, help="rounds per kind (default: 500; --quick: 20)")
    p.add_argument("--quick", action="store_true", help="20 rounds per kind, residue checked every 5")
    p.add_argument("--kinds", help=f"comma-separated ID-METHOD, interpreter ID or `all` (default: {','.join(DEFAULT_KINDS)})")
    p.add_argument("--check-every", type=int, help="rounds between residue checks (default: 25; --quick: 5)")
    p.add_argument("--round-timeout", type=float, default=60.0, help="a round not done after S seconds is a hang (default: 60)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of the table")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (20 if args.quick else 500)
    args.check_every = args.check_every or (5 if args.quick else 25)
    if args.rounds < 1 or args.check_every < 1:
        p.error("--rounds and --check-every must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        kinds = pick_kinds(args.kinds)
    except StressError as exc:
        print(f"stress: {exc}", file=sys.stderr)
        return 2
    if not kinds:
        print("stress: no interpreter kind to run on this machine (run scripts/setup)", file=sys.stderr)
        return 2
    tallies = []
    with tempfile.TemporaryDirectory(prefix="introspect-stress-") as workdir:
        for kind in kinds:
            print(f"stress: {kind.id}: {args.rounds} rounds ({kind.interp.path})", file=sys.stderr, flush=True)
            tallies.append(KindRun(kind, args.rounds, args.check_every, args.round_timeout, workdir).run())
    if args.json:
        print(json.dumps({"ok": all(t.failed == 0 for t in tallies), "kinds": [t.summary() for t in tallies]}, indent=2))
    else:
        print(render(tallies))
    return 0 if all(t.failed == 0 for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
