"""The agent's code, compiled once per interpreter instead of once per run.

Compiling the agent's source is most of what the target pays for a command apart from the work
itself: 4-7 ms for the 35 KB a forked snapshot ships (3.8-3.13, measured), more than the fork at
a million objects; loading the same code with ``marshal.loads`` takes 0.1-0.2 ms. So the
bootstrap (channel.bootstrap_source) looks for ``agent.code`` in the run dir first: a header
naming the bytecode it holds, then the marshalled module code. It loads that only if the header
is exactly the target's own (its bytecode magic number, ``sys.hexversion`` and ``sys.abiflags``:
what makes CPython itself trust a ``.pyc``); anything else, a missing or damaged file included,
and it compiles the source as before.

Where ``agent.code`` comes from:
  - the CLI compiles it when its own interpreter is the target's version (the header says which);
  - else a target that had to compile writes what it compiled to ``agent.code.new`` (before it
    runs it, about 0.2 ms, only when asked), and the CLI keeps that in its cache
    ($XDG_CACHE_HOME/introspect/code, private) for the next run on the same interpreter.
The cache key is the agent's source, the interpreter's file (libpython or the executable, by
path, device, inode, size and mtime) and the target's uid: code one process wrote is only ever
loaded into processes of the same user running the same interpreter file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import sys
import tempfile

from introspect.target import Target

CODE_FILE = "agent.code"  # what the bootstrap loads, if its header is the target's own
DUMP_FILE = "agent.code.new"  # what a target that compiled writes, when asked
AGENT_NAME = "<introspect>/agent.py"  # the agent's code objects' file name: one name for every run
MAX_BYTES = 4 << 20  # a dump larger than this is not ours
KEEP = 64  # cached files kept (each ~20-45 KB); the oldest go first


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "introspect", "code")


def local_header() -> bytes:
    """The header this interpreter's bytecode carries (the bootstrap builds the target's the same way)."""
    return importlib.util.MAGIC_NUMBER + f" {sys.hexversion:x} {getattr(sys, 'abiflags', '?')}\n".encode()


def split(data: bytes) -> tuple[bytes, bytes] | None:
    """(header, marshalled code) of a code file, or None if it is not shaped like one."""
    nl = data.find(b"\n", 4, 64)  # after the magic number, which ends in b"\r\n" itself
    if nl < 0 or len(data) > MAX_BYTES:
        return None
    return data[:nl + 1], data[nl + 1:]


def _key(target: Target, source: bytes) -> str | None:
    if not target.capi_object:
        return None
    try:
        st = os.stat(target.host_path(target.capi_object))
    except OSError:
        return None
    ident = f"{target.uid}\0{target.capi_object}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0"
    return hashlib.sha256(ident.encode() + source).hexdigest()[:40]


def for_target(target: Target, source: bytes) -> tuple[bytes | None, str | None]:
    """(the code file to ship, or None; the cache key a dump is kept under, or None: no dump asked).

    The cached dump of an earlier run on this interpreter if there is one; else the source
    compiled here, which the target loads only if this interpreter's header is its own. A target
    that finds neither its own compiles, and dumps what it compiled if given a key."""
    key = _key(target, source)
    if key is not None:
        try:
            with open(os.path.join(cache_dir(), key + ".code"), "rb") as f:
                data = f.read(MAX_BYTES + 1)
            if split(data) is not None:
                return data, key
        except OSError:
            pass
    try:
        code = compile(source, AGENT_NAME, "exec", dont_inherit=True, optimize=0)
        local = local_header() + marshal.dumps(code)
    except (SyntaxError, ValueError):  # pragma: no cover - the agent compiles on every CLI version
        local = None
    return local, key


def store(key: str, data: bytes) -> bool:
    """Keep a dump the target wrote (see for_target); False if it is not shaped like one or the
    cache cannot be written (never an error: the next run compiles again)."""
    if split(data) is None:
        return False
    d = cache_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".code-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(d, key + ".code"))
        except BaseException:
            os.unlink(tmp)
            raise
        _prune(d)
        return True
    except OSError:
        return False


def _prune(d: str) -> None:
    try:
        names = [n for n in os.listdir(d) if n.endswith(".code")]
        if len(names) <= KEEP:
            return
        names.sort(key=lambda n: os.stat(os.path.join(d, n)).st_mtime)
        for n in names[:len(names) - KEEP]:
            os.unlink(os.path.join(d, n))
    except OSError:
        pass
