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
# the traverse rule: which objects gc.get_referents() may be called on (see the header)

_HEAPTYPE = 1 << 9
# 3.10+: set on C types made from a spec (_asyncio.Future...), never on a class statement's
_IMMUTABLETYPE = 1 << 8
_HAVE_GC = 1 << 14
_type_flags = type.__dict__["__flags__"]
_type_base = type.__dict__["__base__"]
_ModuleType = type(sys)
# a member descriptor: a plain read of md_dict
_module_dict = _ModuleType.__dict__["__dict__"]  # type: ignore[index]


def _core_types():  # type: () -> set
    """Types whose tp_traverse is CPython's own and visits live references only."""
    def gen():  # type: () -> Any
        yield 1

    async def coro():  # type: () -> None
        pass

    async def agen():  # type: () -> Any
        yield 1

    x = 0

    def cellf():  # type: () -> int
        return x

    c = coro()
    core = set([list, tuple, dict, set, frozenset, type, object, property, classmethod,
                staticmethod, super, enumerate, zip, map, filter, reversed, range, slice,
                bytearray, memoryview, type(cellf), type(sys._getframe()), type(gen()), type(c),
                type(cellf.__closure__[0]),  # type: ignore[index]
                type(agen()), type(len), type(_dump.__get__(0)), type([].append), type(list.append),
                type(object.__init__), type(type.__dict__["__dict__"]), type(_module_dict),
                type(dict.__dict__["fromkeys"]), type(type.__dict__), type({}.keys()),
                type({}.values()), type({}.items()), type(iter([])), type(iter(())), type(iter({})),
                type(iter(set())), type(iter(range(1))), type(iter(lambda: 0, 1)),
                type(reversed([])), type(sys.implementation), type(object().__str__)])
    c.close()
    # no traverse of their own: a subclass walks its __dict__
    core.update((int, bool, float, complex, str, bytes))
    if sys.version_info >= (3, 9):
        core.add(type(list[int]))  # types.GenericAlias
    if sys.version_info >= (3, 10):
        core.add(type(int | str))  # types.UnionType (typing.Union on 3.14+)
    b = _G.get("__builtins__")  # type: Any  # the builtins module, or its dict under exec()
    for v in (b if type(b) is dict else vars(b)).values():
        if type(v) is type and issubclass(v, BaseException):
            core.add(v)
    # CPython's own C modules whose traverse visits live references only (read, not assumed:
    # _asyncio is CPython's own too, and its module traverse is the gh-122695 bug).
    for modname, names in (
            ("_collections",
             ("deque", "defaultdict", "OrderedDict", "_deque_iterator", "_tuplegetter")),
            ("_functools", ("partial", "_lru_cache_wrapper")), ("_abc", ("_abc_data",)),
            ("_weakref", ("ref", "ReferenceType", "ProxyType", "CallableProxyType"))):
        # looked up, never imported: a builtin the target already has
        mod = sys.modules.get(modname)
        if mod is not None:
            for n in names:
                t = getattr(mod, n, None)
                if type(t) is type:
                    core.add(t)
    return core


_CORE = _core_types()
_TRUST = {}  # type: dict  # type -> bool, filled as types are met


def _extension_type(t):  # type: (type) -> bool
    """True when t's __module__ names a builtin or compiled extension module (a C type)."""
    try:
        name = _type_module.__get__(t, type)
        if type(name) is not str or name in sys.builtin_module_names:
            return True
        mod = sys.modules.get(name)
        if mod is None or not issubclass(type(mod), _ModuleType):
            return name != "__main__" and mod is not None
        f = _module_dict.__get__(mod, _ModuleType).get("__file__")
        return type(f) is str and f.endswith((".so", ".pyd"))
    except Exception:
        return True


def _judge(t):  # type: (type) -> bool
    """True when gc.get_referents() may be called on instances of t: t is core, or a Python class
    (its traverse is CPython's subtype_traverse) whose C base, reached through __base__, is core."""
    for _ in range(64):
        if t in _CORE:
            return True
        if t is None or issubclass(t, _ModuleType):
            return False  # modules: their contents are reached through __dict__
        flags = _type_flags.__get__(t, type)
        if not flags & _HEAPTYPE or flags & _IMMUTABLETYPE or _extension_type(t):
            return False
        t = _type_base.__get__(t, type)
    return False


def _trusted(t):  # type: (type) -> bool
    r = _TRUST.get(t)
    if r is None:
        r = _TRUST[t] = _judge(t)
    return r


def _opaque(t):  # type: (type) -> bool
    """A gc-capable type whose traverse we will not run: what it holds is not walked."""
    return (not _trusted(t) and bool(_type_flags.__get__(t, type) & _HAVE_GC)
            and not issubclass(t, _ModuleType))


def _walkable(objs, opaque, skip):  # type: (list, dict, set) -> list
    """The objects of objs that gc.get_referents() may see; opaque ones are counted by type;
    those whose id is in skip (the agent's own) are left out."""
    trust = _TRUST
    out = [o for o in objs
           if (trust.get(type(o)) or (trust.get(type(o)) is None and _trusted(type(o))))
           and id(o) not in skip]
    if len(out) < len(objs):
        for o in objs:
            t = type(o)
            if not trust[t] and _opaque(t):
                opaque[t] = opaque.get(t, 0) + 1
    return out


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


def _key_label(k):  # type: (object) -> str
    # Only builtin str/int keys are shown: repr() of a user object could run code or leak secrets.
    if type(k) is str:
        return "[" + (repr(k) if len(k) <= 40 else repr(k[:37]) + "...") + "]"
    if type(k) is int:
        return "[%d]" % k
    return "[<%s key>]" % type_name(type(k))


def _short_file(path):  # type: (str) -> str
    """The file's name, with its directory when the name alone says little (a package's
    __init__.py)."""
    parts = str(path).rsplit("/", 2)
    if len(parts) >= 2 and parts[-1] in ("__init__.py", "__main__.py"):
        return parts[-2] + "/" + parts[-1]
    return parts[-1]


# CPython 3.11 puts two pointers (its values and __dict__) before the gc header of an instance of
# a class with a managed __dict__ (Py_TPFLAGS_MANAGED_DICT: every class without __slots__), and
# its tracemalloc looks for the block 16 bytes after where it starts: such an instance never has a
# trace (3.12 asks _PyType_PreHeaderSize). The walker reads the block's own trace at its true
# start (_trace_block, ctypes in the fork); in the target, where ctypes never runs, an object that
# only the instance holds (an attribute value, its __dict__) stands in for it, marked "held".
_MANAGED_DICT_311 = 1 << 4 if sys.version_info[:2] == (3, 11) else 0


def _alloc_sites(objs, block=None):  # type: (list, Any) -> list
    """[tracing, [[file, line] or None per object]]: the innermost frame of each object's
    allocation (None: allocated before tracing began, or not traced); [file, line, "held"] when
    it is that of an object the instance alone holds (3.11, see above). ``block``: the walker's
    lookup of a block by address (3.11's managed-dict instances at their true start)."""
    tm = sys.modules.get("_tracemalloc")
    if tm is None or not tm.is_tracing():
        return [False, []]
    out = []  # type: list
    get = tm._get_object_traceback
    for o in objs:
        try:
            tb = get(o)
            if not tb and _type_flags.__get__(type(o), type) & _MANAGED_DICT_311:
                # at the block's true start (gc header + 2 pointers): exact, None is untraced
                tb = block(id(o) - 32) if block is not None else _held_site(o, get)
        except Exception:
            tb = None
        out.append(list(tb) if type(tb) is list else list(tb[0]) if tb else None)
    return [True, out]


def _held_site(o, get):  # type: (object, Any) -> Any
    """[file, line, "held"]: where the first object that ``o`` alone holds (an attribute value, a
    __dict__ made for it), with a trace, was allocated; None if there is none. Only for a class
    whose traverse is CPython's (the header's rule); a shared value (its refcount higher) could
    have been made anywhere, so it is never used."""
    if not _trusted(type(o)):
        return None
    refs = gc.get_referents(o)
    try:
        rc = sys.getrefcount
        alone = 0
        owner = [object()]
        for r in [owner[0]]:  # held by one owner, a list, the loop and the argument: as below
            alone = rc(r)
        for r in refs:
            if rc(r) == alone and not issubclass(type(r), type):
                tb = get(r)
                if tb:
                    return [tb[0][0], tb[0][1], "held"]
        return None
    finally:
        del refs[:]


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


# --- types the backrefs search and the walker name references by --------------------------

_FrameType = type(sys._getframe())


def _cell_type():  # type: () -> type
    x = 0

    def f():  # type: () -> int
        return x

    return type(f.__closure__[0])  # type: ignore[index]


_CellType = _cell_type()
_MethodType = type(_dump.__get__(0))
