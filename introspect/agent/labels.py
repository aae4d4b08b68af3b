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
_repeat = _builtin("itertools").repeat


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
        if th is list or th is tuple:  # its first item that is child, found at C level
            ops = _builtin("_operator")
            items = holder  # type: Any
            try:
                return "[%d]" % ops.indexOf(map(ops.is_, items, _repeat(child)), True)
            except ValueError:
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


_SNAP_RUN = 8  # pairs of one holder from which its items are mapped once (_snap_label_pairs)
_SNAP_LENGTHS = (dict, list, tuple, set, frozenset)  # exact types: len() is C-level, no __len__
_SNAP_KEYS = 1 << 16  # keys' labels kept by _snap_pairs_via (then forgotten, made again)


def _snap_nums(parts):  # type: (list) -> list
    """A question's numbers (after its letter): decimal, or one token "x" + the hex of
    little-endian int32s (a dump's questions: millions of numbers, decoded at C speed)."""
    if len(parts) == 2 and parts[1][:1] == b"x":
        a = _builtin("array").array("i", bytes.fromhex(parts[1][1:].decode("ascii")))
        if sys.byteorder != "little":
            a.byteswap()
        return a.tolist()
    return list(map(int, parts[1:]))


def _snap_raw(parts):  # type: (list) -> Any
    """A question's numbers as the bytes of little-endian int32s when it came as one hex token (a
    dump's: what the compiled step reads), else None."""
    if len(parts) == 2 and parts[1][:1] == b"x":
        return bytes.fromhex(parts[1][1:].decode("ascii"))
    return None


_CW_SMALL = 64  # items of a plain dict whose labels the compiled step finds by a scan per pair


def _snap_keys(cache):  # type: (list) -> dict
    """The keys' labels kept in ``cache`` (its four slots made; a new table past _SNAP_KEYS)."""
    while len(cache) < 4:
        cache.append(None)
    if cache[2] is None or len(cache[2]) > _SNAP_KEYS:
        cache[2] = {}
    return cache[2]  # type: ignore[no-any-return]


def _snap_label_raw(mod, keep, raw, cache):  # type: (Any, list, bytes, list) -> list
    """_snap_label_pairs' answer to an "L" question of int32s (``raw``): the pairs of plain dicts
    of at most _CW_SMALL items labelled by the compiled step (``mod``, _cwalk.c labels), the
    rest, and the runs of bigger holders, here."""
    out = mod.labels(keep, raw, _snap_keys(cache), _snap_key_label, _CW_SMALL)
    if None in out:
        ops = _builtin("_operator")
        itertools = _builtin("itertools")
        nums = _builtin("array").array("i", raw).tolist()
        miss = list(itertools.compress(range(len(out)), map(ops.is_, out,
                                                            itertools.repeat(None))))
        sub = []  # type: list
        for i in miss:
            sub += nums[2 * i:2 * i + 2]
        for i, lab in zip(miss, _snap_label_pairs(keep, sub, cache, mod)):
            out[i] = lab
    return out


def _snap_label_pairs(keep, nums, cache, mod=None):  # type: (list, list, list, Any) -> list
    """The labels of the pairs (holder, child) of an "L" question, each as _snap_via answers it.
    A run of _SNAP_RUN pairs or more of one dict, list or tuple (the references of a big
    container, asked in order) is answered from a map of its items made once per holder
    (``cache``: the last one's, and the labels of keys met: [holder, map, {id(key): label},
    the last big list or tuple asked a few of once]), instead of a scan of its items per pair;
    other pairs by _snap_pairs_via."""
    itertools = _builtin("itertools")
    ops = _builtin("_operator")
    get = keep.__getitem__
    holders = nums[0:len(nums) - 1:2]
    children = nums[1::2]
    n = len(holders)
    keys = _snap_keys(cache)
    # where each run of one holder starts (C-level), then the long runs (a loop over runs)
    starts = [0]
    starts.extend(itertools.compress(range(1, n), map(ops.ne, holders[1:], holders[:-1])))
    starts.append(n)
    out = []  # type: list
    at = 0
    for a, b in zip(starts, starts[1:]):
        if b - a < _SNAP_RUN:
            continue
        holder = get(holders[a])
        th = type(holder)
        if not (issubclass(th, dict) or th is list or th is tuple):
            continue
        if a > at:  # the short runs before it
            out.extend(_snap_pairs_via(map(get, holders[at:a]), map(get, children[at:a]), keys))
        kids = list(map(get, children[a:b]))
        at = b
        if cache[0] is holder:
            out.extend(_snap_mapped(holder, cache[1], kids, keys))
        elif issubclass(th, dict) or cache[3] is holder or 64 * (b - a) > len(holder):
            cache[0], cache[1] = None, None  # the old map freed before the new one is made
            cache[1] = _snap_item_map(holder)
            cache[0] = holder
            out.extend(_snap_mapped(holder, cache[1], kids, keys))
        else:  # a few of a big list's or tuple's items: one pass, mapped if asked again
            cache[3] = holder
            out.extend(_snap_first_index(holder, kids, mod))
    if n > at:
        out.extend(_snap_pairs_via(map(get, holders[at:n]), map(get, children[at:n]), keys))
    return out


def _snap_first_index(holder, kids, mod=None):  # type: (Any, list, Any) -> list
    """_snap_via's labels of a few ``kids`` of a big list or tuple: the first index of each, in
    one pass over its items at C level (no map of all its items: a probe of its order); by the
    compiled step (``mod``, _cwalk.c firstindex) when it is loaded."""
    if mod is not None:
        return mod.firstindex(holder, kids)  # type: ignore[no-any-return]
    itertools = _builtin("itertools")
    want = set(map(id, kids))
    first = {}  # type: dict
    for i in itertools.compress(range(len(holder)), map(want.__contains__, map(id, holder))):
        first.setdefault(id(holder[i]), i)
    return ["[%d]" % first[id(c)] if id(c) in first else "(item)" for c in kids]


def _snap_key_label(k, keys):  # type: (object, dict) -> str
    """_key_label of a dict's key, kept by its id (``keys``): the copy's objects never move."""
    lab = keys.get(id(k))
    if lab is None:
        try:
            lab = _key_label(k)
        except Exception:
            lab = "(referent)"  # as _snap_via answers when reading the holder fails
        keys[id(k)] = lab
    return lab


def _snap_pairs_via(holders, children, keys):  # type: (Any, Any, dict) -> list
    """_snap_via of each pair (holder, child); a plain dict's here, one loop over its items
    per pair, its keys' labels made once (``keys``), without a call per pair."""
    out = []  # type: list
    put = out.append
    for h, c in zip(holders, children):
        if type(h) is dict:  # exact: its items are read at C level, as _snap_via reads them
            for k, v in dict.items(h):
                if v is c:
                    put(keys[id(k)] if id(k) in keys else _snap_key_label(k, keys))
                    break
                if k is c:
                    put("(key)")
                    break
            else:
                put("(item)")
        else:
            put(_snap_via(h, c))
    return out


def _snap_item_map(holder):  # type: (Any) -> tuple
    """The items of a dict (values and keys) or a list or tuple, each item's id mapped to its
    first index, made at C level (no label made yet: a few of a big holder's items may be all
    that are asked): (values' {id: index}, keys' {id: index}, keys) for a dict, ({id: index},)
    for a list or tuple."""
    if issubclass(type(holder), dict):
        n = dict.__len__(holder)
        vals = dict(zip(map(id, reversed(list(dict.values(holder)))), range(n - 1, -1, -1)))
        ks = list(dict.keys(holder))
        return vals, dict(zip(map(id, reversed(ks)), range(n - 1, -1, -1))), ks
    return (dict(zip(map(id, reversed(holder)), range(len(holder) - 1, -1, -1))),)


def _snap_mapped(holder, imap, kids, keys):  # type: (Any, tuple, list, dict) -> list
    """_snap_via's labels of ``kids`` of ``holder`` from its _snap_item_map: a dict's value at
    its first key's label, a key "(key)" (whichever comes first in the dict's order; the value
    when one item holds it as both), a list's or tuple's item at its first index."""
    ids = list(map(id, kids))
    if len(imap) == 1:
        at = list(map(imap[0].get, ids, _builtin("itertools").repeat(-1)))
        out = list(map("[%d]".__mod__, at))
        if -1 in at:
            out = [lab if i >= 0 else "(item)" for lab, i in zip(out, at)]
        return out
    vals, kmap, ks = imap
    out = []
    for i in ids:
        j = vals.get(i, -1)
        k = kmap.get(i, -1)
        if j >= 0 and (k < 0 or j <= k):
            out.append(_snap_key_label(ks[j], keys))
        else:
            out.append("(key)" if k >= 0 else "(item)")
    return out


def _snap_counts(keep, nums, raw=False):  # type: (list, list, bool) -> Any
    """Items of each builtin container ("C"), -1 for other objects: len() at C speed when every
    one is of an exact builtin container type, else _snap_len one by one. ``raw`` ("I"): as
    little-endian int64s (a dump's millions, read without parsing)."""
    objs = list(map(keep.__getitem__, nums))
    if set(map(type, objs)) <= set(_SNAP_LENGTHS):
        counts = list(map(len, objs))
    else:
        counts = list(map(_snap_len, objs))
    if not raw:
        return counts
    a = _builtin("array").array("q", counts)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()
