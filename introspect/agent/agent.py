# introspect agent: runs INSIDE the target process, on its main thread, at a safe point.
#
# Rules (DESIGN.md): stdlib builtin modules only (no pure-Python stdlib imports: each would stay
# in the target's sys.modules), Python 3.8 syntax, no reference to a target object kept after we
# return (we would create the leak we hunt), never repr() user objects unless asked, never raise
# out of here (the bootstrap swallows, but the result file is how the CLI learns what happened).
#
# The bootstrap executes this file in a fresh dict holding REQUEST (a literal written by the CLI):
#   {"nonce", "deadline" (time.time()), "dir" (run dir, target's view), "command", "params"}
# Results go to DIR/result.json (written to a temp name, then renamed); DIR/started marks the start.
import sys

_G = globals()
_NEW_MODULES = []  # builtin modules this run imported; popped again from sys.modules at the end
STATE_MODULE = "__introspect_state__"


def _builtin(name):  # type: (str) -> object
    mod = sys.modules.get(name)
    if mod is None:
        mod = __import__(name)
        _NEW_MODULES.append(name)
    return mod


gc = _builtin("gc")
time = _builtin("time")
posix = _builtin("posix")
_thread = _builtin("_thread")
try:
    _count_elements = _builtin("_collections")._count_elements  # type: ignore[attr-defined]
except (ImportError, AttributeError):  # pragma: no cover - every CPython 3.8+ has it
    _count_elements = None

_FunctionType = type(_builtin)
_type_module = type.__dict__["__module__"]
_type_qualname = type.__dict__["__qualname__"]

# ---------------------------------------------------------------------------------------------
# output: a tiny JSON writer (the json package is pure Python; importing it would be residue)

_ESC = {i: "\\u%04x" % i for i in range(32)}
_ESC.update({34: '\\"', 92: "\\\\", 10: "\\n", 13: "\\r", 9: "\\t"})


def _dump(obj, out):  # type: (object, list) -> None
    if obj is None or obj is True or obj is False:
        out.append("null" if obj is None else ("true" if obj else "false"))
    elif isinstance(obj, str):
        out.append('"' + obj.translate(_ESC) + '"')
    elif isinstance(obj, int):
        out.append(int.__repr__(obj))
    elif isinstance(obj, float):
        out.append(float.__repr__(obj) if obj == obj and obj not in (float("inf"), float("-inf")) else "null")
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for k, v in obj.items():
            if not first:
                out.append(",")
            first = False
            out.append('"' + str(k).translate(_ESC) + '":')
            _dump(v, out)
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _dump(v, out)
        out.append("]")
    else:
        out.append('"' + str(type(obj).__name__).translate(_ESC) + '"')


def _write_file(path, data):  # type: (str, bytes) -> None
    # O_EXCL|O_NOFOLLOW: never follow a planted symlink; 0600: results can hold secrets.
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW, 0o600)  # type: ignore[attr-defined]
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]  # type: ignore[attr-defined]
    finally:
        posix.close(fd)  # type: ignore[attr-defined]


def _write_json(path, obj):  # type: (str, object) -> None
    out = []  # type: list
    _dump(obj, out)
    tmp = path + ".tmp"
    _write_file(tmp, "".join(out).encode("utf-8", "backslashreplace"))
    posix.rename(tmp, path)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# naming and bookkeeping


def type_name(t):  # type: (type) -> str
    """module.qualname, read through type's own descriptors (a metaclass cannot run code here)."""
    try:
        mod = _type_module.__get__(t, type)
        qual = _type_qualname.__get__(t, type)
    except Exception:
        return "?"
    if not isinstance(qual, str):
        qual = "?"
    if mod == "builtins" or not isinstance(mod, str):
        return qual
    return mod + "." + qual


def _own_objects():  # type: () -> list
    """Objects of the agent itself that gc tracks: subtracted so counts describe the target."""
    own = [_G]
    for v in _G.values():
        if type(v) is _FunctionType:
            own.append(v)
            own.append(v.__code__)
            if v.__defaults__:
                own.append(v.__defaults__)
        elif isinstance(v, (dict, list, tuple)):
            own.append(v)
    return [o for o in own if gc.is_tracked(o)]


def _count_types(objs):  # type: (list) -> dict
    counts = {}  # type: dict
    if _count_elements is not None:
        _count_elements(counts, map(type, objs))
    else:  # pragma: no cover
        for o in objs:
            t = type(o)
            counts[t] = counts.get(t, 0) + 1
    for o in _own_objects():
        t = type(o)
        if counts.get(t, 0) > 0:
            counts[t] -= 1
    named = {}  # type: dict
    for t, n in counts.items():
        if n > 0:
            name = type_name(t)
            named[name] = named.get(name, 0) + n
    return named


def _gc_facts():  # type: () -> dict
    facts = {"enabled": gc.isenabled(), "counts": list(gc.get_count())}
    if hasattr(gc, "get_freeze_count"):
        facts["frozen"] = gc.get_freeze_count()
    return facts


# ---------------------------------------------------------------------------------------------
# commands: each takes the request params and returns a JSON-able dict


def cmd_top(params):  # type: (dict) -> dict
    t0 = time.perf_counter()
    if params.get("collect"):
        gc.collect()
    objs = gc.get_objects()
    try:
        total = len(objs) - len(_own_objects())
        counts = _count_types(objs)
    finally:
        del objs
    return {
        "objects": total,
        "types": counts,
        "gc": _gc_facts(),
        "scan_s": time.perf_counter() - t0,
    }


class _Capture(object):
    """sys.stdout/sys.stderr stand-in: keeps what *our* thread writes, passes other threads' on."""

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


def _exc_record(exc, skip_file):  # type: (BaseException, str) -> dict
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename != skip_file:
            frames.append([code.co_filename, tb.tb_lineno, code.co_name])
        tb = tb.tb_next
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return {"type": type_name(type(exc)), "message": message, "frames": frames}


def cmd_exec(params):  # type: (dict) -> dict
    with open(params["payload"], "rb") as f:
        source = f.read()
    tid = _thread.get_ident()
    out = _Capture(sys.stdout, tid)
    err = _Capture(sys.stderr, tid)
    namespace = {"__name__": "__introspect_exec__", "__file__": params["display_name"]}
    error = None
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    t0 = time.perf_counter()
    try:
        exec(compile(source, params["display_name"], "exec"), namespace)
    except BaseException as exc:  # the payload's own failure is a result, not ours
        error = _exc_record(exc, __file__)
        exc.__traceback__ = None
    finally:
        if sys.stdout is out:
            sys.stdout = out._orig  # type: ignore[assignment]
        if sys.stderr is err:
            sys.stderr = err._orig  # type: ignore[assignment]
    return {
        "stdout": "".join(out.parts),
        "stderr": "".join(err.parts),
        "exception": error,
        "run_s": time.perf_counter() - t0,
    }


COMMANDS = {"top": cmd_top, "exec": cmd_exec}


# ---------------------------------------------------------------------------------------------
# entry point


def run(request):  # type: (dict) -> None
    wall0 = time.time()
    if wall0 > request["deadline"]:
        return  # the CLI gave up on this request: do nothing, leave nothing
    rundir = request["dir"]
    t0 = time.perf_counter()
    try:
        _write_file(rundir + "/started", b"")
    except OSError:
        return  # run dir gone or not ours: a late or foreign request
    envelope = {"nonce": request["nonce"], "command": request["command"], "pid": posix.getpid()}  # type: ignore[attr-defined]
    try:
        envelope["result"] = COMMANDS[request["command"]](request["params"])
        envelope["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported to the CLI, never raised in the target
        envelope["ok"] = False
        envelope["error"] = _exc_record(exc, "")
        exc.__traceback__ = None
    envelope["agent_s"] = time.perf_counter() - t0
    envelope["python"] = "%d.%d.%d" % sys.version_info[:3]
    try:
        _write_json(rundir + "/result.json", envelope)
    except OSError:
        pass


def _finish():  # type: () -> None
    for name in _NEW_MODULES:
        sys.modules.pop(name, None)


if "REQUEST" in _G:
    try:
        run(_G["REQUEST"])
    finally:
        _finish()
        # Break the function<->globals cycles now, so nothing of ours waits for the next collection.
        _G.clear()
