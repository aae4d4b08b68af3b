"""The agent is a real module: exercised here in-process (no injection), against objgraph."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from typing import Any

import objgraph
import pytest

from introspect.agent import AGENT_PATH


@pytest.fixture(scope="module")
def agent() -> dict[str, Any]:
    # Loaded without REQUEST: only definitions run, nothing is executed or written.
    return runpy.run_path(str(AGENT_PATH))


def test_json_writer_round_trips(agent: dict[str, Any]) -> None:
    doc = {"s": 'quote " back \\ nl \n tab \t ctl \x01 é ☃', "i": -3, "f": 1.5, "nan": float("nan"),
           "l": [1, [2, None]], "t": (True, False), "d": {"k": {}}}
    out: list[str] = []
    agent["_dump"](doc, out)
    back = json.loads("".join(out))
    assert back["s"] == doc["s"] and back["nan"] is None and back["t"] == [True, False]
    assert back["l"] == [1, [2, None]] and back["d"] == {"k": {}}


def test_type_name_never_runs_user_code(agent: dict[str, Any]) -> None:
    class Meta(type):
        def __getattribute__(cls, name: str) -> Any:
            raise RuntimeError("user code ran")

    class Sneaky(metaclass=Meta):
        pass

    assert agent["type_name"](Sneaky).endswith("test_type_name_never_runs_user_code.<locals>.Sneaky")
    assert agent["type_name"](dict) == "dict"


def test_top_counts_match_objgraph_in_process(agent: dict[str, Any]) -> None:
    class Probe:
        pass

    probes = [Probe() for _ in range(321)]
    result = agent["cmd_top"]({})
    name = agent["type_name"](Probe)
    assert result["types"][name] == 321 == objgraph.count(Probe.__qualname__.rsplit(".", 1)[-1])
    # the agent leaves its own functions out; objgraph counts them
    own = sum(1 for v in agent.values() if type(v) is type(test_top_counts_match_objgraph_in_process))
    assert abs(result["types"]["function"] + own - objgraph.count("function")) <= 20
    del probes


def test_backrefs_finds_a_closure_holder() -> None:
    # In a fresh interpreter: the chain must not depend on what pytest's own heap holds.
    code = f"""
import json, runpy
agent = runpy.run_path({str(AGENT_PATH)!r})
class Kept: pass
def make():
    held = [Kept()]
    def f(): return held
    return f
_HOLDER_FOR_TEST = {{"fn": make()}}
res = agent["cmd_backrefs"]({{"type": agent["type_name"](Kept), "samples": 5}})
print(json.dumps(res))
"""
    res = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout)
    assert res["status"] == "ok" and res["found"] == 1 and not res["partial"]
    vias = [s["via"] for c in res["chains"] for s in c["path"]]
    assert "._HOLDER_FOR_TEST" in vias and "closure var held" in vias


def test_backrefs_counts_cycle_only_and_held_from_c_apart() -> None:
    # GIVEN in a fresh interpreter with the collector off: one Kept held by a module global, three
    # in reference cycles nothing else holds, two in a list whose only reference C code keeps
    code = f"""
import ctypes, gc, json, runpy
gc.disable()
agent = runpy.run_path({str(AGENT_PATH)!r})
class Kept: pass
KEPT = Kept()
for _ in range(3):
    k = Kept()
    k.me = k
del k
c_held = [Kept(), Kept()]
ctypes.pythonapi.Py_IncRef(ctypes.py_object(c_held))
del c_held
res = agent["cmd_backrefs"]({{"type": agent["type_name"](Kept), "samples": 10}})
print(json.dumps(res))
"""
    res = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout)
    # THEN each case is counted apart, and the search limit is not blamed
    assert res["status"] == "ok" and res["found"] == 6 and not res["partial"]
    assert (res["unrooted"], res["unrooted_cycle"], res["unrooted_held_from_c"], res["unrooted_limit"]) == (5, 3, 2, 0), res


def test_backrefs_unknown_and_ambiguous(agent: dict[str, Any]) -> None:
    assert agent["cmd_backrefs"]({"type": "NoSuchTypeAnywhere"})["status"] == "unknown"

    def make(n: int) -> Any:
        class Twin:
            pass

        Twin.__module__ = f"mod{n}"
        Twin.__qualname__ = "Twin"
        return Twin()

    twins = [make(1), make(2)]
    res = agent["cmd_backrefs"]({"type": "Twin"})
    assert res["status"] == "ambiguous" and [c[0] for c in res["candidates"]] == ["mod1.Twin", "mod2.Twin"]
    del twins


def test_sizes_count_shared_objects_once_and_never_call_user_sizeof() -> None:
    # In a fresh interpreter, so the totals describe only what this test made.
    code = f"""
import json, os, runpy, sys
agent = runpy.run_path({str(AGENT_PATH)!r})
class Holder: pass
class Liar:
    def __sizeof__(self):
        raise RuntimeError("user __sizeof__ ran")
big = "s" * 1_000_000
holders = []
for _ in range(500):
    h = Holder(); h.text = big; holders.append(h)
payloads = [{{"p": os.urandom(3000)}} for _ in range(200)]
liars = [Liar() for _ in range(3)]
res = agent["cmd_top"]({{"sizes": True}})
print(json.dumps({{"res": res, "big": sys.getsizeof(big), "each": sys.getsizeof(payloads[0]["p"])}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout)
    sizes, big = out["res"]["sizes"], out["big"]
    # the 1 MB string held by 500 objects is counted once, not 500 times
    assert big <= sizes["str"][2] < big + 2_000_000
    # each distinct untracked payload is counted, at its sys.getsizeof size
    assert sizes["bytes"][1] >= 200 and sizes["bytes"][2] >= 200 * out["each"]
    # a Python-level __sizeof__ is never called: basic size instead
    assert sizes["__main__.Liar"][0] == 3 and sizes["__main__.Liar"][2] > 0
    assert sizes["__main__.Holder"][0] == 500 and not out["res"]["partial"]


def test_traverse_rule_trusts_core_and_python_classes_only(agent: dict[str, Any]) -> None:
    import _asyncio
    import collections
    import decimal
    import sys as _sys

    class Plain:
        pass

    class Rows(list):  # type: ignore[type-arg]
        pass

    Point = collections.namedtuple("Point", "x y")
    trusted, opaque = agent["_trusted"], agent["_opaque"]
    for t in (list, tuple, dict, set, frozenset, type, collections.deque, collections.OrderedDict, Plain, Rows, Point,
              type(lambda: 0), ValueError):
        assert trusted(t), t
    # modules are reached through __dict__; C types of extension modules are opaque; Python
    # subclasses of a C type are as opaque as their base
    assert not trusted(type(_sys)) and not opaque(type(_sys))
    assert not trusted(_asyncio.Future) and opaque(_asyncio.Future)

    class MyFuture(_asyncio.Future):  # type: ignore[misc]
        pass

    assert not trusted(MyFuture) and opaque(MyFuture)
    # a C type that is not gc-capable holds no references to walk: not "opaque"
    assert not trusted(decimal.Decimal) and not opaque(decimal.Decimal)


def test_stop_reasons(agent: dict[str, Any], tmp_path: Any) -> None:
    import time

    g = agent["_stopped"].__globals__
    saved = dict(g["_LIMIT"])
    try:
        g["_LIMIT"].update(deadline=time.time() + 100, dir="")
        agent["_start_clock"](0.0)
        time.sleep(0.01)
        assert agent["_stopped"]() == "budget"
        g["_LIMIT"].update(deadline=time.time() + 1.2)  # one second is kept to answer
        agent["_start_clock"](50.0)
        assert g["_LIMIT"]["kind"] == "deadline"
        g["_LIMIT"].update(deadline=time.time() + 100, dir=str(tmp_path / "gone"))
        agent["_start_clock"](50.0)
        g["_LIMIT"]["next_check"] = 0.0
        assert agent["_stopped"]() == "cancelled"  # the CLI removed the run dir: it gave up
    finally:
        g["_LIMIT"].clear()
        g["_LIMIT"].update(saved)


def test_trace_session_ends_by_itself_and_stop_leaves_nothing(agent: dict[str, Any]) -> None:
    import _tracemalloc
    import threading
    import time

    if _tracemalloc.is_tracing():
        pytest.skip("this test process already traces (PYTHONTRACEMALLOC or -X tracemalloc)")
    # GIVEN a session of 0.5 s THEN tracing is on with its module, and off without it soon after
    started = agent["cmd_trace_start"]({"frames": 2, "for_s": 0.5})
    assert started["status"] == "started" and started["owner"] == "introspect" and started["frames"] == 2
    assert _tracemalloc.is_tracing() and agent["TRACE_MODULE"] in sys.modules
    deadline = time.monotonic() + 10
    while _tracemalloc.is_tracing() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _tracemalloc.is_tracing() and agent["TRACE_MODULE"] not in sys.modules
    # GIVEN a new session WHEN shown and stopped THEN this test's allocation line is a site, and nothing is left
    threads = threading.active_count()
    agent["cmd_trace_start"]({"frames": 1, "for_s": 60})
    keep = [bytearray(1000) for _ in range(200)]  # this line allocates ~200 KB
    shown = agent["cmd_trace_stop"]({"traceback": 1})
    assert shown["stopped"] and not shown["tracing_after"] and agent["TRACE_MODULE"] not in sys.modules
    assert any(f[0][0] == __file__ and size >= 200_000 for f, size, _count in shown["sites"])
    assert not _tracemalloc.is_tracing() and threading.active_count() == threads
    del keep


def test_grpc_refusal_reads_module_dicts_only(agent: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import posix
    import types

    refusal = agent["_grpc_refusal"]
    name = "grpc._cython.cygrpc"
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delitem(posix.environ, b"GRPC_ENABLE_FORK_SUPPORT", raising=False)
    # GIVEN no gRPC THEN nothing to refuse
    assert refusal() == ""
    # GIVEN gRPC's core loaded THEN refused, its fork support named when on
    cy = types.ModuleType(name)
    cy._GRPC_ENABLE_FORK_SUPPORT = False  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, cy)
    assert refusal().startswith("gRPC is loaded in the target")
    cy._GRPC_ENABLE_FORK_SUPPORT = True  # type: ignore[attr-defined]
    assert refusal().startswith("gRPC fork support is on in the target")

    # GIVEN a module object that runs code on any attribute access THEN none runs: the environment
    # gRPC would have read at its import decides the wording
    class Hostile(types.ModuleType):
        def __getattribute__(self, attr: str) -> Any:
            raise RuntimeError("foreign code ran")

    monkeypatch.setitem(sys.modules, name, Hostile(name))
    assert refusal().startswith("gRPC is loaded in the target")
    monkeypatch.setitem(posix.environ, b"GRPC_ENABLE_FORK_SUPPORT", b"True")
    assert refusal().startswith("gRPC fork support is on in the target")


def test_a_second_agent_refuses_while_an_earlier_one_runs(agent: dict[str, Any], tmp_path: Any) -> None:
    import threading

    # GIVEN a thread still inside an earlier run's agent (its `run` compiled from a run dir's agent.py)
    entered, release = threading.Event(), threading.Event()
    earlier: dict[str, Any] = {"entered": entered, "release": release}
    exec(compile("def run(request):\n    entered.set()\n    release.wait(20)\n", "/tmp/introspect-1-0123456789abcdef/agent.py", "exec"),
         earlier)
    th = threading.Thread(target=earlier["run"], args=({},), daemon=True)
    th.start()
    try:
        assert entered.wait(10)
        # WHEN a new agent starts THEN it does nothing but say so
        assert agent["_agent_running"]() is True
        agent["run"]({"deadline": 4e9, "dir": str(tmp_path), "nonce": "n1", "command": "top", "params": {}})
        assert json.loads((tmp_path / "result.json").read_text())["error"]["type"] == "AgentBusy"
        assert not (tmp_path / "started").exists()
    finally:
        release.set()
        th.join(10)
    # AND once the earlier one is gone, agents run again
    assert agent["_agent_running"]() is False
