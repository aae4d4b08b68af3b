# introspect agent, backrefs, chains and owners: runs in the TARGET, on its main thread,
# shipped with backrefs.py. How a holder references a child (_via); from the search's discovered
# edges: rooted counts, owner modules, chains, graph.
#
# Imports: nothing at run time; builtin C modules through core's _builtin(). Python 3.8
# syntax. Every rule in core.py's header binds it (no reference to a target object kept
# after we return, no repr() of user objects, never raise out, budget and deadline checked).

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.core import (
        _FunctionType,
        _ModuleType,
        _type_module,
        type_name,
    )
    from introspect.agent.objects import (
        _CellType,
        _key_label,
        _MethodType,
    )


def _via(holder, child):  # type: (object, object) -> str
    """How ``holder`` references ``child``: attribute, key, index, closure variable..."""
    th = type(holder)
    try:
        # issubclass(type(x)), never isinstance(): that may run a __class__ property
        if issubclass(th, dict):
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
            for attr in ("__closure__", "__defaults__", "__kwdefaults__", "__globals__", "__dict__",
                         "__code__"):
                if getattr(holder, attr, None) is child:
                    return attr
            return "(function)"
        if th is _MethodType:
            bound_self = holder.__self__  # type: ignore[attr-defined]
            return "__self__" if bound_self is child else "__func__"
        if issubclass(th, type):
            if type(child) is dict and "__module__" in child:
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
            # never isinstance(): a __class__ property is user code
            t = obj if issubclass(type(obj), type) else type(obj)
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


def _owners_missing(sample, roots, down, nodes, module_dicts):
    # type: (list, dict, dict, dict, dict) -> bool
    """Is some sample's owner module (see _owner_module) loaded but not reached by the search
    yet?"""
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
            return obj.__qualname__
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
                role = ("target" if last else "root" if k == 0 and prev is None
                        else "holder" if k == len(ch["path"]) - 2 else "path")
                label = ch["root"] if role == "root" else (
                    step["type"] + (" " + step["name"] if step.get("name") else ""))
                gnodes.append({"id": ids[key], "label": label, "role": role, "type": step["type"]})
            if prev is not None:
                e = (prev[0], ids[key], prev[1])
                if e not in seen_edges:
                    seen_edges.add(e)
                    edges.append({"src": e[0], "dst": e[1], "label": e[2]})
            prev = (ids[key], step["via"] or "")
    return {"nodes": gnodes, "edges": edges}

