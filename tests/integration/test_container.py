"""A target in a container (own mount and pid namespaces), inspected from the host by its host pid.

Two kinds of container, made with util-linux's unshare as docker would: one shares our root but
mounts a private /tmp (what the run directory must not miss), one has a root of its own
(pivot_root onto a tmpfs), where the Python may live at a path the host does not have.
Its files are reached through /proc/PID/root; nothing may be left in its /tmp or in ours.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import INTERPS, Interp, introspect, run_dirs_of
from tests.integration.boxed_rig import BOXED, WrappedVictim

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_SYS_ADMIN) to make mount and pid namespaces with unshare"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("pivot_root") is None,
                       reason="unshare/pivot_root (util-linux) not installed: run scripts/setup"),
]

# Private /tmp on the same root: the container's pid 1 is the victim itself.
PRIVATE_TMP = 'mount -t tmpfs tmpfs /tmp && exec "$0" -c "$1"'
# A root of its own: a tmpfs with the system directories bound in, the interpreter's prefix bound
# at /py when PYPREFIX is set (so its path differs from the host's), then pivot_root into it.
NEW_ROOT = r"""set -e
mount -t tmpfs tmpfs /tmp
mkdir /tmp/root && mount -t tmpfs tmpfs /tmp/root && cd /tmp/root
for d in usr lib lib32 lib64 libx32 bin sbin etc opt; do
    if [ -L /$d ]; then ln -s "$(readlink /$d)" $d
    elif [ -d /$d ]; then mkdir $d && mount --rbind /$d $d; fi
done
mkdir py tmp proc old
[ -z "$PYPREFIX" ] || mount --rbind "$PYPREFIX" py
pivot_root . old
exec /bin/sh -c 'mount -t proc proc /proc && umount -l /old && rmdir /old && LD_LIBRARY_PATH="$PYLIB" exec "$0" -c "$1"' "$0" "$1"
"""


def _interp(id_: str) -> Interp:
    found = next((i for i in INTERPS if i.id == id_), None)
    if found is None:
        pytest.skip(f"{id_} is not on this machine (conftest INTERPS): run scripts/setup")
    return found


@pytest.fixture
def boxed() -> Iterator[list[WrappedVictim]]:
    victims: list[WrappedVictim] = []
    yield victims
    for v in victims:
        v.close()


def _private_tmp(interp: Interp) -> WrappedVictim:
    return WrappedVictim(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c", PRIVATE_TMP,
                          interp.path, BOXED.read_text()])


def _new_root(interp: Interp, at_py: bool) -> WrappedVictim:
    """``at_py``: run it as /py/bin/pythonX.Y inside (a path the host lacks), else at its own path."""
    prefix = Path(interp.path).parents[1]
    exe = f"/py/bin/{Path(interp.path).name}" if at_py else interp.path
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYPREFIX": str(prefix) if at_py else "", "PYLIB": "/py/lib" if at_py else ""}
    return WrappedVictim(["unshare", "--mount", "--pid", "--fork", "sh", "-c", NEW_ROOT, exe, BOXED.read_text()], env=env)


def _nothing_left(victim: WrappedVictim) -> None:
    """No run directory in the container's /tmp (as it sees it, and through /proc/PID/root) nor in ours."""
    assert not [n for n in victim.ask()["tmp"] if n.startswith("introspect-")]
    assert not list(Path(f"/proc/{victim.pid}/root/tmp").glob("introspect-*"))
    assert not run_dirs_of(victim.pid)


def _inspect(victim: WrappedVictim, method: str, tmp_path: Path) -> dict[str, Any]:
    run = introspect("top", str(victim.pid), "--json", "-n", "0", "--method", method, "-o", str(tmp_path / "o"), "-v")
    assert "Traceback" not in run.stderr
    assert run.rc == 0, run.stderr
    report: dict[str, Any] = run.json()
    counts = {t["type"]: t["count"] for t in report["types"]}
    assert counts["__main__.Boxed"] == victim.ask()["boxed"]
    return report


@pytest.mark.parametrize(("interp_id", "method"), [("pyenv-3.12", "gdb"), ("debian-3.11", "gdb"), ("sid-3.14", "pep768"),
                                                   ("pyenv-3.12", "ptrace"), ("debian-3.11", "ptrace"), ("sid-3.15", "ptrace")])
def test_private_tmp_and_pid_namespace(boxed: list[WrappedVictim], tmp_path: Path, interp_id: str, method: str) -> None:
    # GIVEN a worker that is pid 1 of its own pid namespace, with a /tmp of its own
    victim = _private_tmp(_interp(interp_id))
    boxed.append(victim)
    assert Path(f"/proc/{victim.pid}/ns/mnt").resolve() != Path("/proc/self/ns/mnt").resolve()
    # WHEN we count its objects from the host, by its host pid
    report = _inspect(victim, method, tmp_path)
    # THEN the counts are its own, the method asked for was used, and nothing is left anywhere:
    # no zombie either (an orphaned walker would be reparented to the victim, its pid 1, which never waits)
    assert report["method"] == method
    assert report["collector"]["path"] == "fork"
    _nothing_left(victim)
    assert _children_after_walk(victim.pid) == ([], [])
    victim.assert_unharmed()


def _children_after_walk(pid: int, within: float = 5.0) -> tuple[list[int], list[int]]:
    """The victim's children still running, and its zombies, once its walker should be gone.

    The CLI kills its walker by the walker's host pid; the walker reports its namespace pid, so
    a CLI that took that number for the host's left the walker running (blocked until its own
    deadline, a copy of the worker's memory held) for about a minute."""
    deadline = time.monotonic() + within
    while True:
        kids = psutil.Process(pid).children()
        alive = [k.pid for k in kids if k.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive, [k.pid for k in kids if k.status() == psutil.STATUS_ZOMBIE]
        time.sleep(0.1)


def test_own_root_python_at_a_path_the_host_lacks(boxed: list[WrappedVictim], tmp_path: Path) -> None:
    # GIVEN a container with a root of its own whose Python is /py/bin/python3.12 (no such file here)
    interp = _interp("pyenv-3.12")
    victim = _new_root(interp, at_py=True)
    boxed.append(victim)
    assert os.readlink(f"/proc/{victim.pid}/exe").startswith("/py/") and not Path("/py").exists()
    # WHEN gdb, then our ptrace injector, inject (symbols and the cave read through /proc/PID/root)
    # THEN the counts are right, nothing left
    assert _inspect(victim, "gdb", tmp_path / "gdb")["method"] == "gdb"
    _nothing_left(victim)
    assert _inspect(victim, "ptrace", tmp_path / "ptrace")["method"] == "ptrace"
    _nothing_left(victim)
    victim.assert_unharmed()


def test_own_root_pep768(boxed: list[WrappedVictim], tmp_path: Path) -> None:
    # GIVEN a 3.14 container with a root of its own, its Python at the same path as on the host
    victim = _new_root(_interp("sid-3.14"), at_py=False)
    boxed.append(victim)
    theirs, ours = os.stat(f"/proc/{victim.pid}/root"), os.stat("/")
    assert (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)
    # WHEN sys.remote_exec drives it (its script path is checked here, opened there)
    assert _inspect(victim, "pep768", tmp_path)["method"] == "pep768"
    # THEN nothing is left: not the run dir there, nor the stand-in here
    _nothing_left(victim)
    victim.assert_unharmed()


def test_own_root_pep768_python_at_a_path_the_host_lacks(boxed: list[WrappedVictim], tmp_path: Path) -> None:
    # GIVEN a 3.14 container whose Python is at /py/bin/python3.14, a path the host lacks (so
    # sys.remote_exec, which opens the binary by the target's path here, cannot drive it)
    victim = _new_root(_interp("sid-3.14"), at_py=True)
    boxed.append(victim)
    assert not Path("/py").exists()
    # WHEN pep768 is forced: our own client reads the binary through /proc/PID/root and writes the
    # request itself; WHEN auto is used: ptrace, which also reads it through /proc/PID/root
    for method, used in (("pep768", "pep768"), ("auto", "ptrace")):
        run = introspect("top", str(victim.pid), "--json", "-v", "--method", method, "-o", str(tmp_path / method))
        # THEN it answers, nothing left
        assert run.rc == 0 and "Traceback" not in run.stderr, run.stderr
        assert run.json()["method"] == used, run.stderr
        assert method != "pep768" or "our own PEP 768 client" in run.stderr
        _nothing_left(victim)
    victim.assert_unharmed()
