"""Shared test rig: every interpreter on this machine, real victim processes, the real CLI."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import objgraph
import pytest

REPO = Path(__file__).resolve().parent.parent
VICTIMS = Path(__file__).resolve().parent / "victims"
PYTHONS_DIR = Path(os.environ.get("INTROSPECT_PYTHONS_DIR", "/opt/introspect/pythons"))


GDB_KINDS = ("pyenv-3.8", "debian-3.11", "sid-3.15")


@dataclass(frozen=True)
class Interp:
    id: str  # e.g. pyenv-3.8, debian-3.11, sid-3.14
    path: str
    version: tuple[int, int]

    @property
    def methods(self) -> list[str]:
        """The default injector of this kind on every kind (pep768 and the ptrace fallback on
        3.14+); gdb, now only a fallback on request, on the kinds of GDB_KINDS (a stripped build,
        the oldest and the newest) or everywhere with INTROSPECT_FULL_MATRIX=1."""
        own = ["ptrace", "pep768"] if self.version >= (3, 14) else ["ptrace"]
        if self.id in GDB_KINDS or os.environ.get("INTROSPECT_FULL_MATRIX") == "1":
            own.append("gdb")
        return own


def _pyenv_root() -> Path:
    try:
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip()
        if out:
            return Path(out)
    except (OSError, subprocess.SubprocessError):
        pass
    return Path.home() / ".pyenv"


def discover() -> list[Interp]:
    found = []
    for minor in range(8, 14):
        for d in sorted(glob.glob(str(_pyenv_root() / "versions" / f"3.{minor}.*"))):
            exe = Path(d) / "bin" / f"python3.{minor}"
            if exe.exists():
                found.append(Interp(f"pyenv-3.{minor}", str(exe), (3, minor)))
                break
    if Path("/usr/bin/python3.11").exists():
        found.append(Interp("debian-3.11", "/usr/bin/python3.11", (3, 11)))
    for minor in (14, 15):
        exe = PYTHONS_DIR / f"3.{minor}" / "bin" / f"python3.{minor}"
        if exe.exists():
            found.append(Interp(f"sid-3.{minor}", os.path.realpath(exe), (3, minor)))
    return found


INTERPS = discover()
EXPECTED = ["pyenv-3.8", "pyenv-3.9", "pyenv-3.10", "pyenv-3.11", "pyenv-3.12", "pyenv-3.13",
            "debian-3.11", "sid-3.14", "sid-3.15"]


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [i for i in EXPECTED if i not in {x.id for x in INTERPS}]
    if missing and os.environ.get("CI"):
        raise pytest.UsageError(f"CI must run the whole interpreter matrix; missing: {', '.join(missing)} "
                                "(scripts/setup provisions 3.14/3.15; pyenv versions come with the machine)")


# Seconds each long file takes on one test process in a CI-like run (2 cores, `-n 3 --dist
# loadfile`), measured with INTROSPECT_TEST_TIMELINE in a fresh clone on 2026-12-07 at 17:27
# (the compiled walk step in; test_cwalk.py: 114 s alone at 20:10, with its answers' tests);
# refresh them from a timeline (docs/testing.md). Only their order
# matters: with --dist loadfile a worker takes a whole file at a time, and pytest-xdist hands them
# out by number of tests, which left files of a few long tests (the flower and Celery programs,
# dumps) for the end, one worker running them while the other idled. Longest first instead (files
# not listed keep their order after these), so the short files at the end fill both workers.
FILE_SECONDS = {
    "tests/integration/test_trace.py": 355, "tests/integration/test_safety.py": 343,
    "tests/integration/test_inject.py": 151, "tests/integration/test_dumps.py": 123,
    "tests/integration/test_celery_e2e.py": 115, "tests/integration/test_real_programs.py": 90,
    "tests/integration/test_ptrace.py": 86, "tests/integration/test_oncall_polish.py": 79,
    "tests/integration/test_suspects.py": 67, "tests/integration/test_grpc.py": 59,
    "tests/integration/test_cwalk.py": 114, "tests/integration/test_budget.py": 50,
    "tests/integration/test_gunicorn_app.py": 46, "tests/integration/test_memory.py": 43,
    "tests/integration/test_hostile_code.py": 40, "tests/integration/test_hostile.py": 29,
    "tests/integration/test_agent_code.py": 27, "tests/integration/test_remote.py": 27,
    "tests/integration/test_workflow_report.py": 26, "tests/integration/test_snapshot.py": 23,
    "tests/integration/test_export_ids.py": 18, "tests/unit/test_dumpfile.py": 16,
    "tests/integration/test_dumps_report.py": 15, "tests/unit/test_records_fuzz.py": 14,
    "tests/integration/test_stress.py": 12, "tests/integration/test_workflow_ps.py": 12,
    "tests/integration/test_container.py": 10, "tests/integration/test_bigheap.py": 9,
    "tests/unit/test_dumpread.py": 8,
}


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order made below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: each file's tests stay together and in their order.
    items.sort(key=lambda item: -FILE_SECONDS.get(item.nodeid.split("::", 1)[0], 0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """With INTROSPECT_TEST_TIMELINE=FILE, one line per test: worker, start, end, test id (the
    workers' timelines: docs/testing.md)."""
    t0 = time.time()
    yield
    timeline = os.environ.get("INTROSPECT_TEST_TIMELINE")
    if timeline:
        with open(timeline, "a") as f:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            f.write(f"{worker}\t{t0:.3f}\t{time.time():.3f}\t{item.nodeid}\n")


def interp_params() -> list[Any]:
    return [pytest.param(i, id=i.id) for i in INTERPS]


def interp_method_params() -> list[Any]:
    return [pytest.param(i, m, id=f"{i.id}-{m}") for i in INTERPS for m in i.methods]


@pytest.fixture(scope="session")
def oracle_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding only objgraph.py, for victims' PYTHONPATH (they have nothing of ours)."""
    d = tmp_path_factory.mktemp("oracle")
    shutil.copy(objgraph.__file__, d / "objgraph.py")
    return str(d)


class Victim:
    """A real process of a given interpreter running a victim script; always killed and reaped."""

    def __init__(self, interp: Interp, script: str, oracle: str, env: dict[str, str] | None = None) -> None:
        self.interp = interp
        self.errlog = tempfile.NamedTemporaryFile(prefix="victim-err-", suffix=".log", delete=False)
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": oracle, "LC_ALL": "C.UTF-8"}
        full_env.update(env or {})
        # A session of its own: its forked copies (our walkers) share its session id, so tests tell
        # them from another test's victim of the same script when tests run in parallel.
        self.proc = subprocess.Popen([interp.path, str(VICTIMS / script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errlog, env=full_env, cwd=tempfile.gettempdir(),
                                     start_new_session=True)
        self.pid = self.proc.pid
        line = self._readline(timeout=20)
        assert line.startswith("ready"), f"victim did not start: {line!r} {self.stderr()}"

    def _readline(self, timeout: float) -> str:
        import selectors

        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise TimeoutError(f"victim {self.pid} did not answer within {timeout}s; stderr: {self.stderr()}")
        finally:
            sel.close()
        return self.proc.stdout.readline().decode()

    def ask(self, command: str, timeout: float = 20) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()
        return json.loads(self._readline(timeout))

    def stderr(self) -> str:
        return Path(self.errlog.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.errlog.close()
        os.unlink(self.errlog.name)


def forked_copies(pid: int, exe: str | None = None) -> list[Any]:
    """Processes forked from ``pid`` (our walkers and their intermediates): its command line, born
    after it, in its session (each victim leads its own, so parallel tests' victims never match)."""
    import psutil

    me = psutil.Process(pid)
    born, cmd, sid = me.create_time(), me.cmdline(), os.getsid(pid)
    out = []
    for p in psutil.process_iter(["pid", "exe"]):
        try:
            if (p.pid != pid and (exe is None or p.info["exe"] == exe) and p.create_time() >= born
                    and os.getsid(p.pid) == sid and p.cmdline() == cmd):
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def no_walker_left(victim_pid: int, exe: str, within: float = 15.0) -> list[Any]:
    """The victim's walkers (its copies: ``forked_copies``) still there, not zombies, after up to
    ``within`` seconds."""
    import psutil

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for p in forked_copies(victim_pid, exe) if p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            return []
        time.sleep(0.2)
    return forked_copies(victim_pid, exe)


def zombies_of(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def run_dirs_of(pid: int) -> list[Path]:
    """introspect's run directories for ``pid`` in our /tmp, made since that process started. Pids
    are reused (pid_max is 32,768 on these machines): a directory a killed CLI, or a hostile test
    victim planting files, left for an earlier process of the same pid is not this process's."""
    started = os.stat(f"/proc/{pid}").st_mtime - 1
    out = []
    for d in Path("/tmp").glob(f"introspect-{pid}-*"):
        try:
            if d.stat().st_mtime >= started:
                out.append(d)
        except OSError:
            pass
    return out


def state_beyond(victim: Victim, key: str, after: int, timeout: float = 10.0) -> dict[str, Any]:
    """The victim's `state` once its counter ``key`` has passed ``after`` (or the last one at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        st: dict[str, Any] = victim.ask("state")
        if st[key] > after or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


@pytest.fixture
def spawn(oracle_path: str) -> Iterator[Any]:
    victims: list[Victim] = []

    def _spawn(interp: Interp, script: str = "busy.py", env: dict[str, str] | None = None) -> Victim:
        v = Victim(interp, script, oracle_path, env)
        victims.append(v)
        return v

    yield _spawn
    for v in victims:
        v.close()


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.stdout)


def introspect(*args: str, timeout: float = 90, cwd: str | None = None) -> Run:
    """Run the real CLI in a subprocess, as a user would."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "introspect", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or tempfile.gettempdir(),
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    took = time.monotonic() - t0
    calllog = os.environ.get("INTROSPECT_TEST_CALLLOG")  # where the suite's time goes (docs/testing.md)
    if calllog:
        with open(calllog, "a") as f:
            f.write(f"{took:.3f}\t{os.environ.get('PYTEST_CURRENT_TEST', '?')}\t{' '.join(args[:2])}\n")
    return Run(proc.returncode, proc.stdout, proc.stderr, took)


VICTIM_DEPS = Path(os.environ.get("INTROSPECT_VICTIM_DEPS", "/opt/introspect/victim-deps"))


def victim_deps(package: str, interp: Interp) -> str:
    """The directory scripts/provision-victim-deps filled with ``package`` for this interpreter's
    version (for a victim's PYTHONPATH), or a skip naming why it is not there: a recorded gap (the
    index has no wheel for that version) or a machine not provisioned."""
    minor = f"{interp.version[0]}.{interp.version[1]}"
    d = VICTIM_DEPS / package / minor
    if (d / ".done").exists():
        return str(d)
    gap = VICTIM_DEPS / package / f"{minor}.nowheel"
    if gap.exists():
        pytest.skip(f"{package} for Python {minor}: {gap.read_text().strip()} (recorded by scripts/provision-victim-deps)")
    pytest.skip(f"{package} for Python {minor} not provisioned in {d}: run scripts/setup")
