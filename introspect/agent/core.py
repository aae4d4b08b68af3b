# introspect agent, core: runs in the TARGET process, on its main thread, at a safe point.
# Shipped with every command, first; run.py (the entry point) is shipped last, the command's
# files in between. Imports: builtin C modules only, through _builtin() below.
#
# Rules (DESIGN.md): stdlib builtin modules only (no pure-Python stdlib imports: each would stay
# in the target's sys.modules), Python 3.8 syntax, no reference to a target object kept after we
# return (we would create the leak we hunt), never repr() user objects unless asked, never raise
# out of here (the bootstrap swallows, but the result file is how the CLI learns what happened).
#
# The traverse rule (CPython gh-122695): gc.get_referents(x) runs x's tp_traverse and takes a new
# reference to everything it visits. A traverse function may visit objects that are not live
# references: 3.12.0-3.12.5's _asyncio module visits its free list of dead FutureIter objects, and
# the list get_referents returns then deallocates them a second time -- the free list becomes a
# cycle, the target loops allocating forever or crashes. So inside the target we call
# gc.get_referents() only on objects whose traverse is CPython's own code for live references
# (_trusted(): core containers, functions, cells, frames, types, and Python classes built on them),
# reach a module's contents through its __dict__, and treat every other C type as opaque (counted
# and reported, never traversed). gc.get_referrers() only compares pointers: it is safe on anything.
# Every loop checks the budget and the request's deadline (_stopped()), and the agent's own tables
# are capped: a walk that cannot finish returns what it has, marked partial, with the reason.
#
# These rules bind every file of this package (introspect/agent/*.py, but __init__.py and
# whole.py, which run in the CLI and in tests). The files share one namespace at run time: the
# bootstrap executes each file's code, compiled on its own under the name "<introspect>/FILE",
# in one fresh dict, in the order introspect.agent.names() gives, so a traceback names the file
# and its true line. Their "if MYPY:" imports are for the type checker only: the CLI ships them
# as blank lines (introspect.agent.shipped).
#
# The CLI ships the target only this core, run.py and the files its command runs (introspect.agent
# PARTS). Compiling costs the target memory it keeps (its allocator's arenas): 7 MiB of RSS for
# the whole agent on 3.12, against about 1 MiB for the core and one part; and time: 4-7 ms for
# the snapshot's 35 KB. So the target loads these files precompiled (0.1-0.5 ms), made by the CLI
# or by the target's own root-owned interpreter binary, never by a target
# (introspect/codecache.py). The forked walker compiles its own files (introspect.agent
# WALKER_PARTS) in the child, where it costs the target nothing.
#
# The bootstrap executes these files in a fresh dict holding REQUEST (a literal written by the
# CLI): {"nonce", "deadline" (time.time()), "dir" (run dir, target's view), "command", "params"}
# Results go to DIR/result.json (written to a temp name, then renamed); DIR/started marks the
# start.
import sys

_G = globals()
# Builtin C modules this run had to import (gc, time, _collections if the target never did). They
# stay imported: importing a builtin module runs no code, and popping it again would leak a fresh
# module object on every run (measured: each re-import creates another that never goes away).
_NEW_MODULES = list(_G.get("_NEW", ()))  # type: list  # the bootstrap imported gc if nothing had
_OWN_PREFIX = "<introspect>/"  # our code objects' file names as shipped (codecache.AGENT_PREFIX)
# ... and as they are here: _OWN_PREFIX shipped, the package's directory when a test loads the files
_OWN_DIR = sys._getframe().f_code.co_filename.rpartition("/")[0] + "/"


MYPY = False
if MYPY:  # seen by the type checker only: the agent imports nothing at run time
    from typing import Any  # noqa: F401


def _builtin(name):  # type: (str) -> Any
    mod = sys.modules.get(name)
    if mod is None:
        mod = __import__(name)
        _NEW_MODULES.append(name)
    return mod


gc = _builtin("gc")
time = _builtin("time")
posix = _builtin("posix")
_thread = _builtin("_thread")
try:
    _count_elements = _builtin("_collections")._count_elements
except (ImportError, AttributeError):  # pragma: no cover - every CPython 3.8+ has it
    _count_elements = None

_FunctionType = type(_builtin)
_type_module = type.__dict__["__module__"]
_type_qualname = type.__dict__["__qualname__"]
_ModuleType = type(sys)
# a member descriptor: a plain read of md_dict
_module_dict = _ModuleType.__dict__["__dict__"]  # type: ignore[index]

# ---------------------------------------------------------------------------------------------
# output: a tiny JSON writer (the json package is pure Python; importing it would be residue)

_ESC = {i: "\\u%04x" % i for i in range(32)}
_ESC.update({34: '\\"', 92: "\\\\", 10: "\\n", 13: "\\r", 9: "\\t"})


def _dump(obj, out):  # type: (object, list) -> None
    if obj is None or obj is True or obj is False:
        out.append("null" if obj is None else ("true" if obj else "false"))
    elif isinstance(obj, str):
        out.append('"' + obj.translate(_ESC) + '"')
    elif isinstance(obj, int):
        out.append(int.__repr__(obj))
    elif isinstance(obj, float):
        out.append(float.__repr__(obj)
                   if obj == obj and obj not in (float("inf"), float("-inf")) else "null")
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for k, v in obj.items():
            if not first:
                out.append(",")
            first = False
            out.append('"' + str(k).translate(_ESC) + '":')
            _dump(v, out)
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _dump(v, out)
        out.append("]")
    else:
        out.append('"' + str(type(obj).__name__).translate(_ESC) + '"')


def _write_file(path, data):  # type: (str, bytes) -> None
    # O_EXCL|O_NOFOLLOW: never follow a planted symlink; 0600: results can hold secrets.
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
    finally:
        posix.close(fd)


def _write_json(path, obj):  # type: (str, object) -> None
    out = []  # type: list
    _dump(obj, out)
    tmp = path + ".tmp"
    _write_file(tmp, "".join(out).encode("utf-8", "backslashreplace"))
    posix.rename(tmp, path)


# ---------------------------------------------------------------------------------------------
# naming and bookkeeping


def type_name(t):  # type: (type) -> str
    """module.qualname, read through type's own descriptors (a metaclass cannot run code here)."""
    try:
        mod = _type_module.__get__(t, type)
        qual = _type_qualname.__get__(t, type)
    except Exception:
        return "?"
    if not isinstance(qual, str):
        qual = "?"
    if mod == "builtins" or not isinstance(mod, str):
        return qual
    return mod + "." + qual


# ---------------------------------------------------------------------------------------------
# budget, deadline and cancellation: every loop asks _stopped()

_LIMIT = {
    "stop": float("inf"), "kind": "", "deadline": float("inf"), "dir": "", "next_check": 0.0,
}  # type: dict
_DIR_CHECK_S = 0.25  # how often a long walk looks whether the CLI gave up (it removes the run dir)
_ANSWER_S = 1.0  # kept free before the request's deadline to write the (partial) answer
_MAX_NODES = 200000  # objects a backrefs search may hold at once
_STOP_REASONS = {"budget": "budget of %(budget)gs spent",
                 "deadline": "the request's deadline (--timeout) came first",
                 "cancelled": "the CLI gave up",
                 "memory": "memory cap reached (200,000 objects held by the search)"}




def _start_clock(budget):  # type: (float) -> None
    now = time.perf_counter()
    left = _LIMIT["deadline"] - time.time() - _ANSWER_S
    if budget <= left:
        _LIMIT["stop"], _LIMIT["kind"] = now + budget, "budget"
    else:
        _LIMIT["stop"], _LIMIT["kind"] = now + max(0.0, left), "deadline"
    _LIMIT["next_check"] = now + _DIR_CHECK_S


def _stopped():  # type: () -> str
    """'' while the walk may go on; else why it must stop: budget, deadline or cancelled."""
    now = time.perf_counter()
    if now > _LIMIT["stop"]:
        return _LIMIT["kind"]
    if _LIMIT["dir"] and now > _LIMIT["next_check"]:
        _LIMIT["next_check"] = now + _DIR_CHECK_S
        try:
            posix.stat(_LIMIT["dir"])
        except OSError:
            _LIMIT["stop"], _LIMIT["kind"] = 0.0, "cancelled"
            return "cancelled"
    return ""


def _phase(name):  # type: (str) -> None
    """Mark the step we enter, for the CLI's message should the deadline pass during it."""
    if _LIMIT["dir"]:
        try:
            _write_file(_LIMIT["dir"] + "/phase-" + name, b"")
        except OSError:
            pass


def _own_objects():  # type: () -> list
    """Objects of the agent itself that gc tracks: subtracted so counts describe the target.
    (Code objects are never gc-tracked, 3.8 to 3.15; the tuples they hold are left to _settle.)"""
    own = [_G]  # type: list
    for v in _G.values():
        if type(v) is _FunctionType:
            own.append(v)
            if v.__defaults__:
                own.append(v.__defaults__)
        elif isinstance(v, (dict, list, tuple)):
            own.append(v)
    return [o for o in own if gc.is_tracked(o)]


def _count_types(objs, own):  # type: (list, list) -> dict
    counts = {}  # type: dict
    if _count_elements is not None:
        _count_elements(counts, map(type, objs))
    else:  # pragma: no cover
        for o in objs:
            t = type(o)
            counts[t] = counts.get(t, 0) + 1
    for o in own:
        t = type(o)
        if counts.get(t, 0) > 0:
            counts[t] -= 1
    named = {}  # type: dict
    for t, n in counts.items():
        if n > 0:
            name = type_name(t)
            named[name] = named.get(name, 0) + n
    return named


def _short_file(path):  # type: (str) -> str
    """The file's name, with its directory when the name alone says little (a package's
    __init__.py)."""
    parts = str(path).rsplit("/", 2)
    if len(parts) >= 2 and parts[-1] in ("__init__.py", "__main__.py"):
        return parts[-2] + "/" + parts[-1]
    return parts[-1]


def _gc_enabled():  # type: () -> bool
    """Whether the target's collector is on. The bootstrap holds it off while we run and passes
    the state it found (_GC); it is enabled again after us."""
    was = _G.get("_GC")
    return was if type(was) is bool else gc.isenabled()


def _gc_facts():  # type: () -> dict
    facts = {"enabled": _gc_enabled(), "counts": list(gc.get_count()),
             "thresholds": list(gc.get_threshold())}
    try:  # C-level reads of the collector's own counters: no object is touched
        facts["stats"] = [dict((k, v) for k, v in st.items() if type(v) is int)
                          for st in gc.get_stats()]
    except Exception:
        pass
    if hasattr(gc, "get_freeze_count"):
        facts["frozen"] = gc.get_freeze_count()
    return facts


# ---------------------------------------------------------------------------------------------
# commands: each takes the request params and returns a JSON-able dict


def _settle(params):  # type: (dict) -> None
    """gc.collect() when asked; else a young-generation pass only. Compiling this agent made a few
    hundred tuples of names and constants; whether the collector had untracked them yet depended
    on where its allocation counter stood, so counts moved by ~150 tuples between otherwise equal
    runs. Our own allocations trigger these young passes anyway: it collects nothing old, hides
    no leak."""
    if params.get("collect"):
        gc.collect()
    elif _gc_enabled():
        gc.collect(0)


def _snapshot(params):  # type: (dict) -> tuple
    """(objects counted, {type name: count}, seconds): one pass over gc.get_objects()."""
    t0 = time.perf_counter()
    _settle(params)
    objs = gc.get_objects()
    try:
        own = _own_objects()
        total = len(objs) - len(own)
        counts = _count_types(objs, own)
    finally:
        del objs
    return total, counts, time.perf_counter() - t0


COMMANDS = {}  # type: dict  # name -> function: each part registers its own


# --- sizes: shallow bytes per type, untracked referents included -----------------------------

_SIZEOF_C = type(object.__dict__["__sizeof__"])  # method_descriptor: a __sizeof__ written in C
_type_mro = type.__dict__["__mro__"]
_type_dict = type.__dict__["__dict__"]


def _c_sizeof(t):  # type: (type) -> bool
    """True when t's __sizeof__ is C code: sys.getsizeof(o) then runs no Python code of the
    target."""
    try:
        for k in _type_mro.__get__(t, type):
            d = _type_dict.__get__(k, type)
            if "__sizeof__" in d:
                return type(d["__sizeof__"]) is _SIZEOF_C
    except Exception:
        pass
    return False


def _gc_head():  # type: () -> int
    probe = []  # type: list
    return sys.getsizeof(probe) - probe.__sizeof__()


# 3.11's managed-dict instances have no trace where tracemalloc looks (objects.py, _alloc_sites)
_MANAGED_DICT_311 = 1 << 4 if sys.version_info[:2] == (3, 11) else 0

# objects per batch: bounded temporary lists, and the budget is checked between batches
_STEP = 65536
_SLICE = 16384  # objects tallied between two budget checks

def _ours(name):  # type: (str) -> bool
    # Is ``name`` the file name of this agent's code (any file of this package, this run's)?
    return name.startswith(_OWN_DIR)


def _own_file(name):  # type: (str) -> bool
    """This agent, an earlier run's (its run dir is gone; our session's module was made there),
    or our bootstrap's stage 1."""
    return (name.startswith((_OWN_PREFIX, _OWN_DIR)) or name == "<introspect-bootstrap>"
            # an older CLI's names: the agent's files in its run dir
            or (name.endswith(("/agent.py", "/walker.py")) and "/introspect-" in name))


def _exc_record(exc, skip_own):  # type: (BaseException, bool) -> dict
    # type, message and frames [file, line, function] of ``exc``; ``skip_own``: without the
    # agent's own frames (exec: the user's code failed, not ours)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if not (skip_own and _ours(code.co_filename)):
            frames.append([code.co_filename, tb.tb_lineno, code.co_name])
        tb = tb.tb_next
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return {"type": type_name(type(exc)), "message": message, "frames": frames}
