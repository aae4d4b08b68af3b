# introspect agent, the walk's indexes: runs ONLY in the FORKED COPY (the grandchild), never in
# the target. The compiled walk step (_cwalk.c, loaded here from the CLI's build) and, where it
# cannot load or fails its checks, the Python one's id -> position index (_SnapIndex).
#
# Imports: whatever the copy needs (nothing it does reaches the target), Python 3.8 syntax. The
# copy's rules (snapshot.py's header): every object it touched is held until os._exit, no
# finalizer runs (gc disabled), nothing is written but the stream and answers.

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.core import (
        _builtin,
        _c_sizeof,
        _type_dict,
        _type_mro,
        gc,
        posix,
        type_name,
    )
    from introspect.agent.labels import _CODE_ATTRS, _CodeType


# The walker's id -> position index (_SnapIndex): objects are at least 16 bytes (8 on a 32-bit
# build) and never overlap, so id >> _SNAP_SHIFT is unique to each; such units are grouped in
# chunks of 256, each chunk an int32 slot per unit (-1: none) in one array.
_SNAP_SHIFT = 4 if sys.maxsize > 2 ** 32 else 3
_CW_ABI = 5  # _cwalk.c's CWALK_ABI: a build of another version is not used


class _SnapIndex(object):
    """id -> position of every object recorded, without a Python object per entry (issue 23): a
    dict of id -> position cost ~110 bytes an object (the dict's slots, an int for the id, another
    for the position); this costs 4 bytes per 16 bytes of the target's address space that holds
    objects (4 KiB chunks: at most a quarter of the heap's pages, ~16-30 bytes an object), plus
    one dict entry per chunk. A batch's lookups are C-level loops over builtins (units)."""

    __slots__ = ("chunks", "slots", "blank", "ops")

    def __init__(self, array):  # type: (Any) -> None
        # chunk number (id >> _SNAP_SHIFT >> 8) -> its first slot minus (chunk << 8), so that a
        # unit's slot is that plus the unit
        self.chunks = {}  # type: dict
        self.slots = array("i")
        self.blank = array("i", [-1]) * 256
        self.ops = _builtin("_operator")

    def chunk(self, u):  # type: (int) -> int
        """The slot offset of unit u's chunk, the chunk made (blank) if new."""
        k = u >> 8
        d = self.chunks.get(k)
        if d is None:
            d = self.chunks[k] = len(self.slots) - (k << 8)
            self.slots.extend(self.blank)
        return d

    def get(self, i, default=None):  # type: (int, Any) -> Any
        u = i >> _SNAP_SHIFT
        d = self.chunks.get(u >> 8)
        if d is None:
            return default
        p = self.slots[d + u]
        return default if p < 0 else p

    def put(self, i, p):  # type: (int, int) -> None
        u = i >> _SNAP_SHIFT
        self.slots[self.chunk(u) + u] = p

    def units(self, ids):  # type: (list) -> tuple
        """(units, their slots) of a list of ids, every chunk made: C-level but for new chunks."""
        ops = self.ops
        repeat = _builtin("itertools").repeat
        us = list(map(ops.rshift, ids, repeat(_SNAP_SHIFT)))
        ds = list(map(self.chunks.get, map(ops.rshift, us, repeat(8))))
        if None in ds:
            for j in _builtin("itertools").compress(range(len(ds)), map(ops.is_, ds,
                                                                        repeat(None))):
                ds[j] = self.chunk(us[j])
        return us, list(map(ops.add, ds, us))


def _cw_load(params, hold):  # type: (dict, list) -> tuple
    """(the compiled walk step, "compiled") or (None, why the Python walk runs). The CLI wrote
    its build to the run dir (params["cwalk"]); it is mapped from a memfd (a noexec /tmp does
    not stop it) and checked: the interpreter's own figures of a few types against the
    mirror's reading of PyTypeObject. What it loaded is held (hold) like every object here."""
    path = params.get("cwalk")
    if not path:
        return None, "python (no compiled walk step: %s)" % (params.get("cwalk_why") or "none")
    if sys.maxsize < 2 ** 32 or sys.byteorder != "little" or "t" in getattr(sys, "abiflags", ""):
        return None, "python (the compiled step needs a 64-bit little-endian GIL build)"
    try:
        fd = posix.open(path, posix.O_RDONLY)
        try:
            data = posix.read(fd, 4 << 20)
        finally:
            posix.close(fd)
        mfd = posix.memfd_create("introspect-walk", 0)  # no close-on-exec flag needed: no exec
        view = memoryview(data)
        while view:
            view = view[posix.write(mfd, view):]
        spec = sys.modules["_frozen_importlib"].ModuleSpec(
            "_cwalk", None, origin="/proc/self/fd/%d" % mfd)
        imp = _builtin("_imp")
        mod = imp.create_dynamic(spec)  # multi-phase (_cwalk.c): registered nowhere
        hold.extend((spec, mod, mod.__dict__))
        imp.exec_dynamic(mod)
        if getattr(mod, "ABI", None) != _CW_ABI:
            return None, "python (the compiled walk step is of another version)"
        for t in (int, str, dict, list, tuple, type, object, bytes, set, _CodeType,
                  type(_cw_load), type(sys)):
            want = (id(type(t)), t.__basicsize__, t.__itemsize__, t.__flags__,
                    t.__weakrefoffset__, t.__dictoffset__)
            if mod.head(t)[:6] != want:
                return None, "python (this interpreter's type objects differ from 3.8-3.15's)"
        return mod, "compiled"
    except Exception as exc:  # noqa: BLE001 - the Python walk runs, the end frame says why
        return None, "python (the compiled walk step did not load: %s: %s)" % (
            type(exc).__name__, str(exc)[:200])


def _cw_agrees(mod, objs, hold):  # type: (Any, list, list) -> str
    """"" when the compiled step's referents of each object equal gc.get_referents', else the
    first differing object's type name (its tp_traverse or gc flags misread through the mirror)."""
    getrefs = gc.get_referents
    for o in objs:
        refs = getrefs(o)
        hold.append(refs)  # a dead referent (refcount 0) must never be freed again
        if type(o) is not _CodeType and mod.referents(o) != list(map(id, refs)):
            return type_name(type(o))
    return ""


def _cw_overrides(mod, keep, pos, stop, hold):  # type: (Any, list, int, int, list) -> Any
    """None, or per object of keep[pos:stop] None or its referents when walked through
    attributes (code objects: the same rule as the Python step's, labels.py _CODE_ATTRS)."""
    offs = mod.offsets(keep, pos, stop, _CodeType)
    if not offs:
        return None
    over = [None] * (stop - pos)  # type: list
    for j in offs:
        o = keep[pos + j]
        over[j] = [getattr(o, a) for a in _CODE_ATTRS if hasattr(o, a)]
    hold.append(over)
    return over


def _cw_sizer(mod, t, o, gc_head):  # type: (Any, type, object, int) -> tuple
    """(mode, descriptor, constant) for the objects of type t (o: one of them) in _cwalk.c's
    terms, giving the sizes the Python step records: sys.getsizeof(o) when t's __sizeof__ is C
    code, else object.__sizeof__(o) + gc_head (walk.py)."""
    if not _c_sizeof(t):
        return 3, None, gc_head  # SIZE_RAW: the formula, unchecked, + gc_head
    if mod.head(t)[6]:  # tp_is_gc: the gc head getsizeof adds depends on the object
        return 0, None, 0  # SIZE_CALL
    descr = None  # type: Any
    for k in _type_mro.__get__(t, type):
        d = _type_dict.__get__(k, type)
        if "__sizeof__" in d:
            descr = d["__sizeof__"]
            break
    try:
        full = sys.getsizeof(o)
        if descr is object.__dict__["__sizeof__"]:
            return 2, None, full - object.__sizeof__(o)  # SIZE_FORMULA
        return 1, descr, full - descr(o)  # SIZE_DESCR
    except Exception:
        return 0, None, 0


def _cw_batch(mod, keep, pos, stop, hold, tindex, newtypes, sizers, gc_head, frozen):
    # type: (Any, list, int, int, list, dict, list, dict, int, bool) -> tuple
    """The columns (A, N, R, T, S, F) of keep[pos:stop] from the compiled step, each new type
    checked first: its first object's referents must be gc.get_referents'."""
    for t, o in mod.newtypes(keep, pos, stop):
        bad = _cw_agrees(mod, [o], hold)
        if bad:
            raise RuntimeError("the compiled walk step's referents of a %s differ from "
                               "gc.get_referents'; INTROSPECT_WALKER=python walks without it"
                               % bad)
        tindex[t] = len(tindex)
        newtypes.append([tindex[t], type_name(t)])
        sizers[t] = _c_sizeof(t)
        mod.settype(t, tindex[t], *_cw_sizer(mod, t, o, gc_head))
    n = len(keep)
    A, N, R, T, S, _ = mod.walk(keep, pos, stop, _cw_overrides(mod, keep, pos, stop, hold))
    is_tracked = gc.is_tracked
    F = list(map(is_tracked, keep[pos:stop]))
    if not frozen and n < len(keep) and any(map(is_tracked, keep[n:])):
        # gc-tracked and not in gc's list: made by this copy after it (the Python step's rule:
        # only gc.freeze()'s objects are looked for outside gc's list)
        part = keep[n:]
        del keep[n:]
        keep.extend(_builtin("itertools").filterfalse(is_tracked, part))
    return A, N, R, T, S, F
