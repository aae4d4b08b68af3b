# introspect agent, in-process `top` (counts, and `--sizes`): runs in the TARGET, on its main
# thread. Shallow bytes per type, untracked referents included, under the traverse rule (core.py).
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
        _SLICE,
        _STEP,
        COMMANDS,
        _c_sizeof,
        _gc_facts,
        _gc_head,
        _ours,
        _own_objects,
        _phase,
        _settle,
        _snapshot,
        _start_clock,
        _stopped,
        gc,
        posix,
        time,
        type_name,
    )
    from introspect.agent.objects import (
        _HAVE_GC,
        _type_flags,
        _walkable,
    )


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
                    yield list(o[k:k + _SLICE])
            else:
                part = []  # type: list
                try:
                    for x in (dict.items(o) if t is dict else o):
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
    probe = [[float(posix.getpid()) + 0.5]]
    # a list: core traverse
    unique = _tally(gc.get_referents(*probe), {}, {}, sizers, gc_head, 0, {}, [])
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
        if _ours(f.f_code.co_filename) or f.f_globals is _G:
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
