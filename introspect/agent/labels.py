# introspect agent, walker labels, names, previews and duplicates: runs ONLY in the FORKED COPY,
# answering the CLI's questions after the walk (edge labels, names, previews, equal values);
# which attributes of a code object the walk follows (_CODE_ATTRS). Loaded before walk.py.
#
# Imports: whatever the copy needs (ctypes...: nothing it does reaches the target), Python 3.8
# syntax. The copy's rules (snapshot.py's header): every object it touched is held until
# os._exit, no finalizer runs (gc disabled), nothing is written but the stream and answers.

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.core import (
        _builtin,
        _FunctionType,
        _ModuleType,
        _type_dict,
        _type_mro,
        type_name,
    )
    from introspect.agent.objects import (
        _CellType,
        _key_label,
        _MethodType,
    )


_CodeType = type(_builtin.__code__)
# Code objects are not gc containers (no tp_traverse): their references are read from the stored
# attributes (3.11+ computes co_code and co_varnames afresh on each read: left out, they would be
# new objects of the walker's own).
_CODE_ATTRS = (("co_consts", "co_names", "co_filename", "co_name", "co_qualname", "co_linetable",
                "co_exceptiontable")
               if sys.version_info >= (3, 11) else
               ("co_consts", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_filename",
                "co_name", "co_code", "co_lnotab"))


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
        shapes = {
            list: "[%s]", tuple: "(%s)", set: "{%s}", frozenset: "frozenset({%s})",
        }  # type: dict
        return shapes[t] % body
    if t in (list, tuple, set, frozenset, dict):
        return "<%s of %d>" % (t.__name__, t.__len__(x))
    return "<%s>" % (getattr(t, "__qualname__", "?"),)


def _snap_dups(keep, min_len, top):  # type: (list, int, int) -> list
    """Groups of equal str/bytes values held as distinct objects: [type, length, copies, bytes of
    one, positions of up to 5 copies], the most wasted bytes first. At most 2M values are looked
    at."""
    seen = {}  # type: dict
    getsizeof = sys.getsizeof
    looked = 0
    for pos, x in enumerate(keep):
        t = type(x)
        if (t is str or t is bytes) and len(x) >= min_len:
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
            groups.append([(len(g) - 1) * one, "str" if type(v) is str else "bytes", len(v),
                           len(g), one, g[:5]])
    groups.sort(key=lambda r: -r[0])
    return [r[1:] for r in groups[:top]]


def _snap_len(x):  # type: (object) -> int
    for base in (dict, list, tuple, set, frozenset):
        if isinstance(x, base):
            return base.__len__(x)  # type: ignore[arg-type]
    return -1


def _snap_items(holder, index, start, count):  # type: (object, Any, int, int) -> Any
    """[True, [position, label], ...] for items start..start+count of a dict (value, then key:
    "(key)") or a list or tuple, in _snap_via's order, so the first pair of each child is its label
    there; [False] for any other holder. One pass instead of one scan per reference (dumps ask for
    every reference's label). index: the walker's id -> position (_SnapIndex; .get)."""
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
            for attr in ("__closure__", "__defaults__", "__kwdefaults__", "__globals__", "__dict__",
                         "__code__"):
                if getattr(holder, attr, None) is child:
                    return attr
            return "(function)"
        if th is _MethodType:
            bound_self = holder.__self__  # type: ignore[attr-defined]
            return "__self__" if bound_self is child else "__func__"
        if isinstance(holder, type):
            if (type(child) is dict and _type_dict.__get__(holder, type) is not None
                    and "__module__" in child):
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
            return type_name(obj)
        if type(obj) is _FunctionType:
            return obj.__qualname__
        if type(obj) is _ModuleType:
            name = obj.__dict__.get("__name__")
            return name if isinstance(name, str) else ""
    except Exception:
        pass
    return ""
