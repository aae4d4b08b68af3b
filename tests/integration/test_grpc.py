"""A gRPC worker (tests/victims/grpc_worker.py: a real grpcio server and clients calling it over
loopback) is never forked: its commands run in-process and say why.

gRPC registers fork handlers that run in the target at any fork, ours included. Measured with
grpcio 1.85 (/work/notes/issue-10-grpc.md has the figures): by default its C core's pthread_atfork
handlers printed "Other threads are currently calling into gRPC, skipping fork() handlers" on the
target's stderr at most forks (its clients are always inside gRPC) or stopped and restarted its
thread pools, and a copy forked twice died of SIGSEGV in a gRPC event_engine thread about once in
40; with GRPC_ENABLE_FORK_SUPPORT=1 its os.register_at_fork hooks also hung the forked copy (no
walker, a stray copy, the command timed out). The CLI sees gRPC's C core in /proc/PID/maps before
injecting anything; the agent checks sys.modules again before it would fork.
"""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from introspect.agent import AGENT_PATH
from tests.conftest import (
    Interp,
    Victim,
    forked_copies,
    interp_params,
    introspect,
    state_beyond,
    victim_deps,
)


def _spawn(spawn: Any, interp: Interp, oracle: str, **env: str) -> Victim:
    deps = victim_deps("grpcio", interp)
    victim: Victim = spawn(interp, "grpc_worker.py", env={"PYTHONPATH": f"{oracle}:{deps}", **env})
    return victim


def _copies(victim: Victim) -> list[psutil.Process]:
    """Processes forked from the victim (walkers, intermediates): see conftest.forked_copies."""
    return forked_copies(victim.pid)


def _serving(victim: Victim, after: int, timeout: float = 10.0) -> dict[str, Any]:
    """The victim's state once its clients have completed calls beyond ``after``."""
    return state_beyond(victim, "ok", after, timeout)


def _unharmed(victim: Victim, before: dict[str, Any]) -> None:
    after = _serving(victim, before["ok"])
    assert after["ok"] > before["ok"], "the gRPC clients stopped completing calls"
    assert after["n_errors"] == 0, after["errors"]
    assert victim.alive()


@pytest.mark.parametrize("interp", interp_params())
def test_grpc_worker_is_counted_in_process_and_never_forked(spawn: Any, interp: Interp, oracle_path: str,
                                                            tmp_path: Path) -> None:
    # GIVEN a gRPC server and three clients calling it continuously, default gRPC settings
    victim = _spawn(spawn, interp, oracle_path)
    before = _serving(victim, 0)
    pid = str(victim.pid)
    # WHEN top, growth and backrefs run on their default path
    top = introspect("top", pid, "--limit", "0", "--json", "-v", "-o", str(tmp_path / "t"))
    growth = introspect("growth", pid, "--json", "-o", str(tmp_path / "g"))
    backrefs = introspect("backrefs", pid, "EchoRecord", "--json", "-o", str(tmp_path / "b"))
    # THEN each succeeds in-process, saying why (gRPC is loaded), read from /proc before any injection
    for name, run in (("top", top), ("growth", growth), ("backrefs", backrefs)):
        assert run.rc == 0, f"{name}: {run.stderr}"
        col = run.json()["collector"]
        assert col["path"] == "in-process" and col["why"].startswith("gRPC is loaded in the target (cygrpc."), (name, col)
    assert "introspect: collecting in-process: gRPC is loaded in the target" in top.stderr
    assert any(t["type"] == "__main__.EchoRecord" and t["count"] >= 200 for t in top.json()["types"])
    assert backrefs.json()["found"] >= 200  # the worker's bounded deque of served records
    # AND the worker never forked: no copy, nothing on its stderr, its calls going on without error
    assert _copies(victim) == []
    _unharmed(victim, before)
    assert victim.stderr() == ""


@pytest.mark.parametrize("interp", interp_params())
def test_grpc_fork_support_is_never_forked_even_with_fork(spawn: Any, interp: Interp, oracle_path: str,
                                                          tmp_path: Path) -> None:
    # GIVEN the same worker with gRPC's fork support on (its os.register_at_fork hooks registered)
    victim = _spawn(spawn, interp, oracle_path, GRPC_ENABLE_FORK_SUPPORT="1")
    before = _serving(victim, 0)
    pid = str(victim.pid)
    # WHEN a forked snapshot is asked for explicitly, and growth runs on its default path
    top = introspect("top", pid, "--fork", "--json", "-v", "-o", str(tmp_path / "t"))
    growth = introspect("growth", pid, "--fork", "--json", "-o", str(tmp_path / "g"))
    # THEN both count in-process, saying why
    for name, run in (("top", top), ("growth", growth)):
        assert run.rc == 0, f"{name}: {run.stderr}"
        col = run.json()["collector"]
        assert col["path"] == "in-process" and col["why"].startswith("gRPC is loaded in the target"), (name, col)
        assert col["why"].endswith("never forked, even with --fork"), col
    assert "introspect: collecting in-process: gRPC is loaded in the target" in top.stderr
    # AND what needs the fork says so, naming what runs instead
    retained = introspect("top", pid, "--by", "retained", "-o", str(tmp_path / "r"))
    assert retained.rc == 2 and "--by retained needs a forked snapshot" in retained.stderr, retained.stderr
    assert "gRPC loaded is never forked: use --by count or --by size" in retained.stderr.replace("\n", " ")
    # AND nothing was forked or printed, and the calls go on
    assert _copies(victim) == []
    _unharmed(victim, before)
    assert victim.stderr() == ""


AGENT_PROBE = """
import runpy, sys, threading
import grpc
channel = grpc.insecure_channel("127.0.0.1:9")  # loads and initialises gRPC's C core
ns = runpy.run_path(sys.argv[1])  # the agent's definitions, as in tests/unit/test_agent.py
print(repr(ns["cmd_snapshot"]({})), flush=True)
"""


@pytest.mark.parametrize("fork_support", ["", "1"], ids=["default", "fork-support"])
@pytest.mark.parametrize("interp", [p for p in interp_params() if p.id in ("pyenv-3.8", "pyenv-3.12", "sid-3.15")])
def test_agent_refuses_to_fork_a_grpc_process(interp: Interp, fork_support: str, tmp_path: Path) -> None:
    # GIVEN a real process with gRPC's C core loaded (the CLI's /proc check bypassed: the agent alone decides)
    deps = victim_deps("grpcio", interp)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": deps, "LC_ALL": "C.UTF-8"}
    if fork_support:
        env["GRPC_ENABLE_FORK_SUPPORT"] = fork_support
    # WHEN the agent's snapshot command runs in it
    proc = subprocess.run([interp.path, "-c", AGENT_PROBE, str(AGENT_PATH)], capture_output=True, text=True, timeout=60,
                          env=env, cwd=str(tmp_path))
    # THEN it returns without forking, naming gRPC (and its fork support when on), and nothing is printed
    assert proc.returncode == 0, proc.stderr
    res = ast.literal_eval(proc.stdout.strip())
    assert res["forked"] is False and res["refused"] == "grpc", res
    want = "gRPC fork support is on in the target" if fork_support else "gRPC is loaded in the target"
    assert res["error"].startswith(want), res
    assert proc.stderr == ""


def test_grpc_core_read_from_proc(spawn: Any, oracle_path: str) -> None:
    from introspect.snapshot import collect

    interp = next((p.values[0] for p in interp_params() if p.id == "pyenv-3.12"), interp_params()[0].values[0])
    victim = _spawn(spawn, interp, oracle_path)
    lib = collect.grpc_core(victim.pid)
    assert lib is not None and os.path.basename(lib).startswith("cygrpc.") and os.path.exists(lib), lib
    assert collect.grpc_core(os.getpid()) is None
