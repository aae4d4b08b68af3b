# introspect agent: runs INSIDE the target process, on its main thread, at a safe point.
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
# Parts ("# @part NAME" lines): the CLI ships the target only the core and the parts its command
# runs (introspect.agent.agent_source), the other lines blanked so line numbers stay true.
# Compiling costs the target memory it keeps (its allocator's arenas): 7 MiB of RSS for this
# whole file on 3.12, against about 1 MiB for the core and one part; and time: 4-7 ms for the
# snapshot's 35 KB. So the target loads these parts precompiled (0.1-0.5 ms), made by the CLI or
# by the target's own root-owned interpreter binary, never by a target (introspect/codecache.py).
# The forked walker compiles its own part ("walker") in the child, where it costs the target
# nothing.
#
# The bootstrap executes this file in a fresh dict holding REQUEST (a literal written by the CLI):
#   {"nonce", "deadline" (time.time()), "dir" (run dir, target's view), "command", "params"}
# Results go to DIR/result.json (written to a temp name, then renamed); DIR/started marks the start.
import sys

_G = globals()
# Builtin C modules this run had to import (gc, time, _collections if the target never did). They
# stay imported: importing a builtin module runs no code, and popping it again would leak a fresh
# module object on every run (measured: each re-import creates another that never goes away).
_NEW_MODULES = list(_G.get("_NEW", ()))  # type: list  # the bootstrap imported gc if nothing had
_OWN_PREFIX = "<introspect>/"  # our code objects' file names (codecache.AGENT_NAME, the walker's part)


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
    _count_elements = _builtin("_collections")._count_elements  # type: ignore[attr-defined]
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
        out.append(float.__repr__(obj) if obj == obj and obj not in (float("inf"), float("-inf")) else "null")
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
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW, 0o600)  # type: ignore[attr-defined]
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]  # type: ignore[attr-defined]
    finally:
        posix.close(fd)  # type: ignore[attr-defined]


def _write_json(path, obj):  # type: (str, object) -> None
    out = []  # type: list
    _dump(obj, out)
    tmp = path + ".tmp"
    _write_file(tmp, "".join(out).encode("utf-8", "backslashreplace"))
    posix.rename(tmp, path)  # type: ignore[attr-defined]


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
_IMMUTABLETYPE = 1 << 8  # 3.10+: set on C types made from a spec (_asyncio.Future...), never on a class statement's
_HAVE_GC = 1 << 14
_type_flags = type.__dict__["__flags__"]
_type_base = type.__dict__["__base__"]
_ModuleType = type(sys)
_module_dict = _ModuleType.__dict__["__dict__"]  # type: ignore[index]  # a member descriptor: a plain read of md_dict


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
    core = set([list, tuple, dict, set, frozenset, type, object, property, classmethod, staticmethod, super,
                enumerate, zip, map, filter, reversed, range, slice, bytearray, memoryview,
                type(cellf), type(cellf.__closure__[0]), type(sys._getframe()), type(gen()), type(c),  # type: ignore[index]
                type(agen()), type(len), type(_dump.__get__(0)), type([].append), type(list.append),
                type(object.__init__), type(type.__dict__["__dict__"]), type(_module_dict),
                type(dict.__dict__["fromkeys"]), type(type.__dict__), type({}.keys()), type({}.values()),
                type({}.items()), type(iter([])), type(iter(())), type(iter({})), type(iter(set())), type(iter(range(1))),
                type(iter(lambda: 0, 1)), type(reversed([])), type(sys.implementation), type(object().__str__)])
    c.close()
    core.update((int, bool, float, complex, str, bytes))  # no traverse of their own: a subclass walks its __dict__
    if sys.version_info >= (3, 9):
        core.add(type(list[int]))  # types.GenericAlias
    if sys.version_info >= (3, 10):
        core.add(type(int | str))  # types.UnionType (typing.Union on 3.14+)
    b = _G.get("__builtins__")  # type: Any  # the builtins module, or its dict under exec()
    for v in (b if type(b) is dict else vars(b)).values():
        if type(v) is type and issubclass(v, BaseException):
            core.add(v)
    # CPython's own C modules whose traverse visits live references only (read, not assumed: _asyncio
    # is CPython's own too, and its module traverse is the gh-122695 bug).
    for modname, names in (("_collections", ("deque", "defaultdict", "OrderedDict", "_deque_iterator", "_tuplegetter")),
                           ("_functools", ("partial", "_lru_cache_wrapper")), ("_abc", ("_abc_data",)),
                           ("_weakref", ("ref", "ReferenceType", "ProxyType", "CallableProxyType"))):
        mod = sys.modules.get(modname)  # looked up, never imported: a builtin the target already has
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
    return not _trusted(t) and bool(_type_flags.__get__(t, type) & _HAVE_GC) and not issubclass(t, _ModuleType)


def _walkable(objs, opaque, skip):  # type: (list, dict, set) -> list
    """The objects of objs that gc.get_referents() may see; opaque ones are counted by type;
    those whose id is in skip (the agent's own) are left out."""
    trust = _TRUST
    out = [o for o in objs if (trust.get(type(o)) or (trust.get(type(o)) is None and _trusted(type(o)))) and id(o) not in skip]
    if len(out) < len(objs):
        for o in objs:
            t = type(o)
            if not trust[t] and _opaque(t):
                opaque[t] = opaque.get(t, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# budget, deadline and cancellation: every loop asks _stopped()

_LIMIT = {"stop": float("inf"), "kind": "", "deadline": float("inf"), "dir": "", "next_check": 0.0}  # type: dict
_DIR_CHECK_S = 0.25  # how often a long walk looks whether the CLI gave up (it removes the run dir)
_ANSWER_S = 1.0  # kept free before the request's deadline to write the (partial) answer
_MAX_NODES = 200000  # objects a backrefs search may hold at once
_STOP_REASONS = {"budget": "budget of %(budget)gs spent", "deadline": "the request's deadline (--timeout) came first",
                 "cancelled": "the CLI gave up", "memory": "memory cap reached (200,000 objects held by the search)"}




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
        return _LIMIT["kind"]  # type: ignore[return-value]
    if _LIMIT["dir"] and now > _LIMIT["next_check"]:
        _LIMIT["next_check"] = now + _DIR_CHECK_S
        try:
            posix.stat(_LIMIT["dir"])  # type: ignore[attr-defined]
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
    """The file's name, with its directory when the name alone says little (a package's __init__.py)."""
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
    facts = {"enabled": _gc_enabled(), "counts": list(gc.get_count()), "thresholds": list(gc.get_threshold())}
    try:  # C-level reads of the collector's own counters: no object is touched
        facts["stats"] = [dict((k, v) for k, v in st.items() if type(v) is int) for st in gc.get_stats()]
    except Exception:
        pass
    if hasattr(gc, "get_freeze_count"):
        facts["frozen"] = gc.get_freeze_count()
    return facts


# ---------------------------------------------------------------------------------------------
# commands: each takes the request params and returns a JSON-able dict


def _settle(params):  # type: (dict) -> None
    """gc.collect() when asked; else a young-generation pass only. Compiling this agent made a few
    hundred tuples of names and constants; whether the collector had untracked them yet depended on
    where its allocation counter stood, so counts moved by ~150 tuples between otherwise equal runs.
    Our own allocations trigger these young passes anyway: it collects nothing old, hides no leak."""
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


def cmd_top(params):  # type: (dict) -> dict
    if params.get("sizes"):
        return _sizes(params)
    total, counts, scan_s = _snapshot(params)
    return {
        "objects": total,
        "types": counts,
        "gc": _gc_facts(),
        "scan_s": scan_s,
    }


COMMANDS["top"] = cmd_top


# --- sizes: shallow bytes per type, untracked referents included -----------------------------

_SIZEOF_C = type(object.__dict__["__sizeof__"])  # method_descriptor: a __sizeof__ written in C
_type_mro = type.__dict__["__mro__"]
_type_dict = type.__dict__["__dict__"]


def _c_sizeof(t):  # type: (type) -> bool
    """True when t's __sizeof__ is C code: sys.getsizeof(o) then runs no Python code of the target."""
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


_STEP = 65536  # objects per batch: bounded temporary lists, and the budget is checked between batches
_SLICE = 16384  # objects tallied between two budget checks
# @part sizes
_MAX_SEEN = 500000  # shared untracked objects remembered for de-duplication: ~40 MiB at most


def _tally(objs, nbytes, counts, sizers, gc_head, unique, seen, frontier):
    # type: (list, dict, dict, dict, int, int, dict, list) -> int
    """Add objs' shallow sizes per type. With ``unique`` (the refcount an object has when the
    list being walked is its only other owner), untracked objects are de-duplicated: one owned
    once is counted directly, a shared one is remembered by id. Untracked objects that can hold
    references go to ``frontier``. Returns the largest refcount seen. Checks _stopped() every
    _SLICE objects: one container may hold millions."""
    getsizeof = sys.getsizeof
    getrefcount = sys.getrefcount
    is_tracked = gc.is_tracked
    flags = _type_flags
    most = 0
    for k in range(0, len(objs), _SLICE):
        if k and _stopped():
            break
        for o in objs[k:k + _SLICE]:
            t = type(o)
            if unique:
                if is_tracked(o):
                    continue
                rc = getrefcount(o)
                if rc > unique:
                    i = id(o)
                    if i in seen:
                        continue
                    seen[i] = None
                if flags.__get__(t, type) & _HAVE_GC:
                    frontier.append(o)  # an untracked dict or tuple: its contents come next
            else:
                rc = getrefcount(o)
            if rc > most:
                most = rc
            c = sizers.get(t)
            if c is None:
                c = sizers[t] = _c_sizeof(t)
            try:
                b = getsizeof(o) if c else object.__sizeof__(o) + gc_head
            except Exception:
                b = 0
            nbytes[t] = nbytes.get(t, 0) + b
            counts[t] = counts.get(t, 0) + 1
    return most


_SIZED = (list, tuple, dict, set, frozenset)


def _referent_batches(objs):  # type: (list) -> Any
    """Referent lists of objs (all walkable), each of about _STEP objects or fewer: one big
    container is taken in slices of _SLICE, not as one list of millions (a multi-MiB temporary
    list would stay in the target's malloc arena, raising its RSS after we are gone).
    Every list holds each referent once more than its container does, as gc.get_referents'
    own list would: the refcount calibration of _tally holds for all of them."""
    acc = []  # type: list
    n = 0
    for o in objs:
        t = type(o)
        size = len(o) if t in _SIZED else 8  # exact core containers only: len() runs no user code
        if size > _SLICE:
            if acc:
                yield gc.get_referents(*acc)
                acc, n = [], 0
            if t is list or t is tuple:
                for k in range(0, size, _SLICE):
                    yield list(o[k:k + _SLICE])  # type: ignore[index]
            else:
                part = []  # type: list
                try:
                    for x in (dict.items(o) if t is dict else o):  # type: ignore[call-overload, attr-defined]
                        if t is dict:
                            part.append(x[0])
                            part.append(x[1])
                        else:
                            part.append(x)
                        if len(part) >= _SLICE:
                            yield part
                            part = []
                except RuntimeError:
                    pass  # another thread resized it meanwhile: what was seen is counted
                if part:
                    yield part
            continue
        acc.append(o)
        n += size
        if n >= _STEP:
            yield gc.get_referents(*acc)
            acc, n = [], 0
    if acc:
        yield gc.get_referents(*acc)


def _walk(batch, depth, ctx):  # type: (list, int, tuple) -> str
    """Tally the untracked referents of batch, then (depth first, so that the agent's temporary
    lists stay small whatever the heap holds) those of the untracked containers among them.
    Returns why the walk must stop, or ''."""
    ub, uc, sizers, gc_head, unique, seen, opaque, pending, deepest, skip = ctx
    if depth > deepest[0]:
        deepest[0] = depth
    for refs in _referent_batches(_walkable(batch, opaque, skip)):
        why = _stopped() or ("memory" if len(seen) > _MAX_SEEN else "")
        if why:
            return why
        nxt = []  # type: list
        _tally(refs, ub, uc, sizers, gc_head, unique, seen, nxt)
        refs = None
        if nxt:
            pending.append((nxt, depth + 1))
        while pending:
            below, d = pending.pop()
            why = _walk(below, d, ctx)
            if why:
                return why
    return _stopped()


def _sizes(params):  # type: (dict) -> dict
    """top --by size: every gc-tracked object, plus the objects gc does not track (str, bytes,
    int, float, atomic-only dicts and tuples...) reached as their referents, each counted once,
    sized as sys.getsizeof does. A Python-level __sizeof__ is user code and is not called: those
    objects count their basic size. Only trusted objects are traversed (the header's rule): what
    opaque C objects hold is not walked, and they are reported by type. Stops at the budget, the
    request's deadline, a cancelled request or the memory cap, with partial=True and the reason."""
    t0 = time.perf_counter()
    _start_clock(float(params.get("budget", 10.0)))
    _phase("collect" if params.get("collect") else "settle")
    _settle(params)
    _phase("walk")
    sizers = {}  # type: dict
    gc_head = _gc_head()
    tb, tc, ub, uc = {}, {}, {}, {}  # type: dict, dict, dict, dict
    opaque = {}  # type: dict
    # Calibrate: the refcount of an object whose only owners are one container and the list walked.
    probe = [[float(posix.getpid()) + 0.5]]  # type: ignore[attr-defined]
    unique = _tally(gc.get_referents(*probe), {}, {}, sizers, gc_head, 0, {}, [])  # a list: core traverse
    del probe
    objs = gc.get_objects()
    own = _own_objects()
    seen = {}  # type: dict
    stopped = ""
    tracked_total = len(objs)
    walked = 0  # tracked objects whose referents were walked
    levels = 0
    pending = []  # type: list  # batches (<= _STEP) of untracked containers still to walk
    deepest = [0]
    ctx = None  # type: Any
    # The agent's own frames (gc-tracked objects before 3.11) reference its tables: never walked.
    skip = set()  # type: set
    f = sys._getframe()  # type: Any
    while f is not None:
        if f.f_code.co_filename == _G.get("__file__", "\0") or f.f_globals is _G:
            skip.add(id(f))
        f = f.f_back
    f = None
    try:
        for k in range(0, len(objs), _STEP):
            stopped = _stopped()
            if stopped:
                break  # the tracked counts themselves are partial: said by "walked" == 0
            _tally(objs[k:k + _STEP], tb, tc, sizers, gc_head, 0, seen, [])
        for o in own:
            t = type(o)
            if tc.get(t, 0) > 0:
                tc[t] -= 1
                tb[t] -= sys.getsizeof(o)
        o = None
        ctx = (ub, uc, sizers, gc_head, unique, seen, opaque, pending, deepest, skip)
        if not stopped:
            for k in range(0, tracked_total, _STEP):
                stopped = _walk(objs[k:k + _STEP], 1, ctx)
                if stopped:
                    break
                walked += min(_STEP, tracked_total - k)
        levels = deepest[0]
    finally:
        objs = ctx = None
        del pending[:]
        seen.clear()
    del own
    types = {}  # type: dict
    for counts, nbytes, slot in ((tc, tb, 0), (uc, ub, 1)):
        for t, n in counts.items():
            if n <= 0:
                continue
            row = types.setdefault(type_name(t), [0, 0, 0])
            row[slot] += n
            row[2] += nbytes.get(t, 0)
    opaque_named = {}  # type: dict
    for t, n in opaque.items():
        name = type_name(t)
        opaque_named[name] = opaque_named.get(name, 0) + n
    return {
        "objects": sum(r[0] for r in types.values()),
        "untracked_objects": sum(r[1] for r in types.values()),
        "types": {name: r[0] + r[1] for name, r in types.items()},
        "sizes": types,
        "opaque": opaque_named,
        "partial": bool(stopped),
        "stopped": stopped,
        "walked": walked,
        "levels": levels,
        "tracked_total": tracked_total,
        "budget": float(params.get("budget", 10.0)),
        "gc": _gc_facts(),
        "scan_s": time.perf_counter() - t0,
    }


# @part core
def _own_file(name, agent_file):  # type: (str, str) -> bool
    """This agent, an earlier run's (its run dir is gone; our session's module was made there),
    or our bootstrap's stage 1."""
    return (name == agent_file or name == "<introspect-bootstrap>" or name.startswith(_OWN_PREFIX)
            or (name.endswith(("/agent.py", "/walker.py")) and "/introspect-" in name))  # an older CLI's names


def _exc_record(exc, skip_file):  # type: (BaseException, str) -> dict
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename != skip_file:
            frames.append([code.co_filename, tb.tb_lineno, code.co_name])
        tb = tb.tb_next
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return {"type": type_name(type(exc)), "message": message, "frames": frames}


# @part exec
def _capture_class():  # type: () -> type
    # Made per exec call, not at agent load: a class is cyclic garbage once we are done, and the
    # commands that count objects must not leave one behind for growth to report.
    class _Capture(object):
        """sys.stdout/sys.stderr stand-in: keeps what *our* thread writes, passes other threads' on."""

        def __init__(self, orig, tid):  # type: (object, int) -> None
            self._orig = orig
            self._tid = tid
            self.parts = []  # type: list

        def write(self, s):  # type: (str) -> int
            if _thread.get_ident() == self._tid:
                self.parts.append(str(s))
                return len(s)
            return self._orig.write(s)  # type: ignore[attr-defined, no-any-return]

        def flush(self):  # type: () -> None
            if _thread.get_ident() != self._tid and self._orig is not None:
                self._orig.flush()  # type: ignore[attr-defined]

        def __getattr__(self, name):  # type: (str) -> object
            return getattr(self._orig, name)

    return _Capture


def cmd_exec(params):  # type: (dict) -> dict
    _Capture = _capture_class()
    with open(params["payload"], "rb") as f:
        source = f.read()
    tid = _thread.get_ident()
    out = _Capture(sys.stdout, tid)
    err = _Capture(sys.stderr, tid)
    namespace = {"__name__": "__introspect_exec__", "__file__": params["display_name"]}
    error = None
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    t0 = time.perf_counter()
    held = _gc_enabled() and not gc.isenabled()  # the user's code sees the collector as the target had it
    try:
        if held:
            gc.enable()
        exec(compile(source, params["display_name"], "exec"), namespace)
    except BaseException as exc:  # the payload's own failure is a result, not ours
        error = _exc_record(exc, __file__)
        exc.__traceback__ = None
    finally:
        if held and gc.isenabled():
            gc.disable()
        if sys.stdout is out:
            sys.stdout = out._orig  # type: ignore[assignment]
        if sys.stderr is err:
            sys.stderr = err._orig  # type: ignore[assignment]
    return {
        "stdout": "".join(out.parts),
        "stderr": "".join(err.parts),
        "exception": error,
        "run_s": time.perf_counter() - t0,
    }



COMMANDS["exec"] = cmd_exec


# @part growth
def cmd_growth(params):  # type: (dict) -> dict
    """Counts per type (gc-tracked objects). The CLI keeps the baseline and the previous look
    (introspect/snapshot/state.py) and computes the changes: nothing of ours stays here."""
    total, counts, scan_s = _snapshot(params)
    return {"objects": total, "counts": counts, "now": time.time(), "gc": _gc_facts(), "scan_s": scan_s}


COMMANDS["growth"] = cmd_growth


# @part core
# --- backrefs -------------------------------------------------------------------------------

_FrameType = type(sys._getframe())


def _cell_type():  # type: () -> type
    x = 0

    def f():  # type: () -> int
        return x

    return type(f.__closure__[0])  # type: ignore[index]


_CellType = _cell_type()
_MethodType = type(_dump.__get__(0))


# @part backrefs
def _via(holder, child):  # type: (object, object) -> str
    """How ``holder`` references ``child``: attribute, key, index, closure variable..."""
    th = type(holder)
    try:
        if issubclass(th, dict):  # issubclass(type(x)), never isinstance(): that may run a __class__ property
            for k, v in dict.items(holder):  # type: ignore
                if v is child:
                    return _key_label(k)
                if k is child:
                    return "(key)"
            return "(item)"
        if th is list or th is tuple:
            for i, v in enumerate(holder):  # type: ignore[arg-type]
                if v is child:
                    return "[%d]" % i
            return "(item)"
        if th is _CellType:
            return "cell_contents"
        if th is _ModuleType:
            return "__dict__"
        if th is _FunctionType:
            for attr in ("__closure__", "__defaults__", "__kwdefaults__", "__globals__", "__dict__", "__code__"):
                if getattr(holder, attr, None) is child:
                    return attr
            return "(function)"
        if th is _MethodType:
            return "__self__" if holder.__self__ is child else "__func__"  # type: ignore[attr-defined]
        if issubclass(th, type):
            if type(child) is dict and "__module__" in child:  # type: ignore[operator]
                return "__dict__"
            if any(b is child for b in type.__dict__["__bases__"].__get__(holder, type)):
                return "__bases__"
            return "__mro__" if type(child) is tuple else "(type)"
        if issubclass(th, (set, frozenset)):
            return "{member}"
        try:
            d = object.__getattribute__(holder, "__dict__")
        except Exception:
            d = None
        if d is child:
            return "__dict__"
        if type(d) is dict:
            for k, v in d.items():
                if v is child and type(k) is str:
                    return "." + k
        for klass in type.__dict__["__mro__"].__get__(th, type):
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                desc = klass.__dict__.get(name)
                if desc is not None and type(desc).__name__ == "member_descriptor":
                    try:
                        if desc.__get__(holder, th) is child:
                            return "." + name
                    except AttributeError:
                        pass
    except Exception:
        pass
    return "(referent)"


def _collapse(steps):  # type: (list) -> list
    """Turn (X, __dict__)(dict, ['k']) into (X, .k) and function closures into one named step."""
    out = []  # type: list
    i = 0
    while i < len(steps):
        obj, tname, via = steps[i]
        if via == "__dict__" and i + 1 < len(steps) and steps[i + 1][1] == "dict":
            nxt = steps[i + 1][2]
            if nxt.startswith("['") and nxt.endswith("']"):
                out.append((obj, tname, "." + nxt[2:-2]))
                i += 2
                continue
        if via == "__closure__" and i + 2 < len(steps) and steps[i + 2][1] == "cell":
            idx = steps[i + 1][2]
            name = "?"
            try:
                name = obj.__code__.co_freevars[int(idx.strip("[]"))]
            except Exception:
                pass
            out.append((obj, tname, "closure var " + name))
            i += 3
            continue
        out.append((obj, tname, via))
        i += 1
    return out


def _frame_roots(agent_file):  # type: (str) -> dict
    """id(obj) -> description, for locals of every running function frame of every thread.

    A local held only by a running frame has no gc referrer, so these are roots of their own.
    Our own frames (the agent's, and the bootstrap's just below them) are skipped; module-level
    frames are too: their "locals" are the module's globals, reached through sys.modules.
    """
    roots = {}  # type: dict
    threading = sys.modules.get("threading")
    names = {}
    if threading is not None:
        try:
            for ident, th in list(getattr(threading, "_active", {}).items()):
                names[ident] = th.name
        except Exception:
            pass
    me = _thread.get_ident()
    for ident, frame in sys._current_frames().items():
        tname = names.get(ident, "thread-%d" % ident)
        f = frame  # type: Any
        if ident == me:
            while f is not None and f.f_code.co_filename == agent_file:
                f = f.f_back
            if f is not None:
                f = f.f_back  # the bootstrap line itself
        while f is not None:
            code = f.f_code
            if code.co_flags & 1:  # CO_OPTIMIZED: a function frame
                try:
                    items = list(f.f_locals.items())
                except Exception:
                    items = []
                for var, val in items:
                    if type(var) is str and id(val) not in roots:
                        roots[id(val)] = "thread %s, %s() in %s line %d, local %s" % (
                            tname, code.co_name, _short_file(code.co_filename), f.f_lineno, var)
            f = f.f_back
        del f
    frame = None  # type: ignore[assignment]  # our own thread's frame may be the last one seen: no cycle through it
    return roots


def _match_types(counts_by_type, query):  # type: (dict, str) -> list
    exact = []
    loose = []
    for t in counts_by_type:
        full = type_name(t)
        if full == query:
            exact.append(t)
            continue
        qual = _type_qualname.__get__(t, type)
        if qual == query or type.__dict__["__name__"].__get__(t, type) == query:
            loose.append(t)
    return exact or loose


def _empty(lists):  # type: (list) -> None
    """Empty a list of lists, and the lists in it (which may hold it: see cmd_backrefs)."""
    for x in lists:
        del x[:]
    del lists[:]


def cmd_backrefs(params):  # type: (dict) -> dict
    t0 = time.perf_counter()
    budget = float(params.get("budget", 5.0))
    max_depth = int(params.get("max_depth", 12))
    want = int(params.get("samples", 10))
    query = params["type"]
    try:
        gens = [gc.get_objects(g) for g in (0, 1, 2)]  # oldest last: newest instances first
    except TypeError:  # pragma: no cover - generation= exists since 3.8
        gens = [gc.get_objects()]
    # gens was in the young generation while gc.get_objects(0) listed it: gens[0] holds gens, a
    # cycle that would keep every object listed until the target's next collection. Emptied below.
    counts = {}  # type: dict
    for objs in gens:
        if _count_elements is not None:
            _count_elements(counts, map(type, objs))
    matched = _match_types(counts, query)
    if not matched:
        named = {}  # type: dict
        for t, n in counts.items():
            named[type_name(t)] = named.get(type_name(t), 0) + n
        _empty(gens)
        return {"status": "unknown", "query": query, "names": sorted(named, key=lambda k: -named[k])[:5000]}
    names = sorted(set(type_name(t) for t in matched))
    if len(names) > 1:
        _empty(gens)
        return {"status": "ambiguous", "query": query, "candidates": [[n, sum(counts[t] for t in matched if type_name(t) == n)] for n in names]}
    tset = set(matched)
    found = 0
    sample = []  # type: list
    hits = None  # type: Any
    for objs in gens:
        hits = [o for o in objs if type(o) in tset]
        found += len(hits)
        if len(sample) < want:
            sample.extend(hits[::-1][:want - len(sample)])
        hits = None
    objs = None
    _empty(gens)
    del gens, counts, tset, matched
    scan_s = time.perf_counter() - t0
    _start_clock(max(0.0, budget - scan_s))
    _phase("referrers")
    try:
        return _search(sample, names[0], found, budget, max_depth, t0, scan_s)
    finally:
        del sample[:]


def _search(sample, tname, found, budget, max_depth, t0, scan_s):  # type: (list, str, int, float, int, float, float) -> dict
    module_dicts = {}  # type: dict
    modules = {}  # type: dict
    for name, mod in list(sys.modules.items()):
        if issubclass(type(mod), _ModuleType):  # not isinstance(): that may run a lazy proxy's __class__
            try:
                module_dicts[id(_module_dict.__get__(mod, _ModuleType))] = name
                modules[id(mod)] = name
            except Exception:
                pass
    frames = _frame_roots(_G.get("__file__", "\0"))
    nodes = {}  # id -> object: everything discovered (keeps them alive only while we run)
    down = {}  # type: dict  # id(holder) -> [id(child)]: referrer edges among discovered objects
    roots = {}  # type: dict  # id(root node) -> description; frame roots are virtual: "frame:<id>"
    for o in sample:
        nodes[id(o)] = o
    own = {id(sample), id(nodes), id(down), id(roots), id(module_dicts), id(modules), id(frames), id(_G)}
    partial = False
    reason = ""
    levels = 0
    opaque = {}  # type: dict  # type -> referrers of a C type whose traverse we did not run
    frontier = list(sample)
    own.add(id(frontier))

    def note_roots(objs):  # type: (list) -> None
        for x in objs:
            xid = id(x)
            if xid in module_dicts:
                roots[xid] = "module " + module_dicts[xid]
            elif xid in modules:
                roots[xid] = "module " + modules[xid]
            if xid in frames:
                key = "frame:%d" % xid
                roots[key] = frames[xid]
                down.setdefault(key, []).append(xid)

    note_roots(frontier)
    args = refs = nxt = fset = ambiguous = r = None  # type: Any
    extra = 0
    while frontier:
        if _rooted(sample, roots, down) >= len(sample):
            # All rooted: a couple more levels (within half the budget) if the module that defines
            # a holder's class is not among the roots yet; _chains then prefers the chain from it.
            if (extra >= _OWNER_LEVELS or levels >= max_depth or time.perf_counter() - t0 > budget / 2
                    or not _owners_missing(sample, roots, down, nodes, module_dicts)):
                break
            extra += 1
        if levels >= max_depth:
            partial, reason = True, "max depth %d reached" % max_depth
            break
        why = _stopped() or ("memory" if len(nodes) > _MAX_NODES else "")
        if why:
            partial, reason = True, _STOP_REASONS[why] % {"budget": budget}
            break
        levels += 1
        args = tuple(x for x in frontier if id(x) not in roots)
        fset = set(id(x) for x in args)
        own.add(id(args))
        own.add(id(fset))
        refs = gc.get_referrers(*args)  # compares pointers only: safe whatever the referrer
        own.add(id(refs))
        nxt = []
        own.add(id(nxt))
        ambiguous = []  # opaque referrers holding more than one candidate: resolved below
        own.add(id(ambiguous))
        for r in refs:
            rid = id(r)
            if rid in own or type(r) is _FrameType:
                continue
            if r is args:
                continue  # the argument tuple of get_referrers itself (listed on 3.14+; 3.8-3.13 skip it).
                # Never a tuple merely equal to it: a closure of one cell is (cell,) too.
            held = _held(r, fset, args, opaque)
            if held is None:
                ambiguous.append(r)
                continue
            if held:
                down.setdefault(rid, []).extend(held)
                if rid not in nodes:
                    nodes[rid] = r
                    nxt.append(r)
        r = None
        refs = None
        if ambiguous:
            for rid, held in _resolve(ambiguous, args, own).items():
                down.setdefault(rid, []).extend(held)
                if rid not in nodes:
                    for x in ambiguous:
                        if id(x) == rid:
                            nodes[rid] = x
                            nxt.append(x)
        ambiguous = args = fset = None
        note_roots(nxt)
        frontier[:] = nxt
        nxt = None
    search_s = time.perf_counter() - t0 - scan_s
    chains = _chains(sample, roots, down, nodes, tname)
    graph = _graph(chains, nodes, roots, tname)
    grouped = {}  # type: dict
    for ch in chains:
        key = (ch["root"], tuple((s["type"], _shape(s["via"])) for s in ch["path"]))
        if key in grouped:
            grouped[key]["count"] += 1
        else:
            grouped[key] = {"root": ch["root"], "count": 1, "path": ch["path"]}
    unrooted = len(sample) - len(chains)
    held_c, cycle = (0, 0) if partial or not unrooted else _unrooted_kinds(sample, roots, down, nodes)
    opaque_named = {}  # type: dict
    for t, n in opaque.items():
        opaque_named[type_name(t)] = opaque_named.get(type_name(t), 0) + n
    opaque.clear()
    for ch in grouped.values():
        for s in ch["path"]:
            s.pop("_id", None)
    nodes.clear()
    down.clear()
    return {
        "status": "ok",
        "type": tname,
        "found": found,
        "sampled": len(sample),
        "unrooted": unrooted,
        "unrooted_held_from_c": held_c,
        "unrooted_cycle": cycle,
        "unrooted_limit": unrooted if partial else 0,
        "chains": sorted(grouped.values(), key=lambda c: -c["count"]),
        "graph": graph,
        "partial": partial,
        "reason": reason,
        "opaque": opaque_named,
        "levels": levels,
        "scan_s": scan_s,
        "search_s": search_s,
        "allocated": _alloc_sites(sample),  # [tracing, innermost allocation frame per sampled instance]
    }


def _held(r, fset, args, opaque):  # type: (object, set, tuple, dict) -> Any
    """ids of the candidates (fset) that referrer r holds, without running r's traverse unless
    it is trusted (the header's rule); None when r is opaque and which candidate it holds is
    unknown (more than one)."""
    rtype = type(r)
    if _trusted(rtype):
        return [id(c) for c in gc.get_referents(r) if id(c) in fset and c is not rtype]
    if issubclass(rtype, _ModuleType):
        try:
            d = _module_dict.__get__(r, _ModuleType)
        except Exception:
            return []
        return [id(d)] if id(d) in fset else []
    opaque[rtype] = opaque.get(rtype, 0) + 1
    if len(args) == 1:
        return [id(args[0])]  # get_referrers found r: it holds the only candidate
    return None


def _resolve(ambiguous, args, own):  # type: (list, tuple, set) -> dict
    """Which candidates each opaque referrer holds, by bisecting the candidates with
    gc.get_referrers (pointer comparisons only): about 2*log2(len(args)) heap scans."""
    out = {}  # type: dict
    stack = [(ambiguous, args)]
    own.add(id(stack))
    while stack and not _stopped():
        rs, cs = stack.pop()
        if len(cs) == 1:
            for x in rs:
                out.setdefault(id(x), []).append(id(cs[0]))
            continue
        mid = len(cs) // 2
        for part in (cs[:mid], cs[mid:]):
            hit = set(id(h) for h in gc.get_referrers(*part))
            sub = [x for x in rs if id(x) in hit]
            if sub:
                stack.append((sub, part))
    del stack[:]
    return out


def _shape(via):  # type: (str | None) -> str | None
    if via and via.startswith("[") and via.endswith("]"):
        return "[]"
    return via


def _rooted(sample, roots, down):  # type: (list, dict, dict) -> int
    reach = _below(list(roots), down)
    return sum(1 for o in sample if id(o) in reach)


_OWNER_LEVELS = 2


def _parents(starts, down):  # type: (list, dict) -> dict
    """Breadth-first parent links from ``starts`` along the discovered referrer edges."""
    parent = {}  # type: dict
    queue = list(starts)
    for r in queue:
        parent[r] = None
    i = 0
    while i < len(queue):
        n = queue[i]
        i += 1
        for c in down.get(n, ()):
            if c not in parent:
                parent[c] = n
                queue.append(c)
    return parent


def _path_ids(oid, parent):  # type: (int, dict) -> list
    ids = []
    n = oid  # type: Any
    while n is not None:
        ids.append(n)
        n = parent[n]
    ids.reverse()  # root first
    return ids


def _owner_module(ids, nodes):  # type: (list, dict) -> str
    """The module defining the class of the nearest holder on a path that is not a builtin
    container (for a class object: the module defining that class); "" when there is none."""
    for nid in reversed(ids[:-1]):
        if isinstance(nid, str):
            continue
        obj = nodes[nid]
        try:
            t = obj if issubclass(type(obj), type) else type(obj)  # never isinstance(): a __class__ property is user code
            mod = _type_module.__get__(t, type)
        except Exception:
            continue
        if isinstance(mod, str) and mod not in _NOT_OWNERS:
            return mod
    return ""


# A deque or OrderedDict is no more `collections`' than a list is builtins'; a callback queued on
# an event loop (asyncio.events.Handle) is not owned by asyncio.events.
_NOT_OWNERS = ("builtins", "collections", "asyncio.events")


def _below(starts, down):  # type: (list, dict) -> set
    """Everything the discovered referrer edges lead to from ``starts`` (not the starts)."""
    reach = set()  # type: set
    stack = list(starts)
    while stack:
        n = stack.pop()
        for c in down.get(n, ()):
            if c not in reach:
                reach.add(c)
                stack.append(c)
    return reach


def _unrooted_kinds(sample, roots, down, nodes):  # type: (list, dict, dict, dict) -> tuple
    """(held from C, cycle only) among the sampled instances no root reaches, once the search ran
    out of referrers. Above an instance held from C (or by a frame the search does not list) some
    holder has no referrer at all; above one held by a reference cycle only, every holder is held
    by another: nothing outside the cycle keeps it, the collector will free it."""
    children = set()  # type: set
    for kids in down.values():
        children.update(kids)
    rooted = _below(list(roots), down)
    tops = [k for k in nodes if k not in children and k not in roots]
    above_c = _below(tops, down)
    above_c.update(tops)
    held_c = sum(1 for o in sample if id(o) not in rooted and id(o) in above_c)
    cycle = sum(1 for o in sample if id(o) not in rooted and id(o) not in above_c)
    return held_c, cycle


def _owners_missing(sample, roots, down, nodes, module_dicts):  # type: (list, dict, dict, dict, dict) -> bool
    """Is some sample's owner module (see _owner_module) loaded but not reached by the search yet?"""
    found = set(v for v in roots.values() if v.startswith("module "))
    loaded = set(module_dicts.values())
    parent = _parents(list(roots), down)
    for o in sample:
        if id(o) in parent:
            owner = _owner_module(_path_ids(id(o), parent), nodes)
            if owner and owner in loaded and "module " + owner not in found:
                return True
    return False


def _chains(sample, roots, down, nodes, tname):  # type: (list, dict, dict, dict, str) -> list
    """Shortest root->instance path for each sampled instance, over the discovered edges; when the
    module that defines the holder's class is a root too, the shortest path from that module."""
    parent = _parents(list(roots), down)
    module_roots = {}  # type: dict
    for key, desc in roots.items():
        if isinstance(key, int) and desc.startswith("module "):
            module_roots.setdefault(desc, key)
    from_owner = {}  # type: dict
    chains = []
    for o in sample:
        oid = id(o)
        if oid not in parent:
            continue
        ids = _path_ids(oid, parent)
        owner = "module " + _owner_module(ids, nodes)
        if owner in module_roots and roots.get(ids[0]) != owner:
            if owner not in from_owner:
                from_owner[owner] = _parents([module_roots[owner]], down)
            if oid in from_owner[owner]:
                ids = _path_ids(oid, from_owner[owner])
        root_key = ids[0]
        steps = []
        for k, nid in enumerate(ids):
            if isinstance(nid, str):
                continue  # virtual frame root: described by its text
            obj = nodes[nid]
            nxt_obj = nodes[ids[k + 1]] if k + 1 < len(ids) else None
            via = _via(obj, nxt_obj) if nxt_obj is not None else ""
            steps.append((obj, type_name(type(obj)), via))
        steps = _collapse(steps)
        path = []
        for obj, name, via in steps:
            step = {"type": name, "via": via or None, "_id": id(obj)}  # type: dict
            label = _object_name(obj)
            if label:
                step["name"] = label
            path.append(step)
        if path and path[0]["_id"] in module_dict_ids(roots):
            path[0]["type"] = "module"
            path[0]["name"] = roots[path[0]["_id"]][len("module "):]
            via = path[0]["via"] or ""
            if via.startswith("['") and via.endswith("']"):
                path[0]["via"] = "." + via[2:-2]
        desc = roots[root_key]
        chains.append({"root": desc, "path": path})
    return chains


def _object_name(obj):  # type: (object) -> str
    """A name for classes, functions and modules: read from C-level slots, never by user code."""
    try:
        if issubclass(type(obj), type):
            return type_name(obj)  # type: ignore[arg-type]
        if type(obj) is _FunctionType:
            return obj.__qualname__  # type: ignore[attr-defined, no-any-return]
        if type(obj) is _ModuleType:
            name = obj.__dict__.get("__name__")
            return name if isinstance(name, str) else ""
    except Exception:
        pass
    return ""


def module_dict_ids(roots):  # type: (dict) -> set
    return set(k for k, v in roots.items() if isinstance(k, int) and v.startswith("module "))


def _graph(chains, nodes, roots, tname):  # type: (list, dict, dict, str) -> dict
    ids = {}  # type: dict
    gnodes = []  # type: list
    edges = []  # type: list
    seen_edges = set()  # type: set
    for ch in chains:
        prev = None
        if ch["path"] and ch["path"][0]["_id"] not in module_dict_ids(roots):
            key = "root:" + ch["root"]
            if key not in ids:
                ids[key] = "n%d" % len(ids)
                gnodes.append({"id": ids[key], "label": ch["root"], "role": "root", "type": "root"})
            prev = (ids[key], "")
        for k, step in enumerate(ch["path"]):
            key = step["_id"]
            last = k == len(ch["path"]) - 1
            if key not in ids:
                ids[key] = "n%d" % len(ids)
                role = "target" if last else ("root" if k == 0 and prev is None else ("holder" if k == len(ch["path"]) - 2 else "path"))
                label = ch["root"] if role == "root" else (step["type"] + (" " + step["name"] if step.get("name") else ""))
                gnodes.append({"id": ids[key], "label": label, "role": role, "type": step["type"]})
            if prev is not None:
                e = (prev[0], ids[key], prev[1])
                if e not in seen_edges:
                    seen_edges.add(e)
                    edges.append({"src": e[0], "dst": e[1], "label": e[2]})
            prev = (ids[key], step["via"] or "")
    return {"nodes": gnodes, "edges": edges}


COMMANDS["backrefs"] = cmd_backrefs


# @part trace
# ---------------------------------------------------------------------------------------------
# trace: tracemalloc sessions (`introspect trace start|show|stop`)
#
# _tracemalloc is the C module behind tracemalloc, builtin in every CPython 3.8-3.15 (the
# pure-Python tracemalloc module would stay in sys.modules). A session we start is recorded in one
# small module, __introspect_trace__ (plain values and one lock), and ended by a timer thread
# started with _thread: it blocks on that lock until the session's end time, then stops tracing if
# the session is still ours. It lives in the target, so the session ends on time whatever happens
# to the CLI (killed, machine gone). `trace stop` releases the lock: the thread ends at once.
# While tracing we leave: that module, that thread (blocked, no CPU), tracemalloc's own tables
# and its allocator hooks. After stop or the end: none of them (tracing off, traces freed).
# Tracing the application started itself (-X tracemalloc, tracemalloc.start()) is never ours:
# shown, never stopped. A process forked while we trace inherits tracing but not the thread: its
# `trace show` says so and `trace start`/`stop` take the session over / end it there.

TRACE_MODULE = "__introspect_trace__"
# The target's pid: a snapshot's walker compiles this part in the fork, where cmd_snapshot left it.
_PID = _G.get("_TARGET_PID") or posix.getpid()  # type: ignore[attr-defined]
_TRACE_BYTES_PER_TRACE = 40  # tracemalloc's own memory per live trace is 60-68 B (measured, 3.8/3.15): an over-estimate of the count
_MAX_SITES = 20000  # sites returned by one show, largest first


def _trace_timer(tm, modules, name, session, wake, clock, until):  # type: (Any, dict, str, str, Any, Any, float) -> None
    """The session's end, on its own thread. Runs with globals holding only __builtins__ (the
    agent's globals are cleared when it returns): everything it needs comes as arguments."""
    try:
        while True:
            left = until - clock()
            if left <= 0:
                break
            if wake.acquire(True, left if left < 3600.0 else 3600.0):
                return  # released by `trace stop` or a restart: that caller ended the session
        mod = modules.get(name)
        if mod is not None and mod.__dict__.get("session") == session:
            mod.__dict__["session"] = ""
            if tm.is_tracing():
                tm.stop()
            if modules.get(name) is mod:
                del modules[name]
    except BaseException:  # noqa: BLE001 - never a traceback on the target's stderr
        pass


def _trace_mod():  # type: () -> Any
    mod = sys.modules.get(TRACE_MODULE)
    return mod if mod is not None and issubclass(type(mod), _ModuleType) else None


def _trace_end(mod):  # type: (Any) -> None
    """End our session: the timer thread wakes and returns, the module goes."""
    d = mod.__dict__
    d["session"] = ""
    try:
        d["wake"].release()
    except Exception:
        pass  # already released (inherited over fork, or a second stop)
    if sys.modules.get(TRACE_MODULE) is mod:
        del sys.modules[TRACE_MODULE]


def _trace_facts(tm):  # type: (Any) -> dict
    mod = _trace_mod()
    tracing = tm.is_tracing()
    facts = {"tracing": tracing, "owner": None, "remaining_s": None, "session": None,
             "frames": tm.get_traceback_limit() if tracing else None,
             "traced": list(tm.get_traced_memory()), "tracemalloc_memory": tm.get_tracemalloc_memory(),
             "inherited_from": None}  # type: dict
    if tracing:
        if mod is not None and mod.__dict__.get("session"):
            d = mod.__dict__
            facts["owner"] = "introspect"
            facts["session"] = d["session"]
            facts["remaining_s"] = max(0.0, d["until"] - time.monotonic())
            if d.get("pid") != _PID:
                facts["inherited_from"] = d.get("pid")
                facts["remaining_s"] = None  # no timer here: the thread stayed in the parent
        else:
            facts["owner"] = "application"
    return facts


def cmd_trace_start(params):  # type: (dict) -> dict
    tm = _builtin("_tracemalloc")
    frames = int(params.get("frames", 1))
    for_s = float(params.get("for_s", 600.0))
    mod = _trace_mod()
    restarted = False
    if tm.is_tracing():
        if mod is None or not mod.__dict__.get("session"):
            facts = _trace_facts(tm)
            facts["status"] = "application"  # theirs: left exactly as it is
            return facts
        if tm.get_traceback_limit() != frames:
            tm.stop()  # a different depth needs a fresh start (tracemalloc keeps the old limit otherwise)
            restarted = True
        _trace_end(mod)  # ours (or inherited over fork): a new session replaces it, new end time
        status = "restarted" if restarted else "extended"
    else:
        if mod is not None:
            _trace_end(mod)  # ours, but tracing was stopped by someone else
        status = "started"
    session = "%d-%d" % (posix.getpid(), int(time.time() * 1e6))  # type: ignore[attr-defined]
    wake = _thread.allocate_lock()
    wake.acquire()
    until = time.monotonic() + for_s
    mod = _ModuleType(TRACE_MODULE, "introspect: a tracemalloc session; ends by itself (see `introspect trace`)")
    mod.__dict__.update({"session": session, "until": until, "pid": posix.getpid(), "wake": wake})  # type: ignore[attr-defined]
    if not tm.is_tracing():
        tm.start(frames)
    sys.modules[TRACE_MODULE] = mod
    b = sys.modules.get("builtins")
    timer = _FunctionType(_trace_timer.__code__, {"__builtins__": vars(b) if b is not None else {}},  # type: ignore[misc]
                          "introspect_trace_timer")
    try:
        _thread.start_new_thread(timer, (tm, sys.modules, TRACE_MODULE, session, wake, time.monotonic, until))
    except BaseException:
        _trace_end(mod)  # no timer, no tracing: never a trace without its end
        tm.stop()
        raise
    facts = _trace_facts(tm)
    facts["status"] = status
    return facts


def _own_lines():  # type: () -> set
    """(file, line) of the bootstrap frames running us (the injector's <string> line, the pep768
    script), as tracemalloc names them: what they allocate now is ours."""
    own = set()
    f = sys._getframe(1)  # type: Any
    while f is not None:
        name = f.f_code.co_filename
        if name == "<string>" or (_LIMIT["dir"] and name.startswith(_LIMIT["dir"])):
            own.add((name, f.f_lineno))
        elif name != _G.get("__file__") and name != "<introspect-bootstrap>":
            break
        f = f.f_back
    f = None
    return own


def _trace_sites(tm, depth, agent_file, max_traces, child=False):  # type: (Any, int, str, int, bool) -> dict
    """Live traces grouped by their `depth` innermost frames, largest first. Reading them
    (_tracemalloc._get_traces) makes one tuple per trace in this process: refused above
    max_traces (estimated from tracemalloc's own memory), and the grouping stops on the budget."""
    out = {"sites": [], "traces": 0, "partial": False, "reason": "", "own_skipped": 0, "more_sites": 0}  # type: dict
    est = tm.get_tracemalloc_memory() // _TRACE_BYTES_PER_TRACE
    out["estimated_traces"] = est
    if est > max_traces:
        # Hook for the forked snapshot: there, a child reads the traces of its frozen copy and no
        # temporary list is made here. In-process we refuse rather than allocate ~100 B per trace.
        out["partial"] = True
        out["reason"] = "about %d traces live, above --max-traces %d: not read in-process" % (est, max_traces)
        return out
    own_lines = _own_lines()
    traces = tm._get_traces()
    if child:
        # The walker is a disposable copy that inherited tracing: with the traces copied, it stops
        # tracing its own allocations (each would cost a traceback; niced, on a busy host, the
        # grouping then took longer than the request's deadline).
        tm.stop()
    groups = {}  # type: dict
    own = 0
    try:
        n = len(traces)
        out["traces"] = n
        for k in range(0, n, _SLICE):
            why = _stopped()
            if why:
                out["partial"] = True
                out["reason"] = _STOP_REASONS.get(why, why) % {"budget": _LIMIT.get("budget_s", 0)}
                break
            for tr in traces[k:k + _SLICE]:
                key = tr[2][:depth]
                g = groups.get(key)
                if g is None:
                    groups[key] = [tr[1], 1]
                else:
                    g[0] += tr[1]
                    g[1] += 1
    finally:
        traces = None
    for key in list(groups):
        if key and (key[0] in own_lines or _own_file(key[0][0], agent_file)):
            own += groups.pop(key)[1]  # the agent's own allocations (this list included) and our session's module
    out["own_skipped"] = own
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])
    groups.clear()
    out["more_sites"] = max(0, len(ranked) - _MAX_SITES)
    out["sites"] = [[[list(f) for f in key], g[0], g[1]] for key, g in ranked[:_MAX_SITES]]
    return out


def _trace_child_show(depth):  # type: (int) -> dict
    """`trace show` in the snapshot's walker: the frozen copy's traces, read and grouped here, so
    the target pays only for the fork (in-process, reading them pauses it ~5-25 us per trace)."""
    _LIMIT["stop"], _LIMIT["dir"] = float("inf"), ""  # the walker has its own deadline (SIGALRM)
    tm = _builtin("_tracemalloc")
    facts = _trace_facts(tm)
    facts["status"] = "ok"
    facts["sites"] = []
    if facts["tracing"]:
        facts.update(_trace_sites(tm, max(1, depth), str(_G.get("__file__", "")), 1 << 62, child=True))
    return facts


def cmd_trace_show(params):  # type: (dict) -> dict
    tm = _builtin("_tracemalloc")
    facts = _trace_facts(tm)
    facts["status"] = "ok"
    facts["sites"] = []
    if facts["tracing"]:
        budget = float(params.get("budget", 10.0))
        _LIMIT["budget_s"] = budget
        _start_clock(budget)
        facts.update(_trace_sites(tm, max(1, int(params.get("traceback", 1))), str(_G.get("__file__", "")),
                                  int(params.get("max_traces", 200000))))
    return facts


def cmd_trace_stop(params):  # type: (dict) -> dict
    """What was seen last, then the end of our session (never of the application's tracing)."""
    tm = _builtin("_tracemalloc")
    if params.get("read", True):
        facts = cmd_trace_show(params)
    else:  # the last figures were read in a forked snapshot just before
        facts = _trace_facts(tm)
        facts["sites"] = []
    mod = _trace_mod()
    facts["stopped"] = False
    if facts["owner"] == "introspect" and mod is not None:
        _trace_end(mod)
        tm.stop()
        facts["stopped"] = True
    elif mod is not None:
        _trace_end(mod)  # a stale record of ours (tracing stopped by someone else): gone too
    facts["tracing_after"] = tm.is_tracing()
    facts["tracemalloc_memory_after"] = tm.get_tracemalloc_memory()
    return facts




COMMANDS["trace_start"] = cmd_trace_start
COMMANDS["trace_show"] = cmd_trace_show
COMMANDS["trace_stop"] = cmd_trace_stop


# @part walker
# ---------------------------------------------------------------------------------------------
# tracing in the walker's copy. Each allocation traced costs a traceback and a table entry; the
# walk makes several objects per object it records, and with the copy tracing them it ran 6-20x
# slower (0.99 s -> 11.6 s for 114k objects on Debian's 3.11). The copy needs the traces only to
# say where recorded objects were allocated, and those existed at the fork. So before walking, in
# the copy only (ctypes, CPython's exported API): the allocators tracemalloc wraps are put back
# (PyMem_SetAllocator: unlike tracemalloc.stop() this keeps every trace, and traces nothing new),
# and its "tracing" flag is cleared until the walk is over (each object made still cost a lookup
# in its table: 1.5-2x), as is 3.13+'s reference tracer (the same lookup). The copy frees no
# recorded object (it holds them all until os._exit), so their traces stay true; blocks it frees
# keep a stale trace, but those are its own, never asked about.

_TRACE_WALK = {}  # type: dict  # "paused", "flag" (the tracing int), "block" (lookup by address)


def _trace_pause():  # type: () -> str
    """Stop tracing the copy's own allocations, keeping the traces: "paused", or why not."""
    tm = sys.modules.get("_tracemalloc")
    if tm is None or not tm.is_tracing():
        return "not tracing"
    gil = getattr(sys, "_is_gil_enabled", None)
    if gil is not None and not gil():  # its allocators and tracemalloc's state are laid out apart
        return "a free-threaded build: the copy traced its own allocations"
    try:
        import ctypes  # the copy may import anything: nothing reaches the target (DESIGN.md)

        class Alloc(ctypes.Structure):  # PyMemAllocatorEx
            _fields_ = [(n, ctypes.c_void_p)
                        for n in ("ctx", "malloc", "calloc", "realloc", "free")]

        api = ctypes.pythonapi
        get, put = api.PyMem_GetAllocator, api.PyMem_SetAllocator
        for f in (get, put):
            f.restype = None
            f.argtypes = (ctypes.c_int, ctypes.POINTER(Alloc))
        hooks = []
        for domain in (0, 1, 2):  # PYMEM_DOMAIN_RAW, _MEM, _OBJ
            hooks.append(Alloc())
            get(domain, ctypes.byref(hooks[-1]))
        raw, mem, obj = hooks
        size = ctypes.sizeof(Alloc)
        # tracemalloc's hooks (3.8-3.15): ctx points into its struct {mem, raw, obj} of the
        # allocators it wraps, one free function for all three. Anything else: left alone.
        if not (mem.ctx and raw.ctx == mem.ctx + size and obj.ctx == mem.ctx + 2 * size
                and mem.malloc == obj.malloc and raw.free == mem.free == obj.free):
            return "another allocator hook wraps tracemalloc's: the copy traced its own allocations"
        wrapped = [Alloc.from_buffer_copy(Alloc.from_address(h.ctx)) for h in hooks]
        if not all(w.malloc and w.free and w.free != h.free for w, h in zip(wrapped, hooks)):
            return ("tracemalloc's wrapped allocators could not be read: "
                    "the copy traced its own allocations")
        _TRACE_WALK["wrapped"] = wrapped
        for domain in (2, 1, 0):
            put(domain, ctypes.byref(wrapped[domain]))
        # The flag: {initialized, tracing, max_nframe} ints, exported as _Py_tracemalloc_config up
        # to 3.11, just before the allocators' struct in _PyRuntime.tracemalloc from 3.12. Taken
        # only if it reads {1, 1, the traceback limit} and clearing it is what is_tracing() sees.
        try:
            at = ctypes.addressof(ctypes.c_int.in_dll(api, "_Py_tracemalloc_config")) + 4
        except ValueError:
            at = mem.ctx - 12 if sys.version_info >= (3, 12) else 0
    except Exception as exc:  # noqa: BLE001 - said in the answer; the walk goes on, traced
        return "%s: %s" % (type(exc).__name__, str(exc)[:200])
    try:
        if at:
            cfg = (ctypes.c_int * 3).from_address(at - 4)
            if list(cfg) == [1, 1, tm.get_traceback_limit()]:
                cfg[1] = 0
                if tm.is_tracing():
                    cfg[1] = 1
                else:
                    _TRACE_WALK["flag"] = cfg
        if sys.version_info >= (3, 13):
            tracer = api.PyRefTracer_SetTracer
            tracer.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
            tracer(None, None)  # it updates traces of objects reused from free lists: the copy's
    except Exception:  # noqa: BLE001 - the allocators are unwrapped: paused, with lookups left
        pass
    if "flag" not in _TRACE_WALK:
        return "paused (tracemalloc's flag not found: object creations still looked up)"
    return "paused"


def _trace_resume():  # type: () -> None
    """After the walk: tracemalloc answers lookups again (its flag set; allocators unwrapped)."""
    cfg = _TRACE_WALK.pop("flag", None)
    if cfg is not None:
        cfg[1] = 1


def _trace_block():  # type: () -> Any
    """tracemalloc's lookup of a block by its address (_PyTraceMalloc_GetTraceback, exported by
    3.8-3.15), or None without ctypes: for 3.11's managed-dict instances (see _alloc_sites)."""
    if "block" not in _TRACE_WALK:
        fn = None  # type: Any
        try:
            import ctypes

            fn = ctypes.pythonapi._PyTraceMalloc_GetTraceback
            fn.restype = ctypes.py_object
            fn.argtypes = (ctypes.c_uint, ctypes.c_size_t)
        except Exception:  # noqa: BLE001 - no ctypes here: the held-object stand-in is used
            fn = None
        _TRACE_WALK["block"] = fn
    fn = _TRACE_WALK["block"]
    return None if fn is None else (lambda addr: fn(0, addr))


# @part snapshot
# ---------------------------------------------------------------------------------------------
# forked snapshot: the target pays for a fork; a grandchild walks every object and streams it.
#
# The parent (the target) forks at its safe point, reaps the intermediate child at once (it exits
# right after forking the walker, so the walker is an orphan adopted by init or a subreaper: no
# zombie whatever the target does with SIGCHLD) and returns. The walker is a frozen copy: it may
# call gc.get_referents on anything, because nothing it does reaches the target, but it keeps
# every object it touched alive until os._exit (a refcount reaching zero would run a foreign
# deallocator in a half-copied world, see gh-122695) and never runs a finalizer (gc disabled).
#
# Stream (format 2; introspect/snapshot/records.py is the reader and its docstring the contract),
# written to a FIFO the CLI created in the run dir (a pipe: nothing lands on the target's
# filesystem): SNAP_MAGIC, then frames of kind (1 byte) + length (4 bytes, little endian) +
# payload. "M" meta JSON; "T" new types JSON [[index, name]]; "R" roots JSON [[kind, description,
# position]]; "O" objects and "C" refcount excess (the object's refcount minus our own holds):
# array frames, four uint64 (first position, objects, references, positions known so far), then
# fixed-width little-endian columns (O: sizes int64, type indices int32, reference counts uint32,
# referenced positions int32, gc-tracked flags uint8; C: excess int64); "E" end JSON; "X" error
# JSON; "L" answers to the CLI's questions. No general-purpose serialiser: the CLI reads what a
# possibly hostile process sent, and checks every length and index. Positions number objects in
# the order of first discovery. After "E" the walker answers lines read from the control FIFO:
# "L a b a b ...": how a holds b; "N p p ...": names of modules/classes/functions; "V p ...": free
# variable names of functions; "Q": exit.

SNAP_MAGIC = b"INTROSPECT-SNAPSHOT 2\n"
SNAP_BATCH = 32768
_CodeType = type(_builtin.__code__)
# Code objects are not gc containers (no tp_traverse): their references are read from the stored
# attributes (3.11+ computes co_code and co_varnames afresh on each read: left out, they would be
# new objects of the walker's own).
_CODE_ATTRS = (("co_consts", "co_names", "co_filename", "co_name", "co_qualname", "co_linetable", "co_exceptiontable")
               if sys.version_info >= (3, 11) else
               ("co_consts", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_filename", "co_name", "co_code", "co_lnotab"))


def _load_part(name):  # type: (str) -> None
    """In the walker only: compile the parts the target never needed (see the header: the target
    compiles only what its command runs, because compiling costs it memory it keeps)."""
    if "_snap_walker" not in _G:
        with open(_LIMIT["dir"] + "/" + name, "rb") as f:
            src = f.read()
        exec(compile(src, _OWN_PREFIX + name, "exec"), _G)


def _snap_filters():  # type: () -> Any
    """The live warnings filter list (warnings.filters, or _warnings.filters before warnings is
    imported), read through module dicts so no module __getattr__ runs."""
    for name in ("warnings", "_warnings"):
        mod = sys.modules.get(name)
        if mod is not None:
            flt = mod.__dict__.get("filters")
            if type(flt) is list:
                return flt
    return None


def _grpc_refusal():  # type: () -> str
    """Why the target must not be forked because gRPC's C core is loaded in it, or "".

    gRPC registers fork handlers that run in the target at any fork (measured with grpcio 1.85 on
    tests/victims/grpc_worker.py, a server and clients in one process): its C core's pthread_atfork
    handlers printed "Other threads are currently calling into gRPC, skipping fork() handlers" on
    the target's stderr at most forks, or stopped and restarted its thread pools, and a copy forked
    twice (as ours is) died of SIGSEGV in a gRPC event_engine thread about once in 40 (plain
    os.fork, no agent). With GRPC_ENABLE_FORK_SUPPORT on, its os.register_at_fork hooks also hold the
    target's RPCs until its threads are idle (up to 5 s), and our copy hung inside them (no walker;
    the copy stayed, and so did our reaper thread in the target). Read from module dicts and
    posix.environ only: no code of gRPC's runs."""
    cy = sys.modules.get("grpc._cython.cygrpc")
    if cy is None:
        return ""
    d = cy.__dict__ if type(cy) is type(sys) else {}
    on = d.get("_GRPC_ENABLE_FORK_SUPPORT")
    if type(on) is not bool:  # not set by this grpcio version: what it would read at import
        on = posix.environ.get(b"GRPC_ENABLE_FORK_SUPPORT", b"0").lower() in (b"1", b"yes", b"true")  # type: ignore[attr-defined]
    if on:
        return ("gRPC fork support is on in the target (GRPC_ENABLE_FORK_SUPPORT): its fork hooks would hold its RPCs "
                "during a fork and hang the forked copy; a process with gRPC loaded is never forked, even with --fork")
    return ("gRPC is loaded in the target: its fork handlers would run there (a line on its stderr, or its threads stopped "
            "and restarted) and the forked copy may crash in them; a process with gRPC loaded is never forked, even with --fork")


def cmd_snapshot(params):  # type: (dict) -> Any
    """Fork; the grandchild walks and streams (see above). Returns the parent's pause."""
    t0 = time.perf_counter()
    refused = _grpc_refusal()
    if refused:
        return {"forked": False, "error": refused, "refused": "grpc", "pause_s": time.perf_counter() - t0}
    if params.get("collect"):
        gc.collect()
    # Read before the fork: other threads die in the child, and their frames with them (3.14+
    # frees their stacks: a held frame object then points at unmapped memory). Their locals are
    # held across the fork instead, with the ids of every running frame (never walked as objects).
    frames = sys._current_frames()
    frame_roots, frame_ids = _snap_frames(frames)
    del frames
    # 3.12+ warns about fork() in a multi-threaded process (under -W error 3.15 raises it in the
    # parent, after the child exists). The warning is attributed to this module's name: an exact
    # "ignore" filter for that name alone silences it without touching anyone else's warnings.
    # A container's init (pid 1 of its namespace) inherits every orphan, our walker included, and
    # rarely waits for children it did not start: the walker would stay a zombie in it. There the
    # walker is the target's own child, reaped by the kernel or by our short-lived thread, which
    # then waits out the walk (bounded by its deadline). Elsewhere the walker is a grandchild.
    how = _snap_reaper()
    direct = how != "wait" and posix.getpid() == 1  # type: ignore[attr-defined]
    _G["_TARGET_PID"] = posix.getpid()  # type: ignore[attr-defined]  # for the tracing part, compiled in the walker
    flt = _snap_filters()
    entry = ("ignore", None, DeprecationWarning, _G.get("__name__", "__introspect_agent__"), 0)
    frame_ids.append(id(entry))
    if flt is not None:
        flt.insert(0, entry)
    answering = "answer" in _LIMIT  # run() called us (not a test calling this function directly)
    try:
        t_fork = time.perf_counter()
        pid = posix.fork()  # type: ignore[attr-defined]
        t_fork = time.perf_counter() - t_fork
    except OSError as exc:
        return {"forked": False, "error": "fork failed: %s" % (exc,), "pause_s": time.perf_counter() - t0}
    finally:
        if flt is not None:
            for k in range(len(flt)):
                if flt[k] is entry:
                    del flt[k]
                    break
    if pid == 0:
        try:
            # Out of the target's way before anything else: the second fork, the walker's compile
            # and gc.get_objects() would otherwise compete with the target for its CPUs just as it
            # resumes (the walker inherits this).
            try:
                posix.nice(19)  # type: ignore[attr-defined]
            except OSError:
                pass
            # The answer the parent would write, written here: after the fork every page the parent
            # writes is copied first (~0.5 ms for result.json alone, measured at 1M objects).
            now = time.perf_counter()
            if answering:
                _answer({"forked": True, "child": posix.getpid(), "pause_s": now - t0, "fork_s": t_fork,  # type: ignore[attr-defined]
                         "reaped": _snap_reaped(how, direct), "answered_by": "child"})
            if direct or posix.fork() == 0:  # type: ignore[attr-defined]
                _load_part("walker.py")
                _snap_walker(params, frame_roots, frame_ids)
        finally:
            posix._exit(0)  # type: ignore[attr-defined]
    done = _snap_reap(pid, how, direct)
    if answering and done == how:
        return _ANSWERED  # as the child said: nothing more to do here
    # Our reaper thread could not start: say how it went instead (result.json replaced at once).
    return {"forked": True, "child": pid, "pause_s": time.perf_counter() - t0, "fork_s": t_fork,
            "reaped": _snap_reaped(done, direct)}


def _reap(pid, waitpid=posix.waitpid, error=OSError):  # type: ignore[attr-defined]
    # type: (int, Any, Any) -> None
    """The reaper thread's body: names bound as defaults, so it looks nothing up in our globals
    (cleared when the agent returns) and cannot print (the target's waitpid(-1) may win: ECHILD)."""
    try:
        waitpid(pid, 0)
    except error:
        pass


def _snap_reaper():  # type: () -> str
    """How the target's child will be reaped: "kernel" (SIGCHLD ignored), "thread" (default
    disposition: a short-lived thread of ours waits for it), "wait" (a SIGCHLD handler of the
    target's own, which may reap children itself, or a _thread replaced by gevent/eventlet: the
    agent waits for the child before returning)."""
    sig = _builtin("_signal")
    try:
        disposition = sig.getsignal(sig.SIGCHLD)
    except Exception:
        disposition = None
    if disposition == sig.SIG_IGN:
        return "kernel"
    if disposition == sig.SIG_DFL and type(_thread.start_new_thread).__name__ == "builtin_function_or_method":
        return "thread"
    return "wait"


def _snap_reaped(how, direct):  # type: (str, bool) -> str
    """How the target's child is reaped, in words (``how``: see _snap_reaper and _snap_reap)."""
    said = {"kernel": "by the kernel (SIGCHLD ignored)", "thread": "by a short-lived thread"}.get(how, "waited for")
    return said + (" (the walker itself: pid 1 adopts orphans)" if direct else "")


def _snap_reap(pid, how, direct):  # type: (int, str, bool) -> str
    """Reap the target's child: the intermediate one, which exits once it has forked the walker
    (its fork of the whole address space and its exit take about as long as ours did), or with
    ``direct`` the walker itself in a pid 1 (see cmd_snapshot). ``how``: see _snap_reaper.
    Returns how it was done: ``how``, or "wait" when our thread could not start."""
    if how == "kernel":
        return how
    if how == "thread":
        try:
            _thread.start_new_thread(_reap, (pid,))
            return how
        except Exception:
            if direct:  # never wait out a whole walk: the snapshot is lost, the target is not stopped
                try:
                    posix.kill(pid, 9)  # type: ignore[attr-defined]
                except OSError:
                    pass
    _reap(pid)
    return "wait"


# @part walker
def _snap_send(fd, kind, payload):  # type: (int, bytes, bytes) -> None
    data = memoryview(kind + len(payload).to_bytes(4, "little") + payload)
    while data:
        data = data[posix.write(fd, data):]  # type: ignore[attr-defined]


def _snap_json(obj):  # type: (object) -> bytes
    out = []  # type: list
    _dump(obj, out)
    return "".join(out).encode("utf-8", "backslashreplace")


def _snap_quiet(deadline, keep_fd):  # type: (float, int) -> None
    """Out of the target's way (its lowest priority is set at the fork): first for the OOM killer,
    a hard deadline, no inherited descriptor kept open (a held pipe or socket would delay EOF seen
    by its peer)."""
    try:
        fd = posix.open("/proc/self/oom_score_adj", posix.O_WRONLY)  # type: ignore[attr-defined]
        try:
            posix.write(fd, b"1000")  # type: ignore[attr-defined]
        finally:
            posix.close(fd)  # type: ignore[attr-defined]
    except OSError:
        pass
    sig = _builtin("_signal")
    sig.signal(sig.SIGALRM, sig.SIG_DFL)
    sig.alarm(max(1, int(deadline - time.time()) + 1))
    try:
        null = posix.open("/dev/null", posix.O_RDWR)  # type: ignore[attr-defined]
        sink = (null, null, null)
    except OSError:  # a container root without /dev: a pipe nobody reads, writes never blocking
        r, w = posix.pipe()  # type: ignore[attr-defined]
        posix.set_blocking(w, False)  # type: ignore[attr-defined]
        sink = (r, w, w)
    for k in (0, 1, 2):
        posix.dup2(sink[k], k)  # type: ignore[attr-defined]
    for name in posix.listdir("/proc/self/fd"):  # type: ignore[attr-defined]
        k = int(name)
        if k > 2 and k != keep_fd:
            try:
                posix.close(k)  # type: ignore[attr-defined]
            except OSError:
                pass


def _snap_own(frame_ids, mods):  # type: (list, list) -> dict
    """ids of our own objects (the agent's namespace, the bootstrap's, running frames): never
    recorded, never followed; the frames of running threads are described as roots instead."""
    own = {id(_G): None}  # type: dict
    for i in frame_ids:
        own[i] = None
    stack = [v for k, v in _G.items() if k != "__builtins__"]  # exec put the target's builtins there
    while stack:
        v = stack.pop()
        if id(v) in own:
            continue
        if type(v) is _FunctionType:
            own[id(v)] = None
            stack.extend((v.__defaults__, v.__kwdefaults__, v.__closure__, v.__dict__))
        elif type(v) in (dict, list, tuple, set):
            own[id(v)] = None
            stack.extend(v.values() if type(v) is dict else v)
        elif type(v) is _CellType:
            own[id(v)] = None
    return own


# @part snapshot
def _snap_frames(frames):  # type: (dict) -> tuple
    """In the target, before the fork: ([(description, value)] for the locals of running function
    frames, ours skipped; [ids of every running frame and of the bootstrap's namespace])."""
    names = {}
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            for ident, th in list(threading.__dict__.get("_active", {}).items()):
                names[ident] = th.name
        except Exception:
            pass
    module_dicts = set()
    for m in list(sys.modules.values()):
        d = getattr(m, "__dict__", None)
        if type(d) is dict:
            module_dicts.add(id(d))
    me = _thread.get_ident()
    agent_file = _G.get("__file__", "\0")
    roots = []
    ids = [id(frames)]
    for ident, f in frames.items():
        tname = names.get(ident, "thread-%d" % ident)
        ours = ident == me
        while f is not None:
            ids.append(id(f))
            code = f.f_code
            if ours and (code.co_filename == agent_file or (code.co_filename == "<string>" and not code.co_flags & 1)):
                if id(f.f_globals) not in module_dicts:
                    ids.append(id(f.f_globals))  # the bootstrap's fresh dict (agent source, file)
                f = f.f_back
                continue
            ours = False
            if code.co_flags & 1:  # CO_OPTIMIZED: a function frame
                try:
                    items = list(f.f_locals.items())
                except Exception:
                    items = []
                for var, val in items:
                    if type(var) is str:
                        roots.append(("thread %s, %s() in %s line %d, local %s" % (
                            tname, code.co_name, _short_file(code.co_filename), f.f_lineno, var), val))
            f = f.f_back
    ids.append(id(roots))
    return roots, ids


COMMANDS["snapshot"] = cmd_snapshot


# @part walker
def _snap_walker(params, frame_roots, frame_ids):  # type: (dict, list, list) -> None
    """The grandchild: walk every object once, stream it, answer label questions, never return."""
    gc.disable()  # a collection here would run the target's finalizers (its __del__ may do I/O)
    t0 = time.perf_counter()
    deadline = float(params.get("child_deadline", time.time() + 300))  # the wait for this fork
    # First: with the stream open, any failure below reaches the CLI as an "X" frame at once.
    fd = posix.open(params["stream"], posix.O_WRONLY | posix.O_NONBLOCK)  # type: ignore[attr-defined]
    posix.set_blocking(fd, True)  # type: ignore[attr-defined]
    sent_magic = posix.write(fd, SNAP_MAGIC) == len(SNAP_MAGIC)  # type: ignore[attr-defined]  # < PIPE_BUF: atomic
    if params.get("memory"):  # before the walk: its tables would count as the target's
        _mem_look(deadline)
    err = None
    try:
        walk = params.get("objects", True)  # False: no object walk, only questions (`trace show` reads traces here)
        mods = [(k, v) for k, v in list(sys.modules.items()) if isinstance(k, str)] if walk else []
        if not walk:
            frame_roots = []
        keep = []  # type: list  # every object recorded: alive until _exit
        hold = []  # type: list  # our own objects met on the way: alive too, never recorded
        index = {}  # type: dict  # id -> position
        objs = gc.get_objects() if walk else []
        # The walk's budget scales with the heap (the CLI's --timeout only bounded the wait for the
        # fork): past it the walk answers with what it has, marked partial. The hard deadline
        # (SIGALRM) leaves the CLI time to analyse and ask its questions after that.
        budget = _snap_budget(params, len(objs))
        deadline = time.time() + budget
        _snap_quiet(deadline + budget + float(params.get("answer_s", 60.0)), fd)
        _TRACE_WALK["paused"] = _trace_pause() if walk else "no walk"  # before _snap_own: ctypes
        array = _builtin("array").array
        own = _snap_own(frame_ids, mods)
        for x in [keep, hold, index, objs, mods, own, frame_ids] + frame_roots:
            own[id(x)] = None
        known = set(id(v) for _, v in mods)
        for m in list(sys.modules.values()):  # anything this child imported is ours
            if id(m) not in known:
                own[id(m)] = None
                d = getattr(m, "__dict__", None)
                if type(d) is dict:
                    own[id(d)] = None
        _snap_stream(fd, frame_roots, mods, keep, hold, index, objs, own, array, t0, deadline)
    except BaseException as exc:  # reported to the CLI, never raised anywhere
        err = exc
    if err is not None:
        try:
            if not sent_magic:
                posix.write(fd, SNAP_MAGIC)  # type: ignore[attr-defined]
            _snap_send(fd, b"X", _snap_json({"error": _exc_record(err, "")}))
        except Exception:
            pass
        return
    _trace_resume()
    # Re-armed for the CLI's analysis and questions, sized as the CLI sizes its own wait (+5 s).
    sig = _builtin("_signal")
    sig.alarm(max(1, int(float(params.get("answer_s", 60.0))
                         + float(params.get("answer_per_object_s", 0.0)) * len(keep)) + 5))
    _snap_answer(fd, params, keep, index)


def _snap_budget(params, tracked):  # type: (dict, int) -> float
    """Seconds the walk may take over a heap of ``tracked`` gc-tracked objects (at the fork)."""
    base = float(params.get("walk_base_s", 30.0))
    per = float(params.get("walk_per_object_s", 0.0))
    return max(1.0, base + per * tracked)


def _snap_columns(array, start, count, items, known, columns):
    # type: (Any, int, int, int, int, list) -> bytes
    """An array frame's payload: the header, then each (typecode, list) column as fixed-width
    little-endian items (array's conversion checks each value fits)."""
    out = []
    for code, values in [("Q", [start, count, items, known])] + columns:
        if code == "B":
            out.append(bytes(values))  # flags: bytes() is the fastest conversion, and checks 0..255
            continue
        a = array(code, values)
        if sys.byteorder != "little":
            a.byteswap()
        out.append(a.tobytes())
    return b"".join(out)


def _snap_stream(fd, frame_roots, mods, keep, hold, index, objs, own, array, t0, deadline):
    # type: (int, list, list, list, list, dict, list, dict, Any, float, float) -> None
    for code, width in (("q", 8), ("i", 4), ("I", 4), ("B", 1), ("Q", 8)):
        if array(code).itemsize != width:
            raise RuntimeError("array %r items are %d bytes, not %d"
                               % (code, array(code).itemsize, width))
    facts = _gc_facts()
    _snap_send(fd, b"M", _snap_json({
        "format": 2, "pid": posix.getpid(),  # type: ignore[attr-defined]
        "start_ticks": _snap_start_ticks(), "python": "%d.%d.%d" % sys.version_info[:3], "gc": facts,
        "gc_objects": len(objs), "byteorder": sys.byteorder, "time": time.time(),
    }))
    roots = []  # type: list

    def place(o):  # type: (object) -> int
        i = id(o)
        p = index.get(i)
        if p is None:
            p = index[i] = len(keep)
            keep.append(o)
        return p

    for name, m in mods:
        if id(m) not in own:
            roots.append(["module", name, place(m)])
    for desc, val in frame_roots:
        if id(val) not in own:
            roots.append(["frame", desc, place(val)])
        else:
            hold.append(val)
    for o in objs:
        if id(o) not in own:
            place(o)
    del objs[:]
    _snap_send(fd, b"R", _snap_json(roots))
    getrefs = gc.get_referents
    is_tracked = gc.is_tracked
    getsizeof = sys.getsizeof
    gc_head = _gc_head()
    tindex = {}  # type: dict
    sizers = {}  # type: dict
    # Plain lists in the loop (a list append stores a pointer; an array append converts an int):
    # each batch becomes fixed-width arrays once, when it is sent.
    T, S, F, N, R = [], [], [], [], []  # type: list, list, list, list, list
    newtypes = []  # type: list
    start = pos = 0
    edges = 0
    partial = ""
    refcount = sys.getrefcount
    # Batches of SNAP_BATCH objects, each step a C-level loop over builtins (map over the batch:
    # type, getsizeof, get_referents, is_tracked, id, index.get; chain.from_iterable): Python
    # code runs per object only for what is new (its position) or unusual (sizes not computed in
    # C, code objects, references that are our own or dead). docs/benchmarks.md has the costs.
    chain = _builtin("itertools").chain.from_iterable
    # A dead referent's owners below, calibrated alike: its get_referents list, the flat list of
    # the batch's references, the variable.
    probe = [[object()]]  # type: Any
    refs = list(chain(probe))  # type: Any
    r = refs[0]  # type: Any
    dead_b = refcount(r)
    r = refs = probe = None
    while pos < len(keep):
        stop = min(len(keep), pos + SNAP_BATCH)
        batch = keep[pos:stop]
        types = list(map(type, batch))
        tset = set(types)
        for t in tset:
            if t not in tindex:
                tindex[t] = len(tindex)
                newtypes.append([tindex[t], type_name(t)])
                sizers[t] = _c_sizeof(t)
        T = list(map(tindex.__getitem__, types))
        sizes = None  # type: Any
        if all(sizers[t] for t in tset):
            try:
                sizes = list(map(getsizeof, batch))
            except Exception:
                sizes = None
        if sizes is None:
            sizes = []
            for o in batch:
                try:
                    sizes.append(getsizeof(o) if sizers[type(o)] else object.__sizeof__(o) + gc_head)
                except Exception:
                    sizes.append(0)
        S = sizes
        F = list(map(is_tracked, batch))
        rl = list(map(getrefs, batch))  # type: Any
        if _CodeType in tset:
            for j in range(len(batch)):
                if types[j] is _CodeType:
                    rl[j] = [getattr(batch[j], a) for a in _CODE_ATTRS if hasattr(batch[j], a)]
        N = list(map(len, rl))
        o = None
        batch = types = None  # type: ignore[assignment]  # freed before the references
        R = list(map(index.get, map(id, chain(rl))))
        skipped = []  # type: list  # flat positions of references not recorded (ours, or dead)
        if None in R:
            refs = list(chain(rl))
            for j in [j for j, p in enumerate(R) if p is None]:
                r = refs[j]
                i = id(r)
                p = index.get(i)  # found earlier in this batch
                if p is None:
                    if i in own:
                        hold.append(r)
                        skipped.append(j)
                        continue
                    if refcount(r) <= dead_b:
                        # Owned by nothing but its get_referents list: a dead object a traverse
                        # handed out (gh-122695's free list). Not part of the heap; held, so that
                        # it is never freed twice.
                        own[i] = None
                        hold.append(r)
                        skipped.append(j)
                        continue
                    p = index[i] = len(keep)
                    keep.append(r)
                R[j] = p
            r = refs = None
        rl = None
        if skipped:
            ends = list(_builtin("itertools").accumulate(N))
            bisect = _builtin("_bisect").bisect_right
            for j in skipped:
                N[bisect(ends, j)] -= 1
            drop = set(skipped)
            R = [p for j, p in enumerate(R) if j not in drop]
        edges += len(R)
        if newtypes:
            _snap_send(fd, b"T", _snap_json(newtypes))
            newtypes = []
        _snap_send(fd, b"O", _snap_columns(array, pos, stop - pos, len(R), len(keep),
                                           [("q", S), ("i", T), ("I", N), ("i", R), ("B", F)]))
        T, S, F, N, R = [], [], [], [], []
        pos = stop
        if time.time() > deadline and pos < len(keep):
            partial = ("the walk's budget ran out after %.0f s, %d of %d objects found "
                       "walked (the rest are counted, without their references)"
                       % (time.perf_counter() - t0, pos, len(keep)))
            break
    refs = None
    walk_s = time.perf_counter() - t0
    # Past the budget: every object found is still streamed (sizes and types), none followed.
    while pos < len(keep):
        stop = min(len(keep), pos + SNAP_BATCH)
        for o in keep[pos:stop]:
            t = type(o)
            ti = tindex.get(t)
            if ti is None:
                ti = tindex[t] = len(tindex)
                newtypes.append([ti, type_name(t)])
                sizers[t] = _c_sizeof(t)
            try:
                b = getsizeof(o) if sizers[t] else object.__sizeof__(o) + gc_head
            except Exception:
                b = 0
            T.append(ti)
            S.append(b)
            F.append(is_tracked(o))
        N = [0] * (stop - pos)
        if newtypes:
            _snap_send(fd, b"T", _snap_json(newtypes))
            newtypes = []
        _snap_send(fd, b"O", _snap_columns(array, pos, stop - pos, 0, len(keep),
                                           [("q", S), ("i", T), ("I", N), ("i", []), ("B", F)]))
        T, S, F, N = [], [], [], []
        pos = stop
    # Refcount excess: references the walk could not see (C code, running frames' stacks).
    # Each object is held here by keep, the loop variable and getrefcount's argument; the
    # calibration object below has keep as its only other owner.
    o = None
    keep.append(object())
    probe = keep[-1]
    base = sys.getrefcount(probe)
    del probe
    keep.pop()
    C = []  # type: list
    start = 0
    getrefcount = sys.getrefcount
    for o in keep:
        C.append(getrefcount(o) - base)
        if len(C) >= SNAP_BATCH:
            _snap_send(fd, b"C", _snap_columns(array, start, len(C), 0, len(keep), [("q", C)]))
            start += len(C)
            C = []
    o = None
    if C:
        _snap_send(fd, b"C", _snap_columns(array, start, len(C), 0, len(keep), [("q", C)]))
    end = {"objects": len(keep), "edges": edges, "walk_s": walk_s,
           "total_s": time.perf_counter() - t0}  # type: dict
    if partial:
        end["partial"] = partial
    _snap_send(fd, b"E", _snap_json(end))


def _snap_start_ticks():  # type: () -> int
    """This process's start time (clock ticks since boot, /proc/self/stat field 22): with the pid,
    lets the CLI make sure the process it kills is this walker and not a reused pid."""
    try:
        fd = posix.open("/proc/self/stat", posix.O_RDONLY)  # type: ignore[attr-defined]
        try:
            raw = posix.read(fd, 4096)  # type: ignore[attr-defined]
        finally:
            posix.close(fd)  # type: ignore[attr-defined]
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except Exception:
        return 0


def _snap_answer(fd, params, keep, index=None):  # type: (int, dict, list, Any) -> None
    """Answer the CLI's questions (edge labels, names) about the frozen heap until it says Q."""
    cfd = posix.open(params["control"], posix.O_RDONLY)  # type: ignore[attr-defined]
    buf = b""
    while True:
        chunk = posix.read(cfd, 65536)  # type: ignore[attr-defined]
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.split()
            if not parts or parts[0] == b"Q":
                return
            nums = [int(x) for x in parts[1:]]
            answer = []  # type: list
            if parts[0] == b"L":
                answer = [_snap_via(keep[nums[k]], keep[nums[k + 1]]) for k in range(0, len(nums) - 1, 2)]
            elif parts[0] == b"K":  # one container's labels in one pass (dumps): K pos start count
                answer = _snap_items(keep[nums[0]], index or {}, nums[1], nums[2])
            elif parts[0] == b"V":  # a function's free variable names (closure cells are unnamed)
                answer = [list(getattr(getattr(keep[p], "__code__", None), "co_freevars", ())) for p in nums]
            elif parts[0] == b"G":  # tracemalloc's live traces, grouped by the nums[0] innermost frames
                try:
                    answer = [_trace_child_show(nums[0] if nums else 1)]
                except Exception as exc:  # noqa: BLE001 - the CLI says what failed
                    answer = [{"error": _exc_record(exc, "")}]
            elif parts[0] == b"B":  # the allocators' figures, read before the walk (memory part)
                answer = [_G.get("_MEM") or {}]
            elif parts[0] == b"A":  # where each object was allocated (tracemalloc), innermost frame
                blocks = _trace_block() if _MANAGED_DICT_311 else None
                answer = _alloc_sites([keep[p] for p in nums], blocks)
                answer.append(_TRACE_WALK.get("paused", ""))  # how the copy walked: _trace_pause
            elif parts[0] == b"C":  # items of builtin containers (C-level len, never a Python __len__)
                answer = [_snap_len(keep[p]) for p in nums]
            elif parts[0] == b"P":  # previews of builtin values (never repr() of anything else)
                answer = [_snap_preview(keep[p], 2) for p in nums]
            elif parts[0] == b"W":  # equal str/bytes values held as separate objects
                answer = _snap_dups(keep, nums[0] if nums else 8, nums[1] if len(nums) > 1 else 50)
            else:
                answer = [_snap_name(keep[p]) for p in nums]
            _snap_send(fd, b"L", _snap_json(answer))


_PREVIEW_ATOMS = (str, bytes, int, float, bool, type(None))


def _snap_preview(obj, depth):  # type: (object, int) -> str
    """A short text of a builtin value; a user object is named by its type, never repr()'d (its
    __repr__ is the application's code: a Django QuerySet's queries the database)."""
    x = obj  # type: Any
    t = type(x)
    if t is str or t is bytes:
        return repr(x[:60]) + ("...(%d)" % len(x) if len(x) > 60 else "")
    if t is int:
        return repr(x) if x.bit_length() < 200 else "<int of %d bits>" % x.bit_length()
    if t is float or t is bool or x is None:
        return repr(x)
    if t in (list, tuple, set, frozenset, dict) and depth > 0:
        n = t.__len__(x)
        if t is dict:
            items = []  # type: list
            for k, v in dict.items(x):  # no lookup: a user key's __hash__/__eq__ never runs
                if len(items) >= 4:
                    break
                items.append(_snap_preview(k, 0) + ": " + _snap_preview(v, depth - 1))
            return "{" + ", ".join(items) + (", ...(%d)" % n if n > 4 else "") + "}"
        parts = []  # type: list
        for v in t.__iter__(x):
            if len(parts) >= 4:
                break
            parts.append(_snap_preview(v, depth - 1))
        body = ", ".join(parts) + (", ...(%d)" % n if n > 4 else "")
        shapes = {list: "[%s]", tuple: "(%s)", set: "{%s}", frozenset: "frozenset({%s})"}  # type: dict
        return shapes[t] % body
    if t in (list, tuple, set, frozenset, dict):
        return "<%s of %d>" % (t.__name__, t.__len__(x))
    return "<%s>" % (getattr(t, "__qualname__", "?"),)


def _snap_dups(keep, min_len, top):  # type: (list, int, int) -> list
    """Groups of equal str/bytes values held as distinct objects: [type, length, copies, bytes of
    one, positions of up to 5 copies], the most wasted bytes first. At most 2M values are looked at."""
    seen = {}  # type: dict
    getsizeof = sys.getsizeof
    looked = 0
    for pos, x in enumerate(keep):
        t = type(x)
        if (t is str or t is bytes) and len(x) >= min_len:  # type: ignore[arg-type]
            looked += 1
            if looked > 2000000:
                break
            g = seen.get(x)  # str and bytes never compare equal: one table holds both apart
            if g is None:
                seen[x] = [pos]
            else:
                g.append(pos)
    groups = []  # type: list
    for v, g in seen.items():
        if len(g) > 1:
            one = getsizeof(keep[g[0]])
            groups.append([(len(g) - 1) * one, "str" if type(v) is str else "bytes", len(v), len(g), one, g[:5]])
    groups.sort(key=lambda r: -r[0])
    return [r[1:] for r in groups[:top]]


def _snap_len(x):  # type: (object) -> int
    for base in (dict, list, tuple, set, frozenset):
        if isinstance(x, base):
            return base.__len__(x)  # type: ignore[arg-type]
    return -1


def _snap_items(holder, index, start, count):  # type: (object, dict, int, int) -> Any
    """[True, [position, label], ...] for items start..start+count of a dict (value, then key:
    "(key)") or a list or tuple, in _snap_via's order, so the first pair of each child is its label
    there; [False] for any other holder. One pass instead of one scan per reference (dumps ask for
    every reference's label)."""
    th = type(holder)
    out = [True]  # type: list
    try:
        if isinstance(holder, dict):
            for k, v in _islice(dict.items(holder), start, start + count):
                p = index.get(id(v))
                if p is not None:
                    out.append([p, _key_label(k)])
                p = index.get(id(k))
                if p is not None:
                    out.append([p, "(key)"])
            return out
        if th is list or th is tuple:
            for i in range(start, min(start + count, len(holder))):  # type: ignore[arg-type]
                p = index.get(id(holder[i]))  # type: ignore[index]
                if p is not None:
                    out.append([p, "[%d]" % i])
            return out
    except Exception:
        pass
    return [False]


def _islice(it, start, stop):  # type: (Any, int, int) -> Any
    for k, x in enumerate(it):
        if k >= stop:
            return
        if k >= start:
            yield x


def _snap_via(holder, child):  # type: (object, object) -> str
    """How holder references child (attribute, key, index, closure variable): C-level reads only."""
    th = type(holder)
    try:
        if isinstance(holder, dict):
            for k, v in dict.items(holder):
                if v is child:
                    return _key_label(k)
                if k is child:
                    return "(key)"
            return "(item)"
        if th is list or th is tuple:
            for i, v in enumerate(holder):  # type: ignore[call-overload, arg-type]
                if v is child:
                    return "[%d]" % i
            return "(item)"
        if th is _CellType:
            return "cell_contents"
        if th is _ModuleType:
            return "__dict__"
        if th is _CodeType:
            for attr in _CODE_ATTRS:
                if getattr(holder, attr, None) is child:
                    return "." + attr
            return "(code)"
        if th is _FunctionType:
            for attr in ("__closure__", "__defaults__", "__kwdefaults__", "__globals__", "__dict__", "__code__"):
                if getattr(holder, attr, None) is child:
                    return attr
            return "(function)"
        if th is _MethodType:
            return "__self__" if holder.__self__ is child else "__func__"  # type: ignore[attr-defined]
        if isinstance(holder, type):
            if type(child) is dict and _type_dict.__get__(holder, type) is not None and "__module__" in child:  # type: ignore[operator]
                return "__dict__"
            if child in type.__dict__["__bases__"].__get__(holder, type):
                return "__bases__"
            return "__mro__" if type(child) is tuple else "(type)"
        if isinstance(holder, (set, frozenset)):
            return "{member}"
        if child is th:
            return "__class__"
        try:
            d = object.__getattribute__(holder, "__dict__")
        except Exception:
            d = None
        if d is child:
            return "__dict__"
        if type(d) is dict:
            for k, v in dict.items(d):
                if v is child and type(k) is str:
                    return "." + k
        for klass in _type_mro.__get__(th, type):
            slots = _type_dict.__get__(klass, type).get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                desc = _type_dict.__get__(klass, type).get(name)
                if desc is not None and type(desc).__name__ == "member_descriptor":
                    try:
                        if desc.__get__(holder, th) is child:
                            return "." + name
                    except AttributeError:
                        pass
    except Exception:
        pass
    return "(referent)"


def _snap_name(obj):  # type: (object) -> str
    try:
        if isinstance(obj, type):
            return type_name(obj)  # type: ignore[arg-type]
        if type(obj) is _FunctionType:
            return obj.__qualname__  # type: ignore[attr-defined, no-any-return]
        if type(obj) is _ModuleType:
            name = obj.__dict__.get("__name__")
            return name if isinstance(name, str) else ""
    except Exception:
        pass
    return ""




# @part memory
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
        chunk = posix.read(fd, 65536)  # type: ignore[attr-defined]
        if not chunk:
            return out
        out += chunk


def _mem_read(path):  # type: (str) -> bytes
    fd = posix.open(path, posix.O_RDONLY)  # type: ignore[attr-defined]
    try:
        return _mem_read_fd(fd)
    finally:
        posix.close(fd)  # type: ignore[attr-defined]


def _mem_rss_anon():  # type: () -> int
    for line in _mem_read("/proc/self/status").split(b"\n"):
        if line.startswith(b"RssAnon:"):
            return int(line.split()[1]) * 1024
    return -1


def _mem_capture(call):  # type: (Any) -> bytes
    """What ``call()`` writes to fd 2 (C's stderr), captured in a memory file."""
    try:
        tmp = posix.memfd_create("introspect-memstats")  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        flags = posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC  # type: ignore[attr-defined]
        tmp = posix.open(_LIMIT["dir"] + "/memstats", flags, 0o600)  # type: ignore[attr-defined]
    saved = posix.dup(2)  # type: ignore[attr-defined]
    try:
        posix.dup2(tmp, 2)  # type: ignore[attr-defined]
        try:
            call()
        finally:
            posix.dup2(saved, 2)  # type: ignore[attr-defined]
        posix.lseek(tmp, 0, 0)  # type: ignore[attr-defined]
        return _mem_read_fd(tmp)
    finally:
        posix.close(saved)  # type: ignore[attr-defined]
        posix.close(tmp)  # type: ignore[attr-defined]


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
    text = _mem_capture(sys._debugmallocstats)  # type: ignore[attr-defined]
    got = _mem_pymalloc_parse(text)
    if got:
        return got, ""
    env = posix.environ.get(b"PYTHONMALLOC", b"")  # type: ignore[attr-defined]
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
        fd = posix.memfd_create("introspect-mallocinfo")  # type: ignore[attr-defined]
        libc.fdopen.restype = ctypes.c_void_p
        libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        fp = libc.fdopen(posix.dup(fd), b"w")  # type: ignore[attr-defined]
        if fp:
            libc.malloc_info(0, fp)
            libc.fclose(fp)
            posix.lseek(fd, 0, 0)  # type: ignore[attr-defined]
            xml = b""
            while True:
                chunk = posix.read(fd, 65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                xml += chunk
            facts["arenas"] = xml.count(b"<heap nr=")
        posix.close(fd)  # type: ignore[attr-defined]
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
    r, w = posix.pipe()  # type: ignore[attr-defined]
    pid = posix.fork()  # type: ignore[attr-defined]
    if pid == 0:
        try:
            posix.close(r)  # type: ignore[attr-defined]
            sig.alarm(max(1, int(deadline - time.time()) + 1))  # alarms are not inherited
            got = {}  # type: dict
            _mem_measure(got)
            data = memoryview(marshal.dumps(got, 2))
            while data:
                data = data[posix.write(w, data):]  # type: ignore[attr-defined]
        finally:
            posix._exit(0)  # type: ignore[attr-defined]
    posix.close(w)  # type: ignore[attr-defined]
    raw = b""
    while True:
        chunk = posix.read(r, 65536)  # type: ignore[attr-defined]
        if not chunk:
            break
        raw += chunk
    posix.close(r)  # type: ignore[attr-defined]
    posix.waitpid(pid, 0)  # type: ignore[attr-defined]
    try:
        _MEM.update(marshal.loads(raw))
    except (ValueError, EOFError, TypeError):
        _MEM["missing"] = {"pymalloc": "the measuring copy died before answering",
                           "malloc": "the measuring copy died before answering"}
    _MEM["seconds"] = time.perf_counter() - t0


# @part core
# ---------------------------------------------------------------------------------------------
# entry point


def _agent_running():  # type: () -> bool
    """Does another thread run an agent still, from a run its CLI gave up on (a step that ran past
    the deadline)? Two agents at once would walk, collect or fork concurrently."""
    # Every frame this holds is let go before it returns: its own frame, kept in a local, would be
    # a reference cycle holding our run's frames (and the bootstrap's namespace, the agent's code
    # and its source bytes under them) until the target's next collection.
    me = sys._getframe()  # type: Any  # not _thread.get_ident(): gevent patches it to name greenlets
    frames = top = f = None  # type: Any
    try:
        frames = sys._current_frames()
        for top in frames.values():
            f = top if top is not me else None
            while f is not None:
                code = f.f_code
                if code.co_name == "run" and _own_file(code.co_filename, "\0"):
                    return True
                f = f.f_back
        return False
    except Exception:
        return False
    finally:
        me = frames = top = f = None


_ANSWERED = ("the forked child wrote the answer",)  # a command's result meaning: nothing left to write


def _answer(result):  # type: (object) -> None
    """Complete this run's envelope with ``result`` and write result.json, which the CLI waits for.
    Called by run(), or by a forked child for its parent (cmd_snapshot): the copy has the envelope
    run() began, and the parent, which writes nothing after its fork, pays no copy-on-write."""
    envelope, t0 = _LIMIT["answer"]
    if "ok" not in envelope:  # set (False) when the command raised
        envelope["result"] = result
        envelope["ok"] = True
    envelope["agent_s"] = time.perf_counter() - t0
    envelope["code"] = _G.get("_LOADED")  # ("loaded" precompiled | "compiled", seconds): see codecache
    envelope["python"] = "%d.%d.%d" % sys.version_info[:3]
    envelope["imported"] = list(_NEW_MODULES)
    try:
        _write_json(_LIMIT["dir"] + "/result.json", envelope)
    except OSError:
        pass


def run(request):  # type: (dict) -> None
    wall0 = time.time()
    if wall0 > request["deadline"]:
        return  # the CLI gave up on this request: do nothing, leave nothing
    rundir = request["dir"]
    if _agent_running():
        try:
            _write_json(rundir + "/result.json", {"nonce": request["nonce"], "ok": False, "error": {
                "type": "AgentBusy", "message": "an agent of an earlier run is still running in this process", "frames": []}})
        except OSError:
            pass
        return
    _LIMIT["deadline"], _LIMIT["dir"] = request["deadline"], rundir
    t0 = time.perf_counter()
    try:
        _write_file(rundir + "/started", b"")
    except OSError:
        return  # run dir gone or not ours: a late or foreign request
    envelope = {"nonce": request["nonce"], "command": request["command"], "pid": posix.getpid()}  # type: ignore[attr-defined]
    _LIMIT["answer"] = (envelope, t0)
    result = None  # type: Any
    try:
        result = COMMANDS[request["command"]](request["params"])
    except BaseException as exc:  # noqa: BLE001 - reported to the CLI, never raised in the target
        envelope["ok"] = False
        envelope["error"] = _exc_record(exc, "")
        exc.__traceback__ = None
    if result is not _ANSWERED:
        _answer(result)


if "REQUEST" in _G:
    try:
        run(_G["REQUEST"])
    finally:
        # Break the function<->globals cycles now, so nothing of ours waits for the next collection.
        _G.clear()

