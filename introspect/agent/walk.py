# introspect agent, the walker: runs ONLY in the FORKED COPY (the grandchild), never in the target.
# Walks every object once, streams it to the CLI (format 2, below), answers its questions.
#
# Imports: whatever the copy needs (ctypes...: nothing it does reaches the target), Python 3.8
# syntax. The copy's rules (snapshot.py's header): every object it touched is held until
# os._exit, no finalizer runs (gc disabled), nothing is written but the stream and answers.

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.copytrace import _TRACE_WALK, _trace_block, _trace_pause, _trace_resume
    from introspect.agent.core import (
        _ESC,
        _G,
        _MANAGED_DICT_311,
        _builtin,
        _c_sizeof,
        _dump,
        _exc_record,
        _FunctionType,
        _gc_facts,
        _gc_head,
        gc,
        posix,
        time,
        type_name,
    )
    from introspect.agent.cwalk import _cw_batch, _cw_load, _SnapIndex
    from introspect.agent.labels import (
        _CODE_ATTRS,
        _CodeType,
        _snap_counts,
        _snap_dups,
        _snap_label_pairs,
        _snap_label_raw,
        _snap_name,
        _snap_nums,
        _snap_preview,
        _snap_raw,
    )
    from introspect.agent.memory import _mem_look
    from introspect.agent.objects import _alloc_sites, _CellType
    from introspect.agent.trace import _trace_child_show


# Stream (format 3; introspect/snapshot/records.py is the reader and its docstring the contract),
# written to a FIFO the CLI created in the run dir (a pipe: nothing lands on the target's
# filesystem): SNAP_MAGIC, then frames of kind (1 byte) + length (4 bytes, little endian) +
# payload. "M" meta JSON; "T" new types JSON [[index, name]]; "R" roots JSON [[kind, description,
# position]]; "O" objects and "C" refcount excess (the object's refcount minus our own holds):
# array frames, four uint64 (first position, objects, references, positions known so far), then
# fixed-width little-endian columns (O: sizes int64, type indices int32, reference counts uint32,
# referenced ADDRESSES uint64, gc-tracked flags uint8, the objects' own addresses uint64; C:
# excess int64); "E" end JSON; "X" error JSON; "L" answers to the CLI's questions. No
# general-purpose serialiser: the CLI reads what a possibly hostile process sent, checks every
# length and index, and maps addresses to positions itself. Positions number objects in the
# order they are streamed. After "E" the walker answers lines read from the control FIFO:
# "L a b a b ...": how a holds b; "N p p ...": names of modules/classes/functions; "V p ...": free
# variable names of functions; "Q": exit.

SNAP_MAGIC = b"INTROSPECT-SNAPSHOT 3\n"
SNAP_BATCH = 32768
def _snap_send(fd, kind, payload):  # type: (int, bytes, bytes) -> None
    data = memoryview(kind + len(payload).to_bytes(4, "little") + payload)
    while data:
        data = data[posix.write(fd, data):]


def _snap_json(obj):  # type: (object) -> bytes
    out = []  # type: list
    _dump(obj, out)
    return "".join(out).encode("utf-8", "backslashreplace")


def _snap_quiet(deadline, keep_fd):  # type: (float, int) -> None
    """Out of the target's way (its lowest priority is set at the fork): first for the OOM killer,
    a hard deadline, no inherited descriptor kept open (a held pipe or socket would delay EOF seen
    by its peer)."""
    try:
        fd = posix.open("/proc/self/oom_score_adj", posix.O_WRONLY)
        try:
            posix.write(fd, b"1000")
        finally:
            posix.close(fd)
    except OSError:
        pass
    sig = _builtin("_signal")
    sig.signal(sig.SIGALRM, sig.SIG_DFL)
    sig.alarm(max(1, int(deadline - time.time()) + 1))
    try:
        null = posix.open("/dev/null", posix.O_RDWR)
        sink = (null, null, null)
    except OSError:  # a container root without /dev: a pipe nobody reads, writes never blocking
        r, w = posix.pipe()
        posix.set_blocking(w, False)
        sink = (r, w, w)
    for k in (0, 1, 2):
        posix.dup2(sink[k], k)
    for name in posix.listdir("/proc/self/fd"):
        k = int(name)
        if k > 2 and k != keep_fd:
            try:
                posix.close(k)
            except OSError:
                pass


def _snap_own(frame_ids, mods):  # type: (list, list) -> dict
    """ids of our own objects (the agent's namespace, the bootstrap's, running frames): never
    recorded, never followed; the frames of running threads are described as roots instead."""
    own = {id(_G): None}  # type: dict
    for i in frame_ids:
        own[i] = None
    # exec put the target's builtins there
    stack = [v for k, v in _G.items() if k != "__builtins__"]
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



def _snap_walker(params, frame_roots, frame_ids):  # type: (dict, list, list) -> None
    """The grandchild: walk every object once, stream it, answer label questions, never return."""
    gc.disable()  # a collection here would run the target's finalizers (its __del__ may do I/O)
    t0 = time.perf_counter()
    deadline = float(params.get("child_deadline", time.time() + 300))  # the wait for this fork
    # First: with the stream open, any failure below reaches the CLI as an "X" frame at once.
    fd = posix.open(params["stream"], posix.O_WRONLY | posix.O_NONBLOCK)
    posix.set_blocking(fd, True)
    sent_magic = posix.write(fd, SNAP_MAGIC) == len(SNAP_MAGIC)  # < PIPE_BUF: atomic
    if params.get("memory"):  # before the walk: its tables would count as the target's
        _mem_look(deadline)
    err = None
    try:
        # False: no object walk, only questions (`trace show` reads traces here)
        walk = params.get("objects", True)
        mods = [(k, v) for k, v in list(sys.modules.items()) if isinstance(k, str)] if walk else []
        if not walk:
            frame_roots = []
        keep = []  # type: list  # every object recorded: alive until _exit
        hold = []  # type: list  # our own objects met on the way: alive too, never recorded
        objs = gc.get_objects() if walk else []
        # The walk's budget scales with the heap (the CLI's --timeout only bounded the wait for the
        # fork): past it the walk answers with what it has, marked partial. The hard deadline
        # (SIGALRM) leaves the CLI time to analyse and ask its questions after that.
        budget = _snap_budget(params, len(objs))
        deadline = time.time() + budget
        _snap_quiet(deadline + budget + float(params.get("answer_s", 60.0)), fd)
        _TRACE_WALK["paused"] = _trace_pause() if walk else "no walk"  # before _snap_own: ctypes
        array = _builtin("array").array
        index = _SnapIndex(array)  # id -> position (made after gc.get_objects(): not in objs)
        cw = _cw_load(params, hold) if walk else (None, "no walk")  # (its module, how it walks)
        own = _snap_own(frame_ids, mods)
        for x in [keep, hold, index, index.chunks, objs, mods, own, frame_ids] + frame_roots + hold:
            own[id(x)] = None
        known = set(id(v) for _, v in mods)
        for m in list(sys.modules.values()):  # anything this child imported is ours
            if id(m) not in known:
                own[id(m)] = None
                d = getattr(m, "__dict__", None)
                if type(d) is dict:
                    own[id(d)] = None
        _snap_stream(fd, frame_roots, mods, keep, hold, index, objs, own, array, t0, deadline, cw)
    except BaseException as exc:  # reported to the CLI, never raised anywhere
        err = exc
    if err is not None:
        try:
            if not sent_magic:
                posix.write(fd, SNAP_MAGIC)
            _snap_send(fd, b"X", _snap_json({"error": _exc_record(err, False)}))
        except Exception:
            pass
        return
    _trace_resume()
    # Re-armed for the CLI's analysis and questions, sized as the CLI sizes its own wait (+5 s).
    sig = _builtin("_signal")
    sig.alarm(max(1, int(float(params.get("answer_s", 60.0))
                         + float(params.get("answer_per_object_s", 0.0)) * len(keep)) + 5))
    _snap_answer(fd, params, keep, cw[0])


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


def _snap_send_columns(fd, kind, array, start, count, items, known, columns):
    # type: (int, bytes, Any, int, int, int, int, list) -> None
    """_snap_send of _snap_columns' payload, copied once (the arrays' buffers joined with the
    frame's head) instead of three times."""
    parts = [b"", array("Q", [start, count, items, known])]  # type: list
    for code, values in columns:  # lists, or bytes already in the column's form (_cwalk)
        parts.append(values if type(values) is bytes
                     else bytes(values) if code == "B" else array(code, values))
    if sys.byteorder != "little":
        for a in parts[1:]:
            if not isinstance(a, bytes):
                a.byteswap()
    size = sum(len(a) * (1 if isinstance(a, bytes) else a.itemsize) for a in parts)
    parts[0] = kind + size.to_bytes(4, "little")
    data = memoryview(b"".join(parts))
    while data:
        data = data[posix.write(fd, data):]


def _snap_stream(fd, frame_roots, mods, keep, hold, index, objs, own, array, t0, deadline, cw):
    # type: (int, list, list, list, list, _SnapIndex, list, dict, Any, float, float, tuple) -> None
    for code, width in (("q", 8), ("i", 4), ("I", 4), ("B", 1), ("Q", 8)):
        if array(code).itemsize != width:
            raise RuntimeError("array %r items are %d bytes, not %d"
                               % (code, array(code).itemsize, width))
    facts = _gc_facts()
    _snap_send(fd, b"M", _snap_json({
        "format": 3, "pid": posix.getpid(),
        "start_ticks": _snap_start_ticks(), "python": "%d.%d.%d" % sys.version_info[:3],
        "gc": facts,
        "gc_objects": len(objs), "byteorder": sys.byteorder, "time": time.time(),
    }))
    roots = []  # type: list

    def place(o):  # type: (object) -> int
        i = id(o)
        p = index.get(i)
        if p is None:
            p = len(keep)
            index.put(i, p)
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
    # gc.get_objects() has no duplicates: only our own objects and the roots placed above are
    # left out, in C-level loops over each slice (one test of the slice when none is there).
    # Modules the loop uses, imported now: an import would give a name met as single a referrer.
    ops = _builtin("_operator")
    itertools = _builtin("itertools")
    bisect = _builtin("_bisect").bisect_right
    compress = itertools.compress
    repeat = itertools.repeat
    slots = index.slots
    setslot = slots.__setitem__
    drain = _builtin("_collections").deque  # deque(iterable, 0): runs a map, keeps nothing
    # gc.freeze()'s objects are not in gc.get_objects(): with any, tracked references are found
    # like untracked ones (their refcount, then the index, which then has every object of gc's).
    mod = cw[0]
    frozen = bool(facts.get("frozen"))
    full = frozen and mod is None
    skip = dict(own)
    skip.update(dict.fromkeys(map(id, keep)))
    objs.reverse()  # taken from the end, slice by slice: the list shrinks as keep grows
    while objs:
        part = objs[-SNAP_BATCH:]
        del objs[-SNAP_BATCH:]
        part.reverse()
        n = len(keep)
        ok = skip.keys().isdisjoint(map(id, part))
        keep.extend(part if ok else compress(part, map(ops.not_, map(skip.__contains__,
                                                                     map(id, part)))))
        if full:
            drain(map(setslot, index.units(list(map(id, keep[n:])))[1], range(n, len(keep))), 0)
        part = None  # type: ignore[assignment]
    skip = None  # type: ignore[assignment]
    if mod is not None:
        mod.mark(keep, 0)  # seen: every object of gc's and the roots
        mod.mark(list(own), 1, 1)  # ours: never recorded, never followed
        mod.setsizeof(sys.getsizeof)
    _snap_send(fd, b"R", _snap_json(roots))
    getrefs = gc.get_referents
    is_tracked = gc.is_tracked
    getsizeof = sys.getsizeof
    gc_head = _gc_head()
    tindex = {}  # type: dict
    sizers = {}  # type: dict
    # Plain lists in the loop (a list append stores a pointer; an array append converts an int):
    # each batch becomes fixed-width arrays once, when it is sent.
    T, S, F, N, R, A = [], [], [], [], [], []  # type: list, list, list, Any, Any, Any
    newtypes = []  # type: list
    start = pos = 0
    edges = 0
    partial = ""
    refcount = sys.getrefcount
    # Batches of SNAP_BATCH objects, each step a C-level loop over builtins (map over the batch:
    # type, getsizeof, get_referents, is_tracked, id, refcount; chain.from_iterable). Format 3:
    # references go out as addresses (the CLI maps them to positions), so a reference needs no
    # lookup here but to find objects gc does not track, each recorded once: one whose refcount
    # is its referrer's alone is new (its one referrer is walked once); one with more owners is
    # looked up in the index (the walk's "seen" test, filled with those only). gc's tracked
    # objects are all in keep already. docs/benchmarks.md has the costs.
    chain = itertools.chain.from_iterable
    # A referent's holds while tested, calibrated alike: its get_referents list, the batch's list,
    # refcount's argument (dead_b: no other owner), the untracked list (one_b: one owner).
    filterfalse = itertools.filterfalse
    probe = [[object()]]  # type: Any
    refs = list(chain(probe))  # type: Any
    dead_b = min(map(refcount, refs))
    unt = list(filterfalse(is_tracked, refs))  # type: Any
    one_b = min(map(refcount, unt)) + 1
    refs = probe = unt = None
    while pos < len(keep):
        stop = min(len(keep), pos + SNAP_BATCH)
        if mod is not None:  # the compiled step: every column by the same rules (cwalk.py)
            A, N, R, T, S, F = _cw_batch(mod, keep, pos, stop, hold, tindex, newtypes, sizers,
                                         gc_head, frozen)
        else:
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
                        sizes.append(getsizeof(o) if sizers[type(o)]
                                     else object.__sizeof__(o) + gc_head)
                    except Exception:
                        sizes.append(0)
            S = sizes
            F = list(map(is_tracked, batch))
            A = list(map(id, batch))
            rl = list(map(getrefs, batch))  # type: Any
            if _CodeType in tset:
                for j in range(len(batch)):
                    if types[j] is _CodeType:
                        rl[j] = [getattr(batch[j], a) for a in _CODE_ATTRS if hasattr(batch[j], a)]
            N = list(map(len, rl))
            o = None
            batch = types = None  # type: ignore[assignment]  # freed before the references
            refs = list(chain(rl))
            R = list(map(id, refs))
            skipped = []  # type: list  # flat positions of references not recorded (ours, or dead)
            if refs and (min(map(refcount, refs)) <= dead_b or not own.keys().isdisjoint(R)):
                rc = list(map(refcount, refs))  # type: Any
                skipped = list(compress(range(len(R)), map(ops.or_, map(own.__contains__, R),
                                                           map(ops.le, rc, repeat(dead_b)))))
                for j in skipped:
                    if R[j] not in own:
                        # Owned by nothing but the walker's lists: a dead object a traverse handed
                        # out (gh-122695's free list), or one made by reading a code object's
                        # attribute. Not part of the heap; held, so that it is never freed twice.
                        own[R[j]] = None
                    hold.append(refs[j])
                drop = set(skipped)  # type: Any
                refs = [r for j, r in enumerate(refs) if j not in drop]  # as many holds as before
                rc = drop = None
            # the references gc does not track (tracked ones are in keep already), their refcounts
            unt = list(refs) if full else list(filterfalse(is_tracked, refs))
            # a str counts one owner more: 3.14's interned dict holds its mortal strs uncounted
            urc = list(map(ops.add, map(refcount, unt), map(ops.is_, map(type, unt), repeat(str))))
            keep.extend(compress(unt, map(ops.eq, urc, repeat(one_b))))
            multi = list(compress(unt, map(ops.gt, urc, repeat(one_b))))
            unt = urc = refs = rl = None  # type: ignore[assignment]
            if multi:
                sl = index.units(list(map(id, multi)))[1]
                miss = list(map(ops.lt, map(slots.__getitem__, sl), repeat(0)))
                if True in miss:
                    first = dict(zip(compress(sl, miss), compress(multi, miss)))  # each once
                    n = len(keep)
                    keep.extend(first.values())
                    drain(map(setslot, first, range(n, len(keep))), 0)
                    first = None  # type: ignore[assignment]
                sl = miss = None  # type: ignore[assignment]
            multi = None  # type: ignore[assignment]
            if skipped:
                ends = list(itertools.accumulate(N))
                for j in skipped:
                    N[bisect(ends, j)] -= 1
                drop = set(skipped)
                R = [p for j, p in enumerate(R) if j not in drop]
        nrefs = len(R) >> 3 if type(R) is bytes else len(R)  # bytes: the compiled step's
        edges += nrefs
        if newtypes:
            _snap_send(fd, b"T", _snap_json(newtypes))
            newtypes = []
        _snap_send_columns(fd, b"O", array, pos, stop - pos, nrefs, len(keep),
                           [("q", S), ("i", T), ("I", N), ("Q", R), ("B", F), ("Q", A)])
        T, S, F, N, R, A = [], [], [], [], [], []
        pos = stop
        if time.time() > deadline and pos < len(keep):
            partial = ("the walk's budget ran out after %.0f s, %d of %d objects found "
                       "walked (the rest are counted, without their references)"
                       % (time.perf_counter() - t0, pos, len(keep)))
            break
    refs = None
    walk_s = time.perf_counter() - t0
    walk_cpu_s = time.process_time()  # this process (forked: from 0) so far
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
            A.append(id(o))
        N = [0] * (stop - pos)
        if newtypes:
            _snap_send(fd, b"T", _snap_json(newtypes))
            newtypes = []
        _snap_send(fd, b"O", _snap_columns(array, pos, stop - pos, 0, len(keep),
                                           [("q", S), ("i", T), ("I", N), ("Q", []), ("B", F),
                                            ("Q", A)]))
        T, S, F, N, A = [], [], [], [], []
        pos = stop
    # Refcount excess: references the walk could not see (C code, running frames' stacks).
    # Each object is held here by keep, the batch's slice and getrefcount's argument (a C-level
    # loop); the calibration object below has keep as its only other owner.
    o = None
    keep.append(object())
    part = keep[-1:]
    base = list(map(refcount, part))[0]
    part = None  # type: ignore[assignment]
    keep.pop()
    start = 0
    while start < len(keep):
        part = keep[start:start + SNAP_BATCH]
        C = list(map(ops.sub, map(refcount, part), repeat(base)))
        part = None  # type: ignore[assignment]
        _snap_send_columns(fd, b"C", array, start, len(C), 0, len(keep), [("q", C)])
        start += len(C)
    end = {"objects": len(keep), "edges": edges, "walk_s": walk_s, "walk_cpu_s": walk_cpu_s,
           "total_s": time.perf_counter() - t0, "walker": cw[1]}  # type: dict
    if partial:
        end["partial"] = partial
    _snap_send(fd, b"E", _snap_json(end))


def _snap_start_ticks():  # type: () -> int
    """This process's start time (clock ticks since boot, /proc/self/stat field 22): with the pid,
    lets the CLI make sure the process it kills is this walker and not a reused pid."""
    try:
        fd = posix.open("/proc/self/stat", posix.O_RDONLY)
        try:
            raw = posix.read(fd, 4096)
        finally:
            posix.close(fd)
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except Exception:
        return 0


def _snap_answer(fd, params, keep, mod):  # type: (int, dict, list, Any) -> None
    """Answer the CLI's questions (edge labels, names) about the frozen heap until it says Q;
    ``mod``: the compiled walk step (a dump's labels and counts), or None."""
    cfd = posix.open(params["control"], posix.O_RDONLY)
    buf = b""
    cache = [None, None]  # type: list  # the last big holder labelled: [it, {id: label}]
    while True:
        chunk = posix.read(cfd, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.split()
            if not parts or parts[0] == b"Q":
                return
            raw = _snap_raw(parts) if mod is not None and parts[0] in (b"L", b"I") else None
            if raw is not None:  # a dump's millions: the compiled step answers
                if parts[0] == b"L":
                    _snap_send(fd, b"L", _snap_answer_json(_snap_label_raw(mod, keep, raw, cache)))
                else:
                    _snap_send(fd, b"L", mod.counts(keep, raw))
                continue
            nums = _snap_nums(parts)  # decimal, or the hex of int32s (a dump's questions)
            answer = []  # type: Any  # a list, or bytes ("I")
            if parts[0] == b"L":
                answer = _snap_label_pairs(keep, nums, cache, mod)
            elif parts[0] == b"V":  # a function's free variable names (closure cells are unnamed)
                answer = [list(getattr(getattr(keep[p], "__code__", None), "co_freevars", ()))
                          for p in nums]
            # tracemalloc's live traces, grouped by the nums[0] innermost frames
            elif parts[0] == b"G":
                try:
                    answer = [_trace_child_show(nums[0] if nums else 1)]
                except Exception as exc:  # noqa: BLE001 - the CLI says what failed
                    answer = [{"error": _exc_record(exc, False)}]
            elif parts[0] == b"B":  # the allocators' figures, read before the walk (memory part)
                answer = [_G.get("_MEM") or {}]
            elif parts[0] == b"A":  # where each object was allocated (tracemalloc), innermost frame
                blocks = _trace_block() if _MANAGED_DICT_311 else None
                answer = _alloc_sites([keep[p] for p in nums], blocks)
                answer.append(_TRACE_WALK.get("paused", ""))  # how the copy walked: _trace_pause
            # items of builtin containers (C-level len, never a Python __len__)
            elif parts[0] == b"C" or parts[0] == b"I":  # I: as little-endian int64s (a dump's)
                answer = _snap_counts(keep, nums, parts[0] == b"I")
            elif parts[0] == b"P":  # previews of builtin values (never repr() of anything else)
                answer = [_snap_preview(keep[p], 2) for p in nums]
            elif parts[0] == b"W":  # equal str/bytes values held as separate objects
                answer = _snap_dups(keep, nums[0] if nums else 8, nums[1] if len(nums) > 1 else 50)
            else:
                answer = [_snap_name(keep[p]) for p in nums]
            _snap_send(fd, b"L", answer if type(answer) is bytes else _snap_answer_json(answer))



def _snap_answer_json(answer):  # type: (Any) -> bytes
    """An answer as JSON: a list of str or of int written at C speed (the labels and counts of
    a dump: millions), anything else by _snap_json."""
    if type(answer) is list and answer:
        kinds = set(map(type, answer))
        if kinds == {str}:
            raw = "".join(answer)
            if raw.isprintable() and '"' not in raw and "\\" not in raw:  # nothing to escape
                body = '","'.join(answer)
            else:
                body = '","'.join(map(str.translate, answer, _builtin("itertools").repeat(_ESC)))
            return ('["' + body + '"]').encode("utf-8", "backslashreplace")
        if kinds == {int}:
            return ("[" + ",".join(map(int.__repr__, answer)) + "]").encode()
    return _snap_json(answer)
