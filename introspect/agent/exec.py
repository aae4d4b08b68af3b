# introspect agent, exec (`introspect exec`): runs in the TARGET, on its main thread.
# Runs the user's file with its output captured; the user's code may do anything it likes,
# this file no more than the others.
#
# Imports: nothing at run time; builtin C modules through core's _builtin(). Python 3.8
# syntax. Every rule in core.py's header binds it (no reference to a target object kept
# after we return, no repr() of user objects, never raise out, budget and deadline checked).

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.core import COMMANDS, _exc_record, _gc_enabled, _thread, gc, time


def _capture_class():  # type: () -> type
    # Made per exec call, not at agent load: a class is cyclic garbage once we are done, and the
    # commands that count objects must not leave one behind for growth to report.
    class _Capture(object):
        """sys.stdout/sys.stderr stand-in: keeps what *our* thread writes, passes other threads'
        on."""

        def __init__(self, orig, tid):  # type: (object, int) -> None
            self._orig = orig
            self._tid = tid
            self.parts = []  # type: list

        def write(self, s):  # type: (str) -> int
            if _thread.get_ident() == self._tid:
                self.parts.append(str(s))
                return len(s)
            return self._orig.write(s)  # type: ignore[attr-defined, no-any-return]

        def flush(self):  # type: () -> None
            if _thread.get_ident() != self._tid and self._orig is not None:
                self._orig.flush()  # type: ignore[attr-defined]

        def __getattr__(self, name):  # type: (str) -> object
            return getattr(self._orig, name)

    return _Capture


def cmd_exec(params):  # type: (dict) -> dict
    _Capture = _capture_class()
    with open(params["payload"], "rb") as f:
        source = f.read()
    tid = _thread.get_ident()
    out = _Capture(sys.stdout, tid)
    err = _Capture(sys.stderr, tid)
    namespace = {"__name__": "__introspect_exec__", "__file__": params["display_name"]}
    error = None
    sys.stdout, sys.stderr = out, err
    t0 = time.perf_counter()
    # the user's code sees the collector as the target had it
    held = _gc_enabled() and not gc.isenabled()
    try:
        if held:
            gc.enable()
        exec(compile(source, params["display_name"], "exec"), namespace)
    except BaseException as exc:  # the payload's own failure is a result, not ours
        error = _exc_record(exc, True)
        exc.__traceback__ = None
    finally:
        if held and gc.isenabled():
            gc.disable()
        if sys.stdout is out:
            sys.stdout = out._orig
        if sys.stderr is err:
            sys.stderr = err._orig
    return {
        "stdout": "".join(out.parts),
        "stderr": "".join(err.parts),
        "exception": error,
        "run_s": time.perf_counter() - t0,
    }



COMMANDS["exec"] = cmd_exec
