"""Another local user cannot redirect or read introspect's run directory, FIFOs and locks (issue
24). The run directory is made with mkdir (never an existing name), 0700, owned by the target's
user; its files with O_EXCL|O_NOFOLLOW; the lock directory must be a real directory of ours.
"Another user" is uid 4242 (setpriv; no account needed), the target runs as root or as nobody."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from introspect import channel, errors, runner
from introspect.target import inspect_target
from tests.conftest import INTERPS, REPO

PY = next((i for i in INTERPS if i.id == "debian-3.11"), INTERPS[0] if INTERPS else None)
OTHER = 4242
pytestmark = [
    pytest.mark.skipif(PY is None, reason="no Python interpreter found to victimise"),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("runuser") is None,
        reason="needs root, setpriv and runuser (util-linux) to act as other users",
    ),
]


def as_other(script: str) -> subprocess.CompletedProcess[str]:
    """A shell script run as uid/gid 4242 with no supplementary groups and no capabilities."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={OTHER}",
            f"--regid={OTHER}",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


@pytest.fixture
def shared() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="introspect-test-local-"))
    d.chmod(0o1777)  # like /tmp: anyone may make entries, only their owner may remove them
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["root", "nobody"])
def victim(request: pytest.FixtureRequest, shared: Path) -> Iterator[int]:
    """A live worker of root or of nobody (its pid)."""
    assert PY is not None
    script = shared / "idle.py"
    shutil.copy(REPO / "tests" / "victims" / "idle.py", script)
    script.chmod(0o644)
    prefix = ["runuser", "-u", "nobody", "--"] if request.param == "nobody" else []
    proc = subprocess.Popen(
        [*prefix, PY.path, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/"
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline().split()[1])
    finally:
        proc.kill()
        proc.wait()


def test_run_dir_fifos_and_files_closed_to_another_user(victim: int) -> None:
    # GIVEN a run directory prepared for a snapshot (the agent, its code, the stream FIFOs)
    target = inspect_target(victim)
    request, _bootstrap = channel.prepare(target, "snapshot", {}, 30.0, fifos=("stream", "control"))
    run = request.run
    try:
        st = os.lstat(run.host)
        assert (
            stat.S_ISDIR(st.st_mode)
            and stat.S_IMODE(st.st_mode) == 0o700
            and st.st_uid == target.uid
        )
        for name in os.listdir(run.host):
            fst = os.lstat(run.host_file(name))
            assert fst.st_uid == target.uid and not fst.st_mode & 0o077, (name, oct(fst.st_mode))
        # WHEN another user tries to list it, read the agent, write the stream, plant a file
        for script in (
            f"ls {run.host}",
            f"cat {run.host_file('core.py')}",
            f"echo x > {run.host_file('stream')}",
            f"ln -s /etc/passwd {run.host_file('result.json')}",
            f"cat {run.host_file('stream')}",
        ):
            out = as_other(script)
            # THEN every attempt is refused by the kernel
            assert out.returncode != 0 and "Permission denied" in out.stderr, (script, out)
        assert not run.exists("result.json")
    finally:
        run.remove()
    assert not os.path.lexists(run.host)


def test_a_name_made_before_us_is_never_used(victim: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN another user who made the run directory's name first (here told the nonce; really it
    # would have to guess 64 random bits): a link to its own directory
    target = inspect_target(victim)
    monkeypatch.setattr(channel.secrets, "token_hex", lambda n: "0123456789abcdef")
    path = f"/tmp/introspect-{victim}-0123456789abcdef"
    bait = tempfile.mkdtemp(prefix="introspect-test-bait-")
    os.chown(bait, OTHER, OTHER)
    try:
        out = as_other(f"ln -s {bait} {path}")
        assert out.returncode == 0, out.stderr
        # WHEN introspect prepares a run THEN a plain refusal, nothing written through the link
        with pytest.raises(errors.AccessDenied, match="already exists"):
            channel.prepare(target, "top", {}, 30.0)
        assert os.listdir(bait) == [] and os.path.islink(path)
    finally:
        os.unlink(path)
        shutil.rmtree(bait, ignore_errors=True)


def test_lock_directory_of_another_user_is_refused(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the lock directory's name taken by another user: a link to its directory, or its own
    bait = shared / "bait"
    for plant in (f"mkdir {bait} && ln -s {bait} {shared}/locks", f"mkdir {shared}/locks"):
        out = as_other(plant)
        assert out.returncode == 0, out.stderr
        monkeypatch.setattr(runner, "LOCK_DIR", str(shared / "locks"))
        # WHEN introspect (root) takes its per-target lock THEN a plain refusal naming the fix
        with pytest.raises(errors.AccessDenied, match="not a directory of ours"):
            runner._TargetLock(os.getpid())
        assert not bait.exists() or os.listdir(bait) == []
        as_other(f"rm -rf {shared}/locks {bait}")
