"""result.json is written by the target: read with a size bound, and every field the CLI reads
type-checked before use (introspect/channel.py). Wrong shapes are plain AgentErrors naming the
field."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from introspect import channel, errors
from introspect.channel import RunDir, checked_envelope
from introspect.target import Target

OK_TOP = {
    "nonce": "n",
    "ok": True,
    "command": "top",
    "pid": 7,
    "agent_s": 0.1,
    "code": ["loaded", 0.0004],
    "python": "3.12.1",
    "imported": [],
    "result": {"objects": 3, "types": {"dict": 3}, "gc": {}, "scan_s": 0.01},
}


def test_real_shapes_pass() -> None:
    assert checked_envelope(dict(OK_TOP), 7) == OK_TOP
    busy = {"nonce": "n", "ok": False, "error": {"type": "AgentBusy", "message": "m", "frames": []}}
    assert checked_envelope(busy, 7) == busy
    unknown = {
        **OK_TOP,
        "command": "backrefs",
        "result": {"status": "unknown", "query": "X", "names": ["a.B"]},
    }
    assert checked_envelope(unknown, 7) == unknown


@pytest.mark.parametrize(
    "change, field",
    [
        ({"ok": "yes"}, "'ok'"),
        ({"code": ["loaded", "fast"]}, "'code'"),
        ({"imported": [1]}, "'imported'"),
        (
            {"error": {"type": "X", "message": "m", "frames": [["f", "not a line", "fn"]]}},
            "'error'",
        ),
        ({"result": None}, "no result object"),
        ({"result": {"objects": 3, "types": {"dict": "3"}, "gc": {}, "scan_s": 0.01}}, "'types'"),
        ({"result": {"objects": True, "types": {}, "gc": {}, "scan_s": 0.01}}, "'objects'"),
        ({"result": {"objects": 3, "types": {}, "gc": {"frozen": "x"}, "scan_s": 0.01}}, "'gc'"),
        ({"result": {"types": {}, "gc": {}, "scan_s": 0.01}}, "'objects'"),
        ({"command": "backrefs", "result": {"status": "ok", "type": "T"}}, "'found'"),
        ({"command": "snapshot", "result": {"forked": True, "pause_s": "0.001"}}, "'pause_s'"),
    ],
)
def test_wrong_shapes_are_plain_errors(change: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.AgentError) as caught:
        checked_envelope({**OK_TOP, **change}, 7)
    assert field in str(caught.value) and caught.value.exit_code == 11


def test_result_file_is_read_with_a_bound(tmp_path: Path) -> None:
    target = Target(
        pid=os.getpid(),
        name="python",
        exe=sys.executable,
        cmdline=(),
        uid=os.getuid(),
        gid=os.getgid(),
        status="sleeping",
        tracer_pid=0,
        create_time=0.0,
        version=sys.version_info[:2],
        capi_object=None,
        libc_object=None,
        mappings=(),
        same_root=True,
    )
    run = RunDir(target, "n", str(tmp_path))
    (tmp_path / "result.json").write_bytes(b'{"a": "' + b"x" * 2000 + b'"}')
    with pytest.raises(ValueError, match="larger than 1,000 bytes"):
        run.read_json("result.json", 1000)
    assert run.read_json("result.json", channel.RESULT_MAX_BYTES)["a"] == "x" * 2000
    os.symlink(tmp_path / "result.json", tmp_path / "link.json")
    with pytest.raises(OSError):  # never through a link
        run.read_json("link.json", 1000)


def test_sweep_removes_only_dead_clis_run_dirs(tmp_path: Path) -> None:
    """A run dir is a dead CLI's when nobody holds its lock; one whose CLI died before renaming
    cli.lock.new to cli.lock is judged by that file once it is a minute old (never younger: a
    CLI may be between creating it and locking it right now)."""
    import fcntl
    import time

    def run_dir(name: str, lock: str, age_s: float) -> Path:
        d = tmp_path / name
        d.mkdir(mode=0o700)
        f = d / lock
        f.write_bytes(b"")
        then = time.time() - age_s
        os.utime(f, (then, then))
        return d

    dead = run_dir("introspect-11-" + "a" * 16, "cli.lock", 0)
    dead_new = run_dir("introspect-12-" + "b" * 16, "cli.lock.new", 120)
    young_new = run_dir("introspect-13-" + "c" * 16, "cli.lock.new", 1)
    alive = run_dir("introspect-14-" + "d" * 16, "cli.lock", 0)
    alive_new = run_dir("introspect-15-" + "e" * 16, "cli.lock.new", 120)
    neither = tmp_path / ("introspect-16-" + "f" * 16)
    neither.mkdir(mode=0o700)
    not_ours = run_dir("other-17", "cli.lock", 0)
    held = [os.open(d / lock, os.O_RDWR) for d, lock in
            ((alive, "cli.lock"), (alive_new, "cli.lock.new"))]
    try:
        for fd in held:
            fcntl.flock(fd, fcntl.LOCK_EX)
        removed = channel.sweep_run_dirs(str(tmp_path))
    finally:
        for fd in held:
            os.close(fd)
    assert sorted(removed) == sorted([str(dead), str(dead_new)])
    assert not dead.exists() and not dead_new.exists()
    assert young_new.exists() and alive.exists() and alive_new.exists()
    assert neither.exists() and not_ours.exists()
