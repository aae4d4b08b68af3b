# introspect agent, backrefs, the search (in-process `backrefs`): runs in the TARGET, on its main
# thread. Per-level referrer search from sampled objects (gc.get_referrers only compares
# pointers; get_referents only on trusted types). chains.py makes chains and owners of it.
#
# Imports: nothing at run time; builtin C modules through core's _builtin(). Python 3.8
# syntax. Every rule in core.py's header binds it (no reference to a target object kept
# after we return, no repr() of user objects, never raise out, budget and deadline checked).

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.chains import (
        _OWNER_LEVELS,
        _chains,
        _graph,
        _owners_missing,
        _rooted,
        _unrooted_kinds,
    )
    from introspect.agent.core import (
        _G,
        _MAX_NODES,
        _STOP_REASONS,
        COMMANDS,
        _count_elements,
        _module_dict,
        _ModuleType,
        _ours,
        _phase,
        _short_file,
        _start_clock,
        _stopped,
        _thread,
        _type_qualname,
        gc,
        time,
        type_name,
    )
    from introspect.agent.objects import (
        _alloc_sites,
        _FrameType,
        _trusted,
    )


def _frame_roots():  # type: () -> dict
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
            while f is not None and _ours(f.f_code.co_filename):
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
    # our own thread's frame may be the last one seen: no cycle through it
    frame = None  # type: ignore[assignment]
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
        return {"status": "unknown", "query": query,
                "names": sorted(named, key=lambda k: -named[k])[:5000]}
    names = sorted(set(type_name(t) for t in matched))
    if len(names) > 1:
        _empty(gens)
        return {"status": "ambiguous", "query": query,
                "candidates": [[n, sum(counts[t] for t in matched if type_name(t) == n)]
                               for n in names]}
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


def _search(sample, tname, found, budget, max_depth, t0, scan_s):
    # type: (list, str, int, float, int, float, float) -> dict
    module_dicts = {}  # type: dict
    modules = {}  # type: dict
    for name, mod in list(sys.modules.items()):
        # not isinstance(): that may run a lazy proxy's __class__
        if issubclass(type(mod), _ModuleType):
            try:
                module_dicts[id(_module_dict.__get__(mod, _ModuleType))] = name
                modules[id(mod)] = name
            except Exception:
                pass
    frames = _frame_roots()
    nodes = {}  # id -> object: everything discovered (keeps them alive only while we run)
    down = {}  # type: dict  # id(holder) -> [id(child)]: referrer edges among discovered objects
    roots = {}  # type: dict  # id(root node) -> description; frame roots are virtual: "frame:<id>"
    for o in sample:
        nodes[id(o)] = o
    own = {id(sample), id(nodes), id(down), id(roots), id(module_dicts), id(modules), id(frames),
           id(_G)}
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
            if (extra >= _OWNER_LEVELS or levels >= max_depth
                    or time.perf_counter() - t0 > budget / 2
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
                # the argument tuple of get_referrers itself (listed on 3.14+; 3.8-3.13 skip it).
                continue
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
    held_c, cycle = ((0, 0) if partial or not unrooted
                     else _unrooted_kinds(sample, roots, down, nodes))
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
        # [tracing, innermost allocation frame per sampled instance]
        "allocated": _alloc_sites(sample),
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


COMMANDS["backrefs"] = cmd_backrefs
