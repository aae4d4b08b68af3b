# introspect agent, memory (where the memory is): runs ONLY in the FORKED COPY, before its walk.
#
# Imports: whatever the copy needs (ctypes...: nothing it does reaches the target), Python 3.8
# syntax. The copy's rules (snapshot.py's header): every object it touched is held until
# os._exit, no finalizer runs (gc disabled), nothing is written but the stream and answers.

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.core import _LIMIT, _builtin, posix, time


# ---------------------------------------------------------------------------------------------
# where the memory is (`introspect memory`, `growth`): read in the forked walker, before its walk.
#
# Runs only in the copy: the libc calls below (mallinfo2, malloc_info, malloc_trim, jemalloc's
# mallctl) never run in the target. fork copies glibc's arena metadata exactly (it takes every
# arena lock first), so the copy's allocator describes the target at the fork; read before the
# walk, whose own tables would otherwise count. What the copy did before (its compile of the
# walker's parts, about 1 MiB in pymalloc) is counted too. sys._debugmallocstats() writes to C's
# stderr: fd 2 is pointed at a memory file for the call. The trimmable figure is measured: the
# copy's anonymous resident memory before and after malloc_trim(0) (or jemalloc's purge); its
# pages are the target's at the fork, so the drop is what the target would get back.

_MEM = {}  # type: dict


def _mem_read_fd(fd):  # type: (int) -> bytes
    out = b""
    while True:
        chunk = posix.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


def _mem_read(path):  # type: (str) -> bytes
    fd = posix.open(path, posix.O_RDONLY)
    try:
        return _mem_read_fd(fd)
    finally:
        posix.close(fd)


def _mem_rss_anon():  # type: () -> int
    for line in _mem_read("/proc/self/status").split(b"\n"):
        if line.startswith(b"RssAnon:"):
            return int(line.split()[1]) * 1024
    return -1


def _mem_capture(call):  # type: (Any) -> bytes
    """What ``call()`` writes to fd 2 (C's stderr), captured in a memory file."""
    try:
        tmp = posix.memfd_create("introspect-memstats")
    except (AttributeError, OSError):
        flags = posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC
        tmp = posix.open(_LIMIT["dir"] + "/memstats", flags, 0o600)
    saved = posix.dup(2)
    try:
        posix.dup2(tmp, 2)
        try:
            call()
        finally:
            posix.dup2(saved, 2)
        posix.lseek(tmp, 0, 0)
        return _mem_read_fd(tmp)
    finally:
        posix.close(saved)
        posix.close(tmp)


def _mem_pymalloc_parse(text):  # type: (bytes) -> dict
    """sys._debugmallocstats()'s arena totals: bytes mapped in arenas and in allocated blocks."""
    facts = {}  # type: dict
    lines = text.decode("ascii", "replace").split("\n")
    for k, line in enumerate(lines):
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        try:
            n = int(value.strip().replace(",", ""))
        except ValueError:
            continue
        if key == "# arenas allocated current" and "count" not in facts:
            facts["count"] = n
        elif key.endswith("bytes/arena") and "arena_size" not in facts:  # "N arenas * S bytes/..."
            facts["arena_size"] = int(key.split("*")[1].split()[0])
            facts["arenas"] = n
        elif key == "# bytes in allocated blocks" and "used" not in facts:
            facts["used"] = n
            for later in lines[k + 1:k + 12]:
                if later.startswith("Total"):
                    facts.setdefault("total", int(later.partition("=")[2].strip().replace(",", "")))
                    break
    if "count" not in facts or "used" not in facts:
        return {}
    if "arenas" not in facts:  # 3.8: 256 KiB arenas (1 MiB from 3.10); "Total" is their sum
        facts["arena_size"] = 1 << 20 if sys.version_info >= (3, 10) else 256 << 10
        facts["arenas"] = facts.get("total", facts["count"] * facts["arena_size"])
    free = max(0, facts["arenas"] - facts["used"])
    return {"arenas": facts["arenas"], "used": facts["used"], "free": free, "count": facts["count"],
            "arena_size": facts["arena_size"]}


def _mem_pymalloc():  # type: () -> tuple
    """(pymalloc's figures or None, why None)."""
    text = _mem_capture(sys._debugmallocstats)
    got = _mem_pymalloc_parse(text)
    if got:
        return got, ""
    env = posix.environ.get(b"PYTHONMALLOC", b"")
    env = env.decode("ascii", "replace")
    if env.startswith("malloc"):
        return None, ("no pymalloc: the target runs with PYTHONMALLOC=%s (each object is malloc'ed)"
                      % env)
    if env:
        return None, "no pymalloc arenas reported (PYTHONMALLOC=%s)" % env
    return None, ("no pymalloc arenas reported by sys._debugmallocstats() (a free-threaded build "
                  "uses mimalloc)")


def _mem_allocator(ctypes):  # type: (Any) -> tuple
    """(name, library path) of the malloc every caller gets: the first allocator in the dynamic
    linker's search order (its link map: the executable, LD_PRELOAD, then what was loaded). Not
    where dlsym(malloc) points: a non-PIE executable's canonical PLT entry answers that."""
    class Info(ctypes.Structure):  # type: ignore[misc]  # the head of struct dl_phdr_info
        _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p)]

    names = []  # type: list
    visit = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Info), ctypes.c_size_t, ctypes.c_void_p)

    def one(info, size, data):  # type: (Any, int, Any) -> int
        names.append((info.contents.name or b"").decode("utf-8", "replace"))
        return 0

    ctypes.CDLL(None).dl_iterate_phdr(visit(one), None)
    for path in names:
        base = path.rsplit("/", 1)[-1]
        for name in ("jemalloc", "tcmalloc", "mimalloc"):
            if name in base:
                return name, path
        if base.startswith("libc.so") or base.startswith("libc-"):
            return "glibc", path
    return "unknown", ""


def _mem_glibc(ctypes, libc_path, facts):  # type: (Any, str, dict) -> None
    libc = ctypes.CDLL(libc_path)  # the libc this process maps (a private root's, for sid 3.14)
    version = ctypes.c_char_p
    libc.gnu_get_libc_version.restype = version
    facts["libc"] = (libc.gnu_get_libc_version() or b"?").decode()
    if hasattr(libc, "mallinfo2"):  # glibc 2.33+: size_t fields
        field = ctypes.c_size_t
        call = libc.mallinfo2
    else:  # older glibc: int fields, which wrap past 2 GiB
        field = ctypes.c_int
        call = libc.mallinfo
        facts["note"] = ("glibc %s has no mallinfo2: mallinfo's int fields wrap past 2 GiB"
                         % facts["libc"])

    class Info(ctypes.Structure):  # type: ignore[misc]
        _fields_ = [(n, field) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    call.restype = Info
    info = call()
    mask = (1 << 32) - 1 if field is ctypes.c_int else -1
    uord, ford, hblkhd = info.uordblks & mask, info.fordblks & mask, info.hblkhd & mask
    facts.update({"in_use": uord + hblkhd, "free": ford, "mmapped": hblkhd,
                  "system": info.arena & mask})
    # The number of arenas: malloc_info's <heap nr=...> elements, written to a memory file.
    try:
        fd = posix.memfd_create("introspect-mallocinfo")
        libc.fdopen.restype = ctypes.c_void_p
        libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        fp = libc.fdopen(posix.dup(fd), b"w")
        if fp:
            libc.malloc_info(0, fp)
            libc.fclose(fp)
            posix.lseek(fd, 0, 0)
            xml = b""
            while True:
                chunk = posix.read(fd, 65536)
                if not chunk:
                    break
                xml += chunk
            facts["arenas"] = xml.count(b"<heap nr=")
        posix.close(fd)
    except Exception:  # noqa: BLE001 - the count is missing, said by the CLI
        pass
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    before = _mem_rss_anon()
    libc.malloc_trim(0)
    after = _mem_rss_anon()
    if before >= 0 and after >= 0:
        facts["trimmable"] = max(0, before - after)


def _mem_jemalloc(ctypes, path, facts):  # type: (Any, str, dict) -> None
    """jemalloc's own statistics (mallctl), refreshed first; its purge measured like a trim."""
    lib = ctypes.CDLL(path)
    mallctl = lib.mallctl
    ptr = ctypes.c_void_p
    mallctl.argtypes = [ctypes.c_char_p, ptr, ptr, ptr, ctypes.c_size_t]
    epoch = ctypes.c_uint64(1)
    size = ctypes.c_size_t(8)
    mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), 8)

    def get(name, kind=ctypes.c_size_t):  # type: (bytes, Any) -> Any
        v = kind(0)
        n = ctypes.c_size_t(ctypes.sizeof(v))
        return v.value if mallctl(name, ctypes.byref(v), ctypes.byref(n), None, 0) == 0 else None

    allocated, resident = get(b"stats.allocated"), get(b"stats.resident")
    metadata = get(b"stats.metadata")
    if allocated is None or resident is None:
        facts["note"] = "jemalloc's statistics are not readable (built without --enable-stats?)"
        return
    facts.update({"in_use": allocated, "free": max(0, resident - allocated - (metadata or 0)),
                  "mmapped": get(b"stats.mapped"), "arenas": get(b"arenas.narenas", ctypes.c_uint)})
    before = _mem_rss_anon()
    mallctl(b"arena.4096.purge", None, None, None, 0)  # MALLCTL_ARENAS_ALL
    after = _mem_rss_anon()
    if before >= 0 and after >= 0:
        facts["trimmable"] = max(0, before - after)


def _mem_measure(out):  # type: (dict) -> None
    """Fill ``out`` with the allocators' figures; each failure becomes a reason, never raised."""
    missing = {}  # type: dict
    try:
        py, why = _mem_pymalloc()
        if py is None:
            missing["pymalloc"] = why
        out["pymalloc"] = py
    except Exception as exc:  # noqa: BLE001
        out["pymalloc"] = None
        missing["pymalloc"] = ("sys._debugmallocstats() failed in the copy: %s: %s"
                               % (type(exc).__name__, exc))
    facts = {"allocator": None}  # type: dict
    try:
        ctypes = __import__("ctypes")  # in the copy's copy only: nothing of it reaches the target
        name, path = _mem_allocator(ctypes)
        facts["allocator"] = name
        facts["path"] = path
        if name == "glibc":
            _mem_glibc(ctypes, path, facts)
        elif name == "jemalloc":
            _mem_jemalloc(ctypes, path, facts)
        else:
            missing["malloc"] = ("%s (%s) is the allocator: introspect reads glibc's and "
                                 "jemalloc's figures only" % (name, path))
    except Exception as exc:  # noqa: BLE001
        missing["malloc"] = ("the allocator could not be read in the copy: %s: %s"
                             % (type(exc).__name__, exc))
    out["malloc"] = facts
    out["missing"] = missing


def _mem_look(deadline):  # type: (float) -> None
    """Fill _MEM, from a fork of the walker made before its walk: what the measuring imports and
    allocates (ctypes, its modules and objects) stays out of the walker's heap, which is walked
    as the target's. Its figures come back marshalled through a pipe (between two copies of the
    target: no trust boundary is crossed; the CLI gets JSON from the walker)."""
    t0 = time.perf_counter()
    sig = _builtin("_signal")
    sig.signal(sig.SIGALRM, sig.SIG_DFL)  # the walker's own deadline, set before anything can block
    sig.alarm(max(1, int(deadline - time.time()) + 1))
    marshal = _builtin("marshal")
    r, w = posix.pipe()
    pid = posix.fork()
    if pid == 0:
        try:
            posix.close(r)
            sig.alarm(max(1, int(deadline - time.time()) + 1))  # alarms are not inherited
            got = {}  # type: dict
            _mem_measure(got)
            data = memoryview(marshal.dumps(got, 2))
            while data:
                data = data[posix.write(w, data):]
        finally:
            posix._exit(0)
    posix.close(w)
    raw = b""
    while True:
        chunk = posix.read(r, 65536)
        if not chunk:
            break
        raw += chunk
    posix.close(r)
    posix.waitpid(pid, 0)
    try:
        _MEM.update(marshal.loads(raw))
    except (ValueError, EOFError, TypeError):
        _MEM["missing"] = {"pymalloc": "the measuring copy died before answering",
                           "malloc": "the measuring copy died before answering"}
    _MEM["seconds"] = time.perf_counter() - t0
