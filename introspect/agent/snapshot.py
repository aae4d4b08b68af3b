# introspect agent, forked snapshot, the target's side: runs in the TARGET, on its main thread: the
# guard rails (gRPC refusal, warnings filter), the running frames' locals read before the
# fork, the fork, and the reaper (a short-lived thread, or a wait). Its children run on in
# the COPY: they compile the walker's files (walk.py...) there, never here.
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
        _OWN_PREFIX,
        COMMANDS,
        _builtin,
        _module_dict,
        _ModuleType,
        _ours,
        _short_file,
        _thread,
        gc,
        posix,
        time,
    )
    from introspect.agent.run import _ANSWERED, _answer
    from introspect.agent.walk import _snap_walker


# ---------------------------------------------------------------------------------------------
# forked snapshot: the target pays for a fork; a grandchild walks every object and streams it.
#
# The parent (the target) forks at its safe point, reaps the intermediate child at once (it exits
# right after forking the walker, so the walker is an orphan adopted by init or a subreaper: no
# zombie whatever the target does with SIGCHLD) and returns. The walker is a frozen copy: it may
# call gc.get_referents on anything, because nothing it does reaches the target, but it keeps
# every object it touched alive until os._exit (a refcount reaching zero would run a foreign
# deallocator in a half-copied world, see gh-122695) and never runs a finalizer (gc disabled).


def _load_walker(paths):  # type: (list) -> None
    """In the walker only: compile the files the target never needed (core.py's header: the
    target compiles only what its command runs, because compiling costs it memory it keeps), each
    under its own name, into this namespace. ``paths``: the run dir's copies, in order (the CLI
    writes them: introspect.agent.WALKER_PARTS); none when the whole agent is loaded (tests)."""
    if "_snap_walker" not in _G:
        for path in paths:
            with open(path, "rb") as f:
                src = f.read()
            exec(compile(src, _OWN_PREFIX + path.rpartition("/")[2], "exec"), _G)


def _snap_filters():  # type: () -> Any
    """The live warnings filter list (warnings.filters, or _warnings.filters before warnings is
    imported), read through module dicts so no module __getattr__ runs."""
    for name in ("warnings", "_warnings"):
        mod = sys.modules.get(name)
        if mod is not None:
            flt = mod.__dict__.get("filters")
            if type(flt) is list:
                return flt
    return None


def _grpc_refusal():  # type: () -> str
    """Why the target must not be forked because gRPC's C core is loaded in it, or "".

    gRPC registers fork handlers that run in the target at any fork (measured with grpcio 1.85 on
    tests/victims/grpc_worker.py, a server and clients in one process): its C core's pthread_atfork
    handlers printed "Other threads are currently calling into gRPC, skipping fork() handlers" on
    the target's stderr at most forks, or stopped and restarted its thread pools, and a copy forked
    twice (as ours is) died of SIGSEGV in a gRPC event_engine thread about once in 40 (plain
    os.fork, no agent). With GRPC_ENABLE_FORK_SUPPORT on, its os.register_at_fork hooks also hold
    the target's RPCs until its threads are idle (up to 5 s), and our copy hung inside them (no
    walker; the copy stayed, and so did our reaper thread in the target). Read from module dicts
    and posix.environ only: no code of gRPC's runs."""
    cy = sys.modules.get("grpc._cython.cygrpc")
    if cy is None:
        return ""
    d = cy.__dict__ if type(cy) is type(sys) else {}
    on = d.get("_GRPC_ENABLE_FORK_SUPPORT")
    if type(on) is not bool:  # not set by this grpcio version: what it would read at import
        on = (posix.environ.get(b"GRPC_ENABLE_FORK_SUPPORT", b"0").lower()
              in (b"1", b"yes", b"true"))
    if on:
        return ("gRPC fork support is on in the target (GRPC_ENABLE_FORK_SUPPORT): its fork hooks "
                "would hold its RPCs during a fork and hang the forked copy; a process with gRPC "
                "loaded is never forked, even with --fork")
    return ("gRPC is loaded in the target: its fork handlers would run there (a line on its "
            "stderr, or its threads stopped and restarted) and the forked copy may crash in them; "
            "a process with gRPC loaded is never forked, even with --fork")


def cmd_snapshot(params):  # type: (dict) -> Any
    """Fork; the grandchild walks and streams (see above). Returns the parent's pause."""
    t0 = time.perf_counter()
    refused = _grpc_refusal()
    if refused:
        return {"forked": False, "error": refused, "refused": "grpc",
                "pause_s": time.perf_counter() - t0}
    if params.get("collect"):
        gc.collect()
    # Read before the fork: other threads die in the child, and their frames with them (3.14+
    # frees their stacks: a held frame object then points at unmapped memory). Their locals are
    # held across the fork instead, with the ids of every running frame (never walked as objects).
    frames = sys._current_frames()
    frame_roots, frame_ids = _snap_frames(frames)
    del frames
    # 3.12+ warns about fork() in a multi-threaded process (under -W error 3.15 raises it in the
    # parent, after the child exists). The warning is attributed to this module's name: an exact
    # "ignore" filter for that name alone silences it without touching anyone else's warnings.
    # A container's init (pid 1 of its namespace) inherits every orphan, our walker included, and
    # rarely waits for children it did not start: the walker would stay a zombie in it. There the
    # walker is the target's own child, reaped by the kernel or by our short-lived thread, which
    # then waits out the walk (bounded by its deadline). Elsewhere the walker is a grandchild.
    how = _snap_reaper()
    direct = how != "wait" and posix.getpid() == 1
    _G["_TARGET_PID"] = posix.getpid()  # for the tracing part, compiled in the walker
    flt = _snap_filters()
    entry = ("ignore", None, DeprecationWarning, _G.get("__name__", "__introspect_agent__"), 0)
    frame_ids.append(id(entry))
    if flt is not None:
        flt.insert(0, entry)
    answering = "answer" in _LIMIT  # run() called us (not a test calling this function directly)
    try:
        t_fork = time.perf_counter()
        pid = posix.fork()
        t_fork = time.perf_counter() - t_fork
    except OSError as exc:
        return {"forked": False, "error": "fork failed: %s" % (exc,),
                "pause_s": time.perf_counter() - t0}
    finally:
        if flt is not None:
            for k in range(len(flt)):
                if flt[k] is entry:
                    del flt[k]
                    break
    if pid == 0:
        try:
            # Out of the target's way before anything else: the second fork, the walker's compile
            # and gc.get_objects() would otherwise compete with the target for its CPUs just as it
            # resumes (the walker inherits this). Nice 10, not 19: at 19 a walker gets ~1.5 % of a
            # core against each busy process, and on a loaded host (3 busy processes, 2 cores) a
            # 164k-object walk ran out of its 52 s budget 40 % done; at 10 it gets ~10 %.
            try:
                posix.nice(10)
            except OSError:
                pass
            # The answer the parent would write, written here: after the fork every page the parent
            # writes is copied first (~0.5 ms for result.json alone, measured at 1M objects).
            now = time.perf_counter()
            if answering:
                _answer({"forked": True, "child": posix.getpid(), "pause_s": now - t0,
                         "fork_s": t_fork, "reaped": _snap_reaped(how, direct),
                         "answered_by": "child"})
            if direct or posix.fork() == 0:
                _load_walker(params.get("walker", ()))
                _snap_walker(params, frame_roots, frame_ids)
        finally:
            posix._exit(0)
    done = _snap_reap(pid, how, direct)
    if answering and done == how:
        return _ANSWERED  # as the child said: nothing more to do here
    # Our reaper thread could not start: say how it went instead (result.json replaced at once).
    return {"forked": True, "child": pid, "pause_s": time.perf_counter() - t0, "fork_s": t_fork,
            "reaped": _snap_reaped(done, direct)}


def _reap(pid, waitpid=posix.waitpid, error=OSError):
    # type: (int, Any, Any) -> None
    """The reaper thread's body: names bound as defaults, so it looks nothing up in our globals
    (cleared when the agent returns) and cannot print (the target's waitpid(-1) may win: ECHILD)."""
    try:
        waitpid(pid, 0)
    except error:
        pass


def _snap_reaper():  # type: () -> str
    """How the target's child will be reaped: "kernel" (SIGCHLD ignored), "thread" (default
    disposition: a short-lived thread of ours waits for it), "wait" (a SIGCHLD handler of the
    target's own, which may reap children itself, or a _thread replaced by gevent/eventlet: the
    agent waits for the child before returning)."""
    sig = _builtin("_signal")
    try:
        disposition = sig.getsignal(sig.SIGCHLD)
    except Exception:
        disposition = None
    if disposition == sig.SIG_IGN:
        return "kernel"
    builtin = type(_thread.start_new_thread).__name__ == "builtin_function_or_method"
    if disposition == sig.SIG_DFL and builtin:
        return "thread"
    return "wait"


def _snap_reaped(how, direct):  # type: (str, bool) -> str
    """How the target's child is reaped, in words (``how``: see _snap_reaper and _snap_reap)."""
    said = {"kernel": "by the kernel (SIGCHLD ignored)",
            "thread": "by a short-lived thread"}.get(how, "waited for")
    return said + (" (the walker itself: pid 1 adopts orphans)" if direct else "")


def _snap_reap(pid, how, direct):  # type: (int, str, bool) -> str
    """Reap the target's child: the intermediate one, which exits once it has forked the walker
    (its fork of the whole address space and its exit take about as long as ours did), or with
    ``direct`` the walker itself in a pid 1 (see cmd_snapshot). ``how``: see _snap_reaper.
    Returns how it was done: ``how``, or "wait" when our thread could not start."""
    if how == "kernel":
        return how
    if how == "thread":
        try:
            _thread.start_new_thread(_reap, (pid,))
            return how
        except Exception:
            # never wait out a whole walk: the snapshot is lost, the target is not stopped
            if direct:
                try:
                    posix.kill(pid, 9)
                except OSError:
                    pass
    _reap(pid)
    return "wait"



def _snap_frames(frames):  # type: (dict) -> tuple
    """In the target, before the fork: ([(description, value)] for the locals of running function
    frames, ours skipped; [ids of every running frame and of the bootstrap's namespace])."""
    names = {}
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            for ident, th in list(threading.__dict__.get("_active", {}).items()):
                names[ident] = th.name
        except Exception:
            pass
    me = _thread.get_ident()
    roots = []
    ids = [id(frames)]
    for ident, f in frames.items():
        tname = names.get(ident, "thread-%d" % ident)
        ours = ident == me
        while f is not None:
            ids.append(id(f))
            code = f.f_code
            if ours and (_ours(code.co_filename)
                         or (code.co_filename == "<string>" and not code.co_flags & 1)):
                if not _snap_module_dict(f.f_globals):
                    ids.append(id(f.f_globals))  # the bootstrap's fresh dict (agent source, file)
                f = f.f_back
                continue
            ours = False
            if code.co_flags & 1:  # CO_OPTIMIZED: a function frame
                try:
                    items = list(f.f_locals.items())
                except Exception:
                    items = []
                for var, val in items:
                    if type(var) is str:
                        roots.append(("thread %s, %s() in %s line %d, local %s" % (
                            tname, code.co_name, _short_file(code.co_filename), f.f_lineno, var),
                            val))
            f = f.f_back
    ids.append(id(roots))
    return roots, ids


def _snap_module_dict(d):  # type: (Any) -> bool
    """Is ``d`` the namespace of the module sys.modules holds under its __name__ (``__main__``'s,
    where the injected line runs)? Only our own frames' globals are asked: those or fresh dicts.
    One lookup, not every module's __dict__ read (each read wrote the module's and its dict's
    reference counts: pages the target had to fault in just before its fork)."""
    if type(d) is not dict:
        return False
    name = dict.get(d, "__name__")
    m = sys.modules.get(name) if type(name) is str else None
    # the module's own slot, read by its member descriptor: no __getattr__ of a module subclass
    return (m is not None and issubclass(type(m), _ModuleType)
            and _module_dict.__get__(m, _ModuleType) is d)


COMMANDS["snapshot"] = cmd_snapshot
