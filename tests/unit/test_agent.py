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
    assert abs(result["types"]["function"] - objgraph.count("function")) <= 60
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
