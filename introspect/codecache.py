"""The agent's compiled code, made by an interpreter we trust, once per interpreter.

Compiling the agent's source is most of what the target pays for a command apart from the work
itself: 4-7 ms for the 35 KB a forked snapshot ships (3.8-3.13, measured), more than the fork at
a million objects; loading the same code with ``marshal.loads`` takes 0.1-0.5 ms. So the
bootstrap (channel.bootstrap_source) looks for ``agent.code`` in the run dir first: a header
naming the bytecode it holds, then the marshalled tuple of module code objects, one per file the
command ships (introspect.agent.agent_files: each compiled on its own under the name
``<introspect>/FILE``, so tracebacks keep their file and line), executed in order in one
namespace. It loads that only if the header
is exactly the target's own (its bytecode magic number, ``sys.hexversion`` and ``sys.abiflags``:
what makes CPython itself trust a ``.pyc``); anything else, a missing or damaged file included,
and it compiles the source itself.

Who may make ``agent.code`` (docs/security.md says why): never a target. A target is data from an
adversary (a compromised worker may replace its own ``marshal`` or write into its run dir), and
code it made, shipped to the next process of that interpreter, would carry its payload across
users and past Yama's ptrace_scope. The code file is made either
  - by the CLI's own interpreter, when the target runs that very interpreter file; or
  - by the target's interpreter *binary*, run by the CLI as a fresh process (``-I -S``, an empty
    environment, ``/`` as its directory, the source on stdin), and only if that binary, the
    libpython the target maps, every file the fresh process imported and every directory above
    them are owned by root and writable by nobody else: files that only root could have made
    what they are. A target in another mount namespace (a container) is not run from here.
Else the target compiles the source itself (4-7 ms) and nothing it makes leaves it.

The cache ($XDG_CACHE_HOME/introspect/agent-code, 0700, ours) keeps what a trusted interpreter
made, keyed by the agent's files (names and sources) and the interpreter's files (path, device,
inode, size, mtime): one compile per interpreter and agent version. A cache directory or file not
owned by us, or writable by others, is neither read nor written. (Before this rule the cache
lived in ``introspect/code`` and held code targets had made: it is never read again.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import stat
import subprocess
import sys
import tempfile

from introspect.agent import PREFIX, Source, code_name
from introspect.target import Target

CODE_FILE = "agent.code"  # what the bootstrap loads, if its header is the target's own
AGENT_PREFIX = PREFIX  # the agent's code objects' file names: <introspect>/FILE in every run
MAX_BYTES = 4 << 20  # a code file larger than this is not ours
KEEP = 64  # cached files kept (each ~20-45 KB); the oldest go first
COMPILE_TIMEOUT_S = 20.0
CACHE_NAME = "agent-code"

# Run by the target's interpreter binary: compile each file stdin holds (pack()) under argv[1] +
# its name, then print the length of the list of files its imports read (checked afterwards),
# that list (NUL-separated) and the code file (the tuple of code objects). Python 3.8 syntax,
# builtin modules only.
_COMPILER = (
    "import sys,marshal\n"
    "M=sys.modules\n"
    "h,_,s=sys.stdin.buffer.read().partition(b'\\n')\n"
    "h=h.decode().split()\n"
    "c=[];i=0\n"
    "for j in range(0,len(h),2):\n"
    " n=int(h[j+1])\n"
    " c.append(compile(s[i:i+n],sys.argv[1]+h[j],'exec',dont_inherit=True,optimize=0));i+=n\n"
    "c=tuple(c)\n"
    "k=M['_frozen_importlib_external'].MAGIC_NUMBER\n"
    "k+=(' %x %s\\n'%(sys.hexversion,getattr(sys,'abiflags','?'))).encode()\n"
    "f=[]\n"
    "for m in list(M.values()):\n"
    " for a in ('__file__','__cached__'):\n"
    "  v=getattr(m,'__dict__',{}).get(a)\n"
    "  if isinstance(v,str):f.append(v)\n"
    "b='\\0'.join(f).encode('utf-8','surrogateescape')\n"
    "sys.stdout.buffer.write(b'%d\\n'%len(b)+b+k+marshal.dumps(c))\n"
)


def pack(files: Source) -> bytes:
    """The agent's files as one byte string: "name length ..." on a line, then the sources (what
    the compiler reads on stdin, and what the cache key hashes)."""
    head = " ".join(f"{name} {len(data)}" for name, data in files)
    return head.encode() + b"\n" + b"".join(data for _, data in files)


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "introspect", CACHE_NAME)


def local_header() -> bytes:
    """The header this interpreter's bytecode carries (the bootstrap builds the target's alike)."""
    return (
        importlib.util.MAGIC_NUMBER
        + f" {sys.hexversion:x} {getattr(sys, 'abiflags', '?')}\n".encode()
    )


def split(data: bytes) -> tuple[bytes, bytes] | None:
    """(header, marshalled code) of a code file, or None if it is not shaped like one."""
    nl = data.find(b"\n", 4, 64)  # after the magic number, which ends in b"\r\n" itself
    if nl < 0 or len(data) > MAX_BYTES:
        return None
    return data[: nl + 1], data[nl + 1 :]


def untrusted(path: str) -> str | None:
    """Why ``path`` (followed to its real file) is not a file only root could have made what it
    is, or None: it and every directory above it owned by root and writable by no one else."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return f"{real} is not a regular file"
    d = real
    while True:
        try:
            st = os.lstat(d)
        except OSError as exc:
            return f"{d}: {exc.strerror}"
        where = real if d == real else f"{real} ({d} above it)"
        if st.st_uid != 0:
            return f"{where} is owned by uid {st.st_uid}, not root"
        if st.st_mode & 0o022:
            return f"{where} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
        if d == "/":
            return None
        d = os.path.dirname(d)


def _ident(path: str) -> str:
    st = os.stat(path)
    return f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0"


def compiler_for(target: Target) -> tuple[str | None, str]:
    """(the target's interpreter binary if we may run it to compile for the target, or None; why
    not, or what it is). See the module docstring for the rule."""
    if not target.same_root:
        return None, "the target is in another mount namespace (its binary is not run from here)"
    exe = target.exe
    try:
        running, on_disk = os.stat(f"/proc/{target.pid}/exe"), os.stat(exe)
    except OSError as exc:
        return None, f"cannot read the target's executable {exe}: {exc.strerror}"
    if (running.st_dev, running.st_ino) != (on_disk.st_dev, on_disk.st_ino):
        return None, f"{exe} is no longer the file the target runs (replaced on disk)"
    for path in dict.fromkeys([exe, target.capi_object or exe]):
        why = untrusted(path)
        if why is not None:
            return None, why
    return exe, exe


def _key(target: Target, compiler: str | None, source: bytes) -> str | None:
    """The cache's name for ``source`` (pack()) compiled by ``compiler`` for ``target``."""
    try:
        ident = "".join(
            _ident(p)
            for p in dict.fromkeys([compiler or sys.executable, target.capi_object or ""])
            if p
        )
    except OSError:
        return None
    who = "trusted" if compiler else "local " + local_header().hex()
    return hashlib.sha256(f"{who}\0{ident}".encode() + source).hexdigest()[:40]


def _private_dir(d: str, create: bool) -> bool:
    """Is ``d`` a directory of ours that nobody else may write (made so if ``create``)?"""
    if create:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError:
            return False
    try:
        st = os.lstat(d)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _read_cached(key: str) -> bytes | None:
    d = cache_dir()
    if not _private_dir(d, create=False):
        return None
    try:
        fd = os.open(os.path.join(d, key + ".code"), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if split(data) is not None else None


def compile_with(exe: str, files: Source) -> tuple[bytes | None, str]:
    """(the code file ``exe`` made of ``files``, or None; why not). Accepted only if every file
    its imports read is trusted (checked after: only root could have changed them meanwhile)."""
    try:
        out = subprocess.run(
            [exe, "-I", "-S", "-c", _COMPILER, AGENT_PREFIX],
            input=pack(files),
            capture_output=True,
            env={},
            cwd="/",
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"running {exe} failed: {exc}"
    if out.returncode != 0:
        return (
            None,
            f"{exe} failed to compile the agent (exit {out.returncode}): {out.stderr[-300:]!r}",
        )
    head, nl, rest = out.stdout.partition(b"\n")
    if not (nl and head.isdigit() and int(head) <= len(rest)):
        return None, f"{exe} printed no list of the files it read"
    blob, data = rest[: int(head)], rest[int(head) :]
    if split(data) is None:
        return None, f"{exe} printed no code file"
    for path in filter(None, blob.decode("utf-8", "surrogateescape").split("\0")):
        if os.path.exists(path):  # a module's __cached__ need not exist (then it was not read)
            why = untrusted(path)
            if why is not None:
                return None, f"{exe} read {why}"
    return data, exe


def for_target(target: Target, files: Source) -> tuple[bytes | None, str]:
    """(the code file to ship with ``files``, or None: the target compiles; how it was made).

    Same interpreter file as ours: compiled here. Else from the cache, or made now by the
    target's trusted interpreter binary and kept. Else the local compile, which the target loads
    only if its header is the target's own (the same Python build elsewhere on disk)."""
    same = False
    try:
        mine, theirs = os.stat(sys.executable), os.stat(f"/proc/{target.pid}/exe")
        same = (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
    except OSError:
        pass
    if not same:
        compiler, why = compiler_for(target)
        if compiler is not None:
            key = _key(target, compiler, pack(files))
            if key is not None:
                data = _read_cached(key)
                if data is not None:
                    return data, f"cached, made by {compiler}"
            data, why = compile_with(compiler, files)
            if data is not None:
                if key is not None:
                    _store(key, data)
                return data, f"made by {compiler}"
        local = _local(files)
        return local, f"compiled by the CLI's Python (the target's own binary was not used: {why})"
    return _local(files), "compiled by the CLI's Python (the target's interpreter)"


def _local(files: Source) -> bytes | None:
    try:
        code = tuple(
            compile(data, code_name(name), "exec", dont_inherit=True, optimize=0)
            for name, data in files
        )
    except (SyntaxError, ValueError):  # pragma: no cover - the agent compiles on every CLI version
        return None
    return local_header() + marshal.dumps(code)


def _store(key: str, data: bytes) -> bool:
    """Keep code a trusted interpreter made; False if the cache cannot be written (never an
    error: the next run compiles again)."""
    d = cache_dir()
    if not _private_dir(d, create=True):
        return False
    try:
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
        for n in names[: len(names) - KEEP]:
            os.unlink(os.path.join(d, n))
    except OSError:
        pass
