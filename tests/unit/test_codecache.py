"""The agent-code cache (introspect/codecache.py) and the bootstrap that uses it, here.

Code shipped to a target is made by the CLI's interpreter or by a trusted (root-owned) interpreter
binary, never by a target. Every interpreter kind and hostile targets are covered by
tests/integration/test_agent_code.py and test_hostile_code.py.
"""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from introspect import codecache
from introspect.agent import agent_files
from introspect.channel import Request, RunDir, bootstrap_source
from introspect.target import Target

ROOT_OWNED_PYTHON = codecache.untrusted(sys.executable) is None
X = [("x.py", b"x = 1\n")]


def _target(capi: Path, exe: str = sys.executable) -> Target:
    return Target(
        pid=os.getpid(),
        name="python",
        exe=exe,
        cmdline=(),
        uid=os.getuid(),
        gid=os.getgid(),
        status="sleeping",
        tracer_pid=0,
        create_time=0.0,
        version=sys.version_info[:2],
        capi_object=str(capi),
        libc_object=None,
        mappings=(),
        same_root=True,
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "introspect" / codecache.CACHE_NAME


def test_split_takes_the_header_after_the_magic_number() -> None:
    data = codecache.local_header() + b"code"
    assert codecache.split(data) == (codecache.local_header(), b"code")
    assert (
        codecache.local_header()[2:4] == b"\r\n"
    )  # the magic number ends in CR LF: the header's end is after it
    assert codecache.split(b"\x00\x01\r\nno end of header") is None
    assert codecache.split(codecache.local_header() + b"x" * codecache.MAX_BYTES) is None


def test_untrusted_names_the_reason(tmp_path: Path) -> None:
    # pytest's tmp_path lies under /tmp, which everyone may write: nothing in it is trusted
    f = tmp_path / "python3"
    f.write_bytes(b"")
    assert "writable by group or others" in str(
        codecache.untrusted(str(f))
    ) or "owned by uid" in str(codecache.untrusted(str(f)))
    assert "No such file" in str(codecache.untrusted(str(tmp_path / "gone")))
    assert codecache.untrusted("/") is None


@pytest.mark.skipif(
    not ROOT_OWNED_PYTHON,
    reason=f"{sys.executable} is not root-owned here: no trusted compiler to test",
)
def test_a_trusted_binary_compiles_what_the_bootstrap_loads(tmp_path: Path) -> None:
    data, how = codecache.compile_with(sys.executable, agent_files("top"))
    assert data is not None and how == sys.executable
    header, code = codecache.split(data)  # type: ignore[misc]
    assert header == codecache.local_header()
    # one code object per file, each under its own name, as the CLI's own compile makes them
    names = [c.co_filename for c in marshal.loads(code)]
    assert names == [
        "<introspect>/core.py", "<introspect>/objects.py", "<introspect>/sizes.py", "<introspect>/run.py"
    ]


def test_the_local_compile_makes_one_code_object_per_file() -> None:
    files = agent_files("backrefs")
    data = codecache._local(files)
    assert data is not None
    header, code = codecache.split(data)  # type: ignore[misc]
    loaded = marshal.loads(code)
    assert type(loaded) is tuple
    assert [c.co_filename for c in loaded] == [f"<introspect>/{n}" for n, _ in files]
    assert [n for n, _ in files] == ["core.py", "objects.py", "backrefs.py", "chains.py", "run.py"]
    assert codecache.pack(files).split(b"\n", 1)[0] == " ".join(
        f"{n} {len(d)}" for n, d in files
    ).encode()


DEBIAN = "/usr/bin/python3.11"


@pytest.mark.skipif(
    not os.path.exists(DEBIAN), reason=f"{DEBIAN} (Debian's statically linked build) not installed"
)
def test_a_binary_that_reads_an_untrusted_file_is_not_used(tmp_path: Path) -> None:
    # GIVEN a copy of an interpreter whose standard library is the real one (links) but for its
    # encodings package, a copy under /tmp that anyone could have written (read at every start-up)
    real = Path("/usr/lib/python3.11")
    lib = tmp_path / "lib" / "python3.11"
    lib.mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != "encodings":
            (lib / entry.name).symlink_to(entry)
    shutil.copytree(real / "encodings", lib / "encodings")
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "python3.11"
    shutil.copy(DEBIAN, exe)
    # WHEN it is asked to compile THEN its output is refused, the untrusted file named
    data, why = codecache.compile_with(str(exe), X)
    assert data is None and "encodings" in why, why
    # AND the real one, whose files only root could have made, is used
    data, why = codecache.compile_with(DEBIAN, X)
    assert data is not None, why


def test_the_cache_is_ours_alone(tmp_path: Path, cache: Path) -> None:
    data = codecache.local_header() + b"kept"
    assert codecache._store("k", data)
    assert codecache._read_cached("k") == data
    (cache / "k.code").chmod(0o666)  # writable by others: never read
    assert codecache._read_cached("k") is None
    (cache / "k.code").chmod(0o600)
    cache.chmod(0o755)  # a directory others may read or write: neither read nor written
    assert codecache._read_cached("k") is None and not codecache._store("k2", data)
    cache.chmod(0o700)
    os.symlink(cache / "k.code", cache / "link.code")  # links are not followed
    assert codecache._read_cached("link") is None


@pytest.mark.skipif(
    not (os.path.exists(DEBIAN) and codecache.untrusted(DEBIAN) is None),
    reason=f"{DEBIAN} not installed, or not root-owned",
)
def test_for_target_other_interpreter_made_by_its_binary_then_cached(
    tmp_path: Path, cache: Path
) -> None:
    from introspect.target import inspect_target

    # the CLI's own interpreter file: compiled here, nothing kept
    data, how = codecache.for_target(_target(Path(sys.executable)), X)
    assert data is not None and "CLI's Python" in how and not cache.exists()
    # another interpreter's process: its (root-owned) binary makes the code, which is kept
    proc = subprocess.Popen([DEBIAN, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        target = inspect_target(proc.pid)
        if os.path.samefile(target.exe, sys.executable):
            pytest.skip(f"{DEBIAN} is the CLI's own interpreter here")
        data, how = codecache.for_target(target, X)
        assert data is not None and how == f"made by {target.exe}", how
        assert len(list(cache.glob("*.code"))) == 1
        assert codecache.for_target(target, X) == (data, f"cached, made by {target.exe}")
    finally:
        proc.kill()
        proc.wait()


def test_prune_keeps_the_newest(cache: Path) -> None:
    for i in range(codecache.KEEP + 5):
        assert codecache._store(f"k{i:03d}", codecache.local_header() + b"c")
        os.utime(cache / f"k{i:03d}.code", (1000 + i, 1000 + i))
    codecache._prune(str(cache))
    names = sorted(p.name for p in cache.iterdir() if p.suffix == ".code")
    assert len(names) == codecache.KEEP and names[0] == "k005.code"


def test_unwritable_cache_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the directory should be
    assert not codecache._store("k", codecache.local_header() + b"c")


def _bootstrap(tmp_path: Path, files: list[tuple[str, bytes]], code: bytes | None) -> str:
    run = RunDir(_target(tmp_path / "x.so"), "nonce", str(tmp_path))
    request = Request("top", {}, 30.0, run)
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    code_path = ""
    if code is not None:
        (tmp_path / "agent.code").write_bytes(code)
        code_path = str(tmp_path / "agent.code")
    paths = [(str(tmp_path / name), f"<introspect>/{name}") for name, _ in files]
    return bootstrap_source(paths, request, code_path)


# Two files run in order in one namespace: the second sees what the first defined.
AGENT = [
    ("first.py", b"import gc\nwhere = __file__\n"),
    ("last.py", b"print(_LOADED[0], where, _GC, gc.isenabled(), REQUEST['command'])\n"),
]


def test_bootstrap_compiles_and_gives_nothing_back_then_loads(tmp_path: Path) -> None:
    text = _bootstrap(tmp_path, AGENT, None)
    out = subprocess.run(
        [sys.executable, "-c", text + "\nimport gc\nprint('after', gc.isenabled())\n"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "compiled <introspect>/ True False top\nafter True\n", out.stderr
    # what it compiled stayed in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.py", "last.py"]
    # code made here loads, with no compile (the sources are not even read: here they are gone)
    text = _bootstrap(tmp_path, AGENT, codecache._local(AGENT))
    for name, _ in AGENT:
        (tmp_path / name).unlink()
    out = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, timeout=30)
    assert out.stdout == "loaded <introspect>/ True False top\n", out.stderr


# a code file of our header holding one code object, not the tuple of the files (an older CLI's)
ONE = codecache.local_header() + marshal.dumps(compile("print('not run')", "<introspect>/x", "exec"))


@pytest.mark.parametrize("bad", [b"", b"\x00\x00\r\n 30b07f0 \nxx", None, ONE])
def test_bootstrap_never_loads_a_foreign_or_damaged_file(tmp_path: Path, bad: bytes | None) -> None:
    code = bad if bad is not None else codecache.local_header() + b"\xff" * 32
    text = _bootstrap(tmp_path, AGENT, code)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gc; gc.disable()\n" + text + "\nprint('after', gc.isenabled())\n",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # a collector the target had off stays off, and the agent is told so
    assert out.stdout == "compiled <introspect>/ False False top\nafter False\n", out.stderr
