# introspect agent, objects: the traverse rule, sizes and allocation sites, reference kinds. Runs
# in the TARGET, on its main thread, for the commands that look at objects there (top, backrefs:
# introspect.agent PARTS), and in the FORKED COPY, where the walker compiles it first
# (WALKER_PARTS).
# Never shipped for the forked snapshot itself: the target then runs only core, snapshot and run,
# because every name and constant it loads is a page it touches before its fork and copies after
# (freed while the walker still shares it): see docs/snapshots.md, the pause.
#
# Imports: nothing at run time; builtin C modules through core's _builtin(). Python 3.8
# syntax. Every rule in core.py's header binds it (no reference to a target object kept
# after we return, no repr() of user objects, never raise out, budget and deadline checked).

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.core import (
        _G,
        _MANAGED_DICT_311,
        _dump,
        _module_dict,
        _ModuleType,
        _type_module,
        gc,
        type_name,
    )


# ---------------------------------------------------------------------------------------------
# the traverse rule: which objects gc.get_referents() may be called on (core.py's header)

_HEAPTYPE = 1 << 9
# 3.10+: set on C types made from a spec (_asyncio.Future...), never on a class statement's
_IMMUTABLETYPE = 1 << 8
_HAVE_GC = 1 << 14
_type_flags = type.__dict__["__flags__"]
_type_base = type.__dict__["__base__"]


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


# --- naming a key -----------------------------------------------------------------------

def _key_label(k):  # type: (object) -> str
    # Only builtin str/int keys are shown: repr() of a user object could run code or leak secrets.
    if type(k) is str:
        return "[" + (repr(k) if len(k) <= 40 else repr(k[:37]) + "...") + "]"
    if type(k) is int:
        return "[%d]" % k
    return "[<%s key>]" % type_name(type(k))


# CPython 3.11 puts two pointers (its values and __dict__) before the gc header of an instance of
# a class with a managed __dict__ (Py_TPFLAGS_MANAGED_DICT: every class without __slots__), and
# its tracemalloc looks for the block 16 bytes after where it starts: such an instance never has a
# trace (3.12 asks _PyType_PreHeaderSize). The walker reads the block's own trace at its true
# start (_trace_block, ctypes in the fork); in the target, where ctypes never runs, an object that
# only the instance holds (an attribute value, its __dict__) stands in for it, marked "held".
# (core.py's _MANAGED_DICT_311: the walker reads it too)


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


# --- types the backrefs search and the walker name references by --------------------------

_FrameType = type(sys._getframe())


def _cell_type():  # type: () -> type
    x = 0

    def f():  # type: () -> int
        return x

    return type(f.__closure__[0])  # type: ignore[index]


_CellType = _cell_type()
_MethodType = type(_dump.__get__(0))
