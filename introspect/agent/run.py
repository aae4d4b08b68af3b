# introspect agent, entry point (run.py): runs in the TARGET, on its main thread; shipped LAST, with
# every command. run() takes the request, runs the command, writes DIR/result.json (_answer).
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
        _NEW_MODULES,
        COMMANDS,
        _exc_record,
        _own_file,
        _write_file,
        _write_json,
        posix,
        time,
    )


# ---------------------------------------------------------------------------------------------
# entry point


def _agent_running():  # type: () -> bool
    """Does another thread run an agent still, from a run its CLI gave up on (a step that ran past
    the deadline)? Two agents at once would walk, collect or fork concurrently."""
    # Every frame this holds is let go before it returns: its own frame, kept in a local, would be
    # a reference cycle holding our run's frames (and the bootstrap's namespace, the agent's code
    # and its source bytes under them) until the target's next collection.
    # not _thread.get_ident(): gevent patches it to name greenlets
    me = sys._getframe()  # type: Any
    frames = top = f = None  # type: Any
    try:
        frames = sys._current_frames()
        for top in frames.values():
            f = top if top is not me else None
            while f is not None:
                code = f.f_code
                if code.co_name == "run" and _own_file(code.co_filename):
                    return True
                f = f.f_back
        return False
    except Exception:
        return False
    finally:
        me = frames = top = f = None


# a command's result meaning: nothing left to write
_ANSWERED = ("the forked child wrote the answer",)


def _answer(result):  # type: (object) -> None
    """Complete this run's envelope with ``result`` and write result.json, which the CLI waits for.
    Called by run(), or by a forked child for its parent (cmd_snapshot): the copy has the envelope
    run() began, and the parent, which writes nothing after its fork, pays no copy-on-write."""
    envelope, t0 = _LIMIT["answer"]
    if "ok" not in envelope:  # set (False) when the command raised
        envelope["result"] = result
        envelope["ok"] = True
    envelope["agent_s"] = time.perf_counter() - t0
    # ("loaded" precompiled | "compiled", seconds): see codecache
    envelope["code"] = _G.get("_LOADED")
    envelope["python"] = "%d.%d.%d" % sys.version_info[:3]
    envelope["imported"] = list(_NEW_MODULES)
    try:
        _write_json(_LIMIT["dir"] + "/result.json", envelope)
    except OSError:
        pass


def run(request):  # type: (dict) -> None
    wall0 = time.time()
    if wall0 > request["deadline"]:
        return  # the CLI gave up on this request: do nothing, leave nothing
    rundir = request["dir"]
    if _agent_running():
        try:
            _write_json(rundir + "/result.json", {"nonce": request["nonce"], "ok": False, "error": {
                "type": "AgentBusy",
                "message": "an agent of an earlier run is still running in this process",
                "frames": []}})
        except OSError:
            pass
        return
    _LIMIT["deadline"], _LIMIT["dir"] = request["deadline"], rundir
    t0 = time.perf_counter()
    try:
        _write_file(rundir + "/started", b"")
    except OSError:
        return  # run dir gone or not ours: a late or foreign request
    envelope = {"nonce": request["nonce"], "command": request["command"], "pid": posix.getpid()}
    _LIMIT["answer"] = (envelope, t0)
    result = None  # type: Any
    try:
        result = COMMANDS[request["command"]](request["params"])
    except BaseException as exc:  # noqa: BLE001 - reported to the CLI, never raised in the target
        envelope["ok"] = False
        envelope["error"] = _exc_record(exc, False)
        exc.__traceback__ = None
    if result is not _ANSWERED:
        _answer(result)


if "REQUEST" in _G:
    try:
        run(_G["REQUEST"])
    finally:
        # Break the function<->globals cycles now, so nothing of ours waits for the next collection.
        _G.clear()
