# introspect agent, tracing in the copy: runs ONLY in the FORKED COPY (the walker), never in the
# target: pauses tracemalloc there before the walk, and looks traces up by address.
#
# Imports: whatever the copy needs (ctypes...: nothing it does reaches the target), Python 3.8
# syntax. The copy's rules (snapshot.py's header): every object it touched is held until
# os._exit, no finalizer runs (gc disabled), nothing is written but the stream and answers.

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401



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
