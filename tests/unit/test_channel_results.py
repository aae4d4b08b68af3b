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
