"""Bad input and hostile conditions: a non-zero exit within seconds, one plain paragraph naming the
cause and the fix, no traceback, and the victim left exactly as it was."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from introspect import errors
from tests.conftest import INTERPS, REPO, Interp, Run, Victim, introspect, run_dirs_of
from tests.integration.boxed_rig import BOXED, WrappedVictim, proc_state

PY = next((i for i in INTERPS if i.id == "debian-3.11"), INTERPS[0] if INTERPS else None)
pytestmark = pytest.mark.skipif(PY is None, reason="no Python interpreter found to victimise")


def _plain(run, rc: int, *words: str) -> None:
    assert run.rc == rc, (run.rc, run.stderr)
    assert "Traceback" not in run.stderr
    for w in words:
        assert w in " ".join(run.stderr.split()), (w, run.stderr)
    assert run.seconds < 15


def test_no_such_pid(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    _plain(introspect("top", str(proc.pid), "-o", str(tmp_path)), 3, "no such process")


def test_pid_1_refused(tmp_path: Path) -> None:
    _plain(introspect("top", "1", "-o", str(tmp_path)), 6, "PID 1")


def test_not_python(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        _plain(introspect("top", str(proc.pid), "-o", str(tmp_path)), 4, "not a CPython interpreter")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_non_python_binary_named_python3(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    proc = subprocess.Popen([str(fake), "60"])
    try:
        _plain(introspect("top", str(proc.pid), "-o", str(tmp_path / "o")), 4, "not a CPython interpreter")
    finally:
        proc.kill()
        proc.wait()


def test_zombie(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.02)
    try:
        _plain(introspect("top", str(proc.pid), "-o", str(tmp_path)), 6, "zombie")
    finally:
        proc.wait()


def test_stopped(spawn, tmp_path: Path) -> None:
    victim = spawn(PY)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        _plain(introspect("top", str(victim.pid), "-o", str(tmp_path)), 6, "stopped", f"kill -CONT {victim.pid}")
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    assert victim.ask("state")["errors"] == []


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed: run scripts/setup")
def test_already_traced(spawn, tmp_path: Path) -> None:
    victim = spawn(PY)
    tracer = subprocess.Popen(["strace", "-f", "-o", "/dev/null", "-p", str(victim.pid)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{victim.pid}/status") as f:
                if f"TracerPid:\t{tracer.pid}" in f.read():
                    break
            time.sleep(0.05)
        _plain(introspect("top", str(victim.pid), "-o", str(tmp_path)), 6, f"traced by pid {tracer.pid} (strace)")
    finally:
        tracer.terminate()
        tracer.wait(10)
    assert victim.ask("state")["errors"] == []


def test_unwritable_output(spawn, tmp_path: Path) -> None:
    victim = spawn(PY)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = ro / "sub"
    if os.geteuid() == 0:
        target = Path("/proc/introspect-cannot-write-here")
    _plain(introspect("top", str(victim.pid), "-o", str(target)), 10, "cannot write results")
    assert victim.ask("state")["errors"] == []


@pytest.mark.parametrize("path", ["--in-process", "--fork"])
def test_unwritable_state_directory(spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    # growth keeps its baselines in the state directory: a file where it should be is a plain error
    victim = spawn(PY)
    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    _plain(introspect("growth", str(victim.pid), path, "-o", str(tmp_path / "out")), 10, "cannot keep the growth baseline")
    assert victim.ask("state")["errors"] == []


def test_target_dies_mid_run(spawn, tmp_path: Path) -> None:
    # An idle-but-unparkable victim: its main thread spins in C (no safe point, not in a syscall),
    # so our request waits; we kill it and the CLI must say so at once, not after --timeout.
    code = "import os,sys\nprint('ready %d' % os.getpid(), flush=True)\nwhile True: pass\n"
    script = tmp_path / "spin.py"
    script.write_text(code)
    proc = subprocess.Popen([PY.path, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(3600)"], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
    cli = subprocess.Popen([sys.executable, "-m", "introspect", "top", str(proc.pid), "--timeout", "60", "-o", str(tmp_path / "o"),
                            "--method", "gdb"], stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        # time.sleep parks in clock_nanosleep, so the parked-thread path may answer first; either
        # way the CLI must finish promptly once the target is gone.
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        _, err = cli.communicate(timeout=20)
        assert time.monotonic() - t0 < 10
        assert "Traceback" not in err
        # 8: it died while introspect worked on it; 3: under load the CLI first looked after the kill
        # ("no such process"); either names the cause truthfully
        assert cli.returncode in (0, 3, 8), err
        if cli.returncode == 8:
            assert "exited" in err
        if cli.returncode == 3:
            assert "no such process" in err
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_unknown_command_line(tmp_path: Path) -> None:
    run = introspect("top", "not-a-pid")
    assert run.rc == 2 and "Traceback" not in run.stderr


def test_two_at_once_both_succeed(spawn, tmp_path: Path) -> None:
    victim = spawn(PY)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    clis = [subprocess.Popen([sys.executable, "-m", "introspect", cmd, str(victim.pid), "-o", str(tmp_path / cmd)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            for cmd in ("top", "growth")]
    for cli in clis:
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
    assert victim.ask("state")["errors"] == [] and victim.stderr() == ""


def test_idle_worker_answers(spawn, tmp_path: Path) -> None:
    # GIVEN a worker whose only thread is parked in os.read (an idle Celery prefork child)
    victim = spawn(PY, "idle.py")
    # WHEN we ask for its types
    t0 = time.monotonic()
    run = introspect("top", str(victim.pid), "--json", "-v", "-n", "0", "-o", str(tmp_path))
    # THEN it answers within 10 s, through the parked-thread path, and the worker still works
    assert run.rc == 0, run.stderr
    assert time.monotonic() - t0 < 10
    assert "parked in read()" in run.stderr
    assert {t["type"]: t["count"] for t in run.json()["types"]}["__main__.Job"] == 77
    assert victim.ask("job") == {"jobs": 77}
    assert victim.stderr() == ""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser to start a victim as nobody")
def test_other_user_worker(tmp_path: Path) -> None:
    # GIVEN a worker running as an unprivileged user, introspect as root
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="introspect-test-other-user-"))  # pytest's tmp is 0700 root
    shared.chmod(0o755)
    script = shared / "idle.py"
    shutil.copy(Path(__file__).resolve().parents[1] / "victims" / "idle.py", script)
    script.chmod(0o644)
    proc = subprocess.Popen(["runuser", "-u", "nobody", "--", PY.path, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline().split()[1])
        # WHEN we look inside it
        run = introspect("top", str(pid), "--json", "-n", "0", "-o", str(tmp_path / "o"))
        # THEN it works, and our run directory was private to the worker's user and is gone
        assert run.rc == 0, run.stderr
        assert {t["type"]: t["count"] for t in run.json()["types"]}["__main__.Job"] == 77
        assert not run_dirs_of(pid)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(shared, ignore_errors=True)


def test_remote_debug_disabled_is_refused_not_bypassed(spawn, tmp_path: Path) -> None:
    py314 = next((i for i in INTERPS if i.version >= (3, 14)), None)
    if py314 is None:
        pytest.skip("no CPython 3.14+ here: run scripts/setup to provision it")
    victim = spawn(py314, env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    run = introspect("top", str(victim.pid), "-o", str(tmp_path / "a"))
    _plain(run, 9, "remote debugging disabled", "--method gdb")
    # auto refuses even though ptrace could run: the target's owner turned debuggers away; asked
    # for by name, ptrace and gdb run
    for method in ("ptrace", "gdb"):
        run = introspect("top", str(victim.pid), "--method", method, "-o", str(tmp_path / method))
        assert run.rc == 0, run.stderr
    assert victim.ask("state")["errors"] == []


# -- permission denied, each cause named with its fix; gdb missing ----------------------------------
# Each ends with the victim running, not stopped (its /proc/PID/stat state) and unharmed.

NOBODY = "nobody"


def _cli(args: list[str], *, prefix: tuple[str, ...] | list[str] = (), python: str = sys.executable,
         env: dict[str, str] | None = None, cwd: str | None = None) -> Run:
    """The real CLI under a wrapper (runuser, setpriv) and/or another environment."""
    t0 = time.monotonic()
    proc = subprocess.run([*prefix, python, "-m", "introspect", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd or "/", env=env if env is not None else {**os.environ, "PYTHONPATH": str(REPO)})
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def _refused(run: Run, exc: type[errors.IntrospectError], *words: str) -> None:
    _plain(run, exc.exit_code, *words)
    assert errors.EXIT_CODES[run.rc].startswith("permission denied" if exc is errors.AccessDenied else "injection failed")


def _spawned_unharmed(victim: Victim) -> None:
    assert proc_state(victim.pid) in "RSD", proc_state(victim.pid)
    assert victim.ask("state")["errors"] == [] and victim.stderr() == ""


class Nobody:
    """Victims and the CLI run as nobody, from a world-readable scratch directory."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.victims: list[WrappedVictim] = []
        self.script = shared / "boxed.py"
        shutil.copy(BOXED, self.script)
        self.script.chmod(0o644)
        self._n = 0

    def victim(self, interp: Interp, *argv: str) -> WrappedVictim:
        probe = subprocess.run(["runuser", "-u", NOBODY, "--", interp.path, "-c", "pass"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"{NOBODY} cannot run {interp.path}: {probe.stderr.strip()}")
        v = WrappedVictim(["runuser", "-u", NOBODY, "--", interp.path, str(self.script), *argv])
        self.victims.append(v)
        return v

    def out(self) -> str:
        """A fresh output directory nobody may create (-o DIR)."""
        self._n += 1
        d = self.shared / f"out{self._n}"
        d.mkdir()
        shutil.chown(d, NOBODY)
        return str(d / "o")

    def cli(self, *args: str) -> Run:
        python, pythonpath = _nobody_python()
        return _cli([*args], prefix=["runuser", "-u", NOBODY, "--"], python=python,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": pythonpath, "LC_ALL": "C.UTF-8"})


def _nobody_python() -> tuple[str, str]:
    """An interpreter of the venv's version that nobody may run, and a PYTHONPATH with introspect and
    its dependencies (the venv's base interpreter may sit under root's 0700 home)."""
    import sysconfig

    pythonpath = f"{REPO}:{sysconfig.get_paths()['purelib']}"
    want = sys.version_info[:2]
    candidates = [i.path for i in INTERPS if i.version == want] + [f"/usr/bin/python{want[0]}.{want[1]}", sys.executable]
    for exe in dict.fromkeys(candidates):
        probe = subprocess.run(["runuser", "-u", NOBODY, "--", exe, "-c", "import introspect.cli, psutil, elftools"],
                               capture_output=True, text=True, cwd="/",
                               env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": pythonpath})
        if probe.returncode == 0:
            return exe, pythonpath
    pytest.skip(f"no Python {want[0]}.{want[1]} that {NOBODY} may run with introspect's dependencies "
                f"(tried {', '.join(dict.fromkeys(candidates))})")


@pytest.fixture
def nobody() -> Iterator[Nobody]:
    import tempfile

    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser (util-linux) to run victims and the CLI as nobody")
    shared = Path(tempfile.mkdtemp(prefix="introspect-test-nobody-"))  # pytest's tmp is 0700 root
    shared.chmod(0o755)
    rig = Nobody(shared)
    try:
        yield rig
    finally:
        for v in rig.victims:
            v.close()
        shutil.rmtree(shared, ignore_errors=True)


def test_non_dumpable_same_user_is_refused(nobody: Nobody) -> None:
    # GIVEN two workers of the same user, nobody; the second made itself non-dumpable
    plain = nobody.victim(PY)
    sealed = nobody.victim(PY, "nodump")
    # WHEN nobody's introspect looks at each
    run = nobody.cli("top", str(plain.pid), "--json", "-n", "0", "-o", nobody.out())
    # THEN the dumpable one answers (same user may ptrace: the refusal below is not about users)
    assert run.rc == 0, run.stderr
    assert {t["type"]: t["count"] for t in run.json()["types"]}["__main__.Boxed"] == plain.ask()["boxed"]
    # AND the non-dumpable one is refused, the cause named, sudo as the fix
    run = nobody.cli("top", str(sealed.pid), "-o", nobody.out())
    _refused(run, errors.AccessDenied, "not dumpable", "PR_SET_DUMPABLE", "sudo -E")
    plain.assert_unharmed()
    sealed.assert_unharmed()


def test_non_dumpable_root_may_attach(nobody: Nobody, tmp_path: Path) -> None:
    # GIVEN a non-dumpable worker running as nobody; WHEN root (CAP_SYS_PTRACE) looks inside
    sealed = nobody.victim(PY, "nodump")
    run = _cli(["top", str(sealed.pid), "--json", "-n", "0", "-o", str(tmp_path / "o")])
    # THEN it works: CAP_SYS_PTRACE is what non-dumpable asks for
    assert run.rc == 0 and "Traceback" not in run.stderr, run.stderr
    assert {t["type"]: t["count"] for t in run.json()["types"]}["__main__.Boxed"] == sealed.ask()["boxed"]
    sealed.assert_unharmed()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed: run scripts/setup")
def test_root_without_cap_sys_ptrace_is_refused(nobody: Nobody, tmp_path: Path) -> None:
    # GIVEN a worker of another user, and introspect as root with CAP_SYS_PTRACE dropped (a container)
    victim = nobody.victim(PY)
    drop = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace", "--"]
    run = _cli(["top", str(victim.pid), "-o", str(tmp_path / "o")], prefix=drop)
    # THEN refused: the missing capability named, the docker flag and sudo said
    _refused(run, errors.AccessDenied, "CAP_SYS_PTRACE", "--cap-add=SYS_PTRACE", "sudo -E", "nobody (uid")
    victim.assert_unharmed()


def test_other_user_without_privileges_is_refused(nobody: Nobody, spawn) -> None:
    # GIVEN a worker of root, and introspect as nobody
    victim = spawn(PY)
    run = nobody.cli("top", str(victim.pid), "-o", nobody.out())
    # THEN refused: both users named, sudo said
    _refused(run, errors.AccessDenied, "runs as root (uid 0)", f"introspect as {NOBODY} (uid", "sudo -E")
    _spawned_unharmed(victim)


YAMA = "/proc/sys/kernel/yama/ptrace_scope"


@pytest.mark.skipif(not os.path.exists(YAMA), reason=f"kernel has no Yama LSM: {YAMA} absent")
def test_yama_ptrace_scope_1_is_named(nobody: Nobody) -> None:
    # GIVEN ptrace_scope 1 (only an ancestor may attach), a worker of nobody and nobody's introspect,
    # which is not its ancestor
    with open(YAMA) as f:
        saved = f.read().strip()
    victim = nobody.victim(PY)
    try:
        with open(YAMA, "w") as f:
            f.write("1")
        run = nobody.cli("top", str(victim.pid), "-o", nobody.out())
    finally:
        with open(YAMA, "w") as f:
            f.write(saved)
    # THEN refused, the sysctl named with its fix
    _refused(run, errors.AccessDenied, "kernel.yama.ptrace_scope is 1", "sysctl kernel.yama.ptrace_scope=0")
    victim.assert_unharmed()


@pytest.fixture
def no_gdb_env(tmp_path: Path) -> dict[str, str]:
    """Our environment with a PATH that holds no gdb (only an empty directory)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return {**os.environ, "PATH": str(empty), "PYTHONPATH": str(REPO)}


def test_gdb_missing_is_said(spawn, tmp_path: Path, no_gdb_env: dict[str, str]) -> None:
    # GIVEN a 3.8-3.13 worker and no gdb on PATH; WHEN gdb is asked for (auto uses our own injector)
    victim = spawn(PY)
    run = _cli(["top", str(victim.pid), "--method", "gdb", "-o", str(tmp_path / "o")], env=no_gdb_env)
    # THEN a plain message: gdb is needed, and how to install it
    _refused(run, errors.InjectionFailed, "gdb is not installed", "apt-get install gdb")
    _spawned_unharmed(victim)


def test_gdb_missing_314_auto_works(spawn, tmp_path: Path, no_gdb_env: dict[str, str]) -> None:
    py314 = next((i for i in INTERPS if i.version >= (3, 14)), None)
    if py314 is None:
        pytest.skip("no CPython 3.14+ here: run scripts/setup to provision it")
    # GIVEN a 3.14 worker and no gdb on PATH; WHEN --method auto
    victim = spawn(py314)
    run = _cli(["top", str(victim.pid), "--json", "--method", "auto", "-o", str(tmp_path / "o")], env=no_gdb_env)
    # THEN it works without gdb, through our own injector
    assert run.rc == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.json()["method"] == "ptrace"
    _spawned_unharmed(victim)


def _small_anon_maps(pid: int) -> set[str]:
    """Anonymous mappings of 64 KiB or less (where gdb's bootstrap page would be), by address range."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) < 6 and end - start <= 65536:
            out.add(fields[0])
    return out


@pytest.mark.skipif(not __import__("introspect.inject.gdb", fromlist=["_amd_avx512"])._amd_avx512(),
                    reason="not an AMD CPU with AVX-512: the gdb register trim is not what protects the target here")
def test_failed_register_trim_stops_before_any_call(spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN gdb cannot produce its target description (a fault put in its script on purpose)
    from introspect.inject import gdb as gdb_mod
    from introspect.runner import run_agent

    monkeypatch.setattr(gdb_mod, "_TRIM_TDESC", gdb_mod._TRIM_TDESC.replace("maint print xml-tdesc", "maint print no-such-tdesc"))
    victim = spawn(PY)
    before = victim.ask("state")
    pages_before = _small_anon_maps(victim.pid)
    # WHEN introspect injects through gdb
    with pytest.raises(errors.InjectionFailed, match="AVX-512") as caught:
        run_agent(victim.pid, "top", {}, method="gdb", timeout=10)
    # THEN it refused, naming the way out, and gdb called nothing in the target: no page mapped,
    # no run dir left, the victim running as it was
    assert "gdb 14" in (caught.value.help or "")
    assert _small_anon_maps(victim.pid) <= pages_before
    assert not list(Path(f"/proc/{victim.pid}/root/tmp").glob(f"introspect-{victim.pid}-*"))
    assert proc_state(victim.pid) in ("R", "S")
    after = victim.ask("state")
    assert after["modules"] == before["modules"] and after["errors"] == [] and victim.stderr() == ""
