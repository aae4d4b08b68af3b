"""The agent-code cache (introspect/codecache.py) and the bootstrap that uses it, on this interpreter.

Every other interpreter kind is covered by tests/integration/test_agent_code.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from introspect import codecache
from introspect.channel import Request, RunDir, bootstrap_source
from introspect.target import Target


def _target(capi: Path) -> Target:
    return Target(pid=os.getpid(), name="python", exe=sys.executable, cmdline=(), uid=os.getuid(), gid=os.getgid(),
                  status="sleeping", tracer_pid=0, create_time=0.0, version=sys.version_info[:2], capi_object=str(capi),
                  libc_object=None, mappings=(), same_root=True)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "introspect" / "code"


def test_split_takes_the_header_after_the_magic_number() -> None:
    data = codecache.local_header() + b"code"
    assert codecache.split(data) == (codecache.local_header(), b"code")
    assert codecache.local_header()[2:4] == b"\r\n"  # the magic number ends in CR LF: the header's end is after it
    assert codecache.split(b"\x00\x01\r\nno end of header") is None
    assert codecache.split(codecache.local_header() + b"x" * codecache.MAX_BYTES) is None


def test_first_the_local_compile_then_what_was_kept(tmp_path: Path, cache: Path) -> None:
    capi = tmp_path / "libpython.so"
    capi.write_bytes(b"\x7fELF")
    target = _target(capi)
    code, key = codecache.for_target(target, b"x = 1\n")
    assert key is not None and code is not None and code.startswith(codecache.local_header())
    assert codecache.store(key, codecache.local_header() + b"kept")
    assert codecache.for_target(target, b"x = 1\n") == (codecache.local_header() + b"kept", key)
    # another source, another interpreter file (replaced: new mtime, size), another user: other keys
    assert codecache.for_target(target, b"x = 2\n")[1] != key
    other = _target(capi)
    object.__setattr__(other, "uid", os.getuid() + 1)
    assert codecache.for_target(other, b"x = 1\n")[1] != key
    capi.write_bytes(b"\x7fELF and more")
    assert codecache.for_target(target, b"x = 1\n")[1] != key
    assert not codecache.store(key, b"no header")  # not shaped like a dump: not kept


def test_no_key_without_the_interpreter_file(tmp_path: Path, cache: Path) -> None:
    code, key = codecache.for_target(_target(tmp_path / "gone.so"), b"x = 1\n")
    assert key is None and code is not None  # still the local compile; nothing will be kept
    assert not cache.exists()


def test_prune_keeps_the_newest(cache: Path) -> None:
    for i in range(codecache.KEEP + 5):
        assert codecache.store(f"k{i:03d}", codecache.local_header() + b"c")
        os.utime(cache / f"k{i:03d}.code", (1000 + i, 1000 + i))
    codecache._prune(str(cache))
    names = sorted(p.name for p in cache.iterdir() if p.suffix == ".code")
    assert len(names) == codecache.KEEP and names[0] == "k005.code"


def test_unwritable_cache_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the directory should be
    assert not codecache.store("k", codecache.local_header() + b"c")


def _bootstrap(tmp_path: Path, source: str, code: bytes | None, dump: bool) -> tuple[str, Path]:
    run = RunDir(_target(tmp_path / "x.so"), "nonce", str(tmp_path))
    request = Request("top", {}, 30.0, run)
    (tmp_path / "agent.py").write_text(source)
    code_path = ""
    if code is not None:
        (tmp_path / "agent.code").write_bytes(code)
        code_path = str(tmp_path / "agent.code")
    dump_path = tmp_path / "agent.code.new"
    return bootstrap_source(str(tmp_path / "agent.py"), request, code_path, str(dump_path) if dump else ""), dump_path


AGENT = "import gc\nprint(_LOADED[0], __file__, _GC, gc.isenabled(), REQUEST['command'])\n"


def test_bootstrap_compiles_dumps_then_loads(tmp_path: Path) -> None:
    text, dump = _bootstrap(tmp_path, AGENT, None, dump=True)
    out = subprocess.run([sys.executable, "-c", text + "\nimport gc\nprint('after', gc.isenabled())\n"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "compiled <introspect>/agent.py True False top\nafter True\n", out.stderr
    assert codecache.split(dump.read_bytes())[0] == codecache.local_header()
    # the dump loads, with no compile (the source is not even read: here it is gone)
    kept = dump.read_bytes()
    dump.unlink()
    text, dump = _bootstrap(tmp_path, AGENT, kept, dump=True)
    (tmp_path / "agent.py").unlink()
    out = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, timeout=30)
    assert out.stdout == "loaded <introspect>/agent.py True False top\n", out.stderr
    assert not dump.exists()


@pytest.mark.parametrize("bad", [b"", b"\x00\x00\r\n 30b07f0 \nxx", None])
def test_bootstrap_never_loads_a_foreign_or_damaged_file(tmp_path: Path, bad: bytes | None) -> None:
    code = bad if bad is not None else codecache.local_header() + b"\xff" * 32
    text, _ = _bootstrap(tmp_path, AGENT, code, dump=False)
    out = subprocess.run([sys.executable, "-c", "import gc; gc.disable()\n" + text + "\nprint('after', gc.isenabled())\n"],
                         capture_output=True, text=True, timeout=30)
    # a collector the target had off stays off, and the agent is told so
    assert out.stdout == "compiled <introspect>/agent.py False False top\nafter False\n", out.stderr
