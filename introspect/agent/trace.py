# introspect agent, trace (tracemalloc sessions): runs in the TARGET, on its main thread, for `trace
# start|show|stop`; and in the FORKED COPY, where the walker compiles it to read the copy's
# traces (`trace show` and allocation sites of a snapshot).
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
        _LIMIT,
        _SLICE,
        _STOP_REASONS,
        COMMANDS,
        _builtin,
        _FunctionType,
        _ModuleType,
        _ours,
        _own_file,
        _start_clock,
        _stopped,
        _thread,
        posix,
        time,
    )


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
_PID = _G.get("_TARGET_PID") or posix.getpid()
# tracemalloc's own memory per live trace is 60-68 B (measured, 3.8/3.15): an over-estimate of
# the count
_TRACE_BYTES_PER_TRACE = 40
_MAX_SITES = 20000  # sites returned by one show, largest first


def _trace_timer(tm, modules, name, session, wake, clock, until):
    # type: (Any, dict, str, str, Any, Any, float) -> None
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
             "traced": list(tm.get_traced_memory()),
             "tracemalloc_memory": tm.get_tracemalloc_memory(),
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
            # a different depth needs a fresh start (tracemalloc keeps the old limit otherwise)
            tm.stop()
            restarted = True
        _trace_end(mod)  # ours (or inherited over fork): a new session replaces it, new end time
        status = "restarted" if restarted else "extended"
    else:
        if mod is not None:
            _trace_end(mod)  # ours, but tracing was stopped by someone else
        status = "started"
    session = "%d-%d" % (posix.getpid(), int(time.time() * 1e6))
    wake = _thread.allocate_lock()
    wake.acquire()
    until = time.monotonic() + for_s
    mod = _ModuleType(TRACE_MODULE,
                      "introspect: a tracemalloc session; ends by itself (see `introspect trace`)")
    mod.__dict__.update({"session": session, "until": until, "pid": posix.getpid(), "wake": wake})
    if not tm.is_tracing():
        tm.start(frames)
    sys.modules[TRACE_MODULE] = mod
    b = sys.modules.get("builtins")
    timer_globals = {"__builtins__": vars(b) if b is not None else {}}
    timer = _FunctionType(  # type: ignore[misc]
        _trace_timer.__code__, timer_globals, "introspect_trace_timer")
    try:
        _thread.start_new_thread(
            timer, (tm, sys.modules, TRACE_MODULE, session, wake, time.monotonic, until))
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
        elif not _ours(name) and name != "<introspect-bootstrap>":
            break
        f = f.f_back
    f = None
    return own


def _trace_sites(tm, depth, max_traces, child=False):  # type: (Any, int, int, bool) -> dict
    """Live traces grouped by their `depth` innermost frames, largest first. Reading them
    (_tracemalloc._get_traces) makes one tuple per trace in this process: refused above
    max_traces (estimated from tracemalloc's own memory), and the grouping stops on the budget."""
    out = {"sites": [], "traces": 0, "partial": False, "reason": "", "own_skipped": 0,
           "more_sites": 0}  # type: dict
    est = tm.get_tracemalloc_memory() // _TRACE_BYTES_PER_TRACE
    out["estimated_traces"] = est
    if est > max_traces:
        # Hook for the forked snapshot: there, a child reads the traces of its frozen copy and no
        # temporary list is made here. In-process we refuse rather than allocate ~100 B per trace.
        out["partial"] = True
        out["reason"] = ("about %d traces live, above --max-traces %d: not read in-process"
                         % (est, max_traces))
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
        if key and (key[0] in own_lines or _own_file(key[0][0])):
            # the agent's own allocations (this list included) and our session's module
            own += groups.pop(key)[1]
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
        facts.update(_trace_sites(tm, max(1, depth), 1 << 62, child=True))
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
        facts.update(_trace_sites(tm, max(1, int(params.get("traceback", 1))),
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
