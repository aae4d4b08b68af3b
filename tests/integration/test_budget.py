"""The budget and the request's deadline bind the agent inside the target (issue: never harm it).

The in-process size walk (no headroom to fork, or --in-process) that cannot finish in --budget
answers within budget + 1 s, marked partial with the reason, and leaves the target's RSS where it was; with --budget above --timeout, the deadline
stops it instead and the answer still arrives, marked as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Interp, interp_params, introspect

RSS_SLACK = 8 << 20


@pytest.mark.parametrize("interp", interp_params())
def test_size_walk_stops_at_budget_then_at_deadline(interp: Interp, spawn: Any, tmp_path: Path) -> None:
    # GIVEN a target holding 1.5M untracked tuples (a full walk takes seconds)
    victim = spawn(interp)
    assert victim.ask("tuples 1500000 4", timeout=60) == {"tracked": False}
    rss0 = victim.ask("rss")["rss"]

    # WHEN the walk's budget is far too small THEN a partial answer within budget + 1 s, saying why
    run = introspect("top", str(victim.pid), "--by", "size", "--in-process", "--budget", "0.2", "--json", "-o", str(tmp_path))
    assert run.rc == 0, run.stderr
    doc = run.json()
    assert doc["partial"] and doc["stopped"] == "budget"
    assert doc["agent_s"] < 0.2 + 1.0
    assert any(t["type"] == "tuple" for t in doc["types"])
    text = introspect("top", str(victim.pid), "--by", "size", "--in-process", "--budget", "0.2", "-o", str(tmp_path))
    assert "PARTIAL: the agent was stopped by its budget of 0.2 s" in text.stdout
    assert "heap may be very large" not in text.stdout + text.stderr

    # WHEN the budget exceeds the request's timeout THEN the deadline stops it, and the answer arrives
    run = introspect("top", str(victim.pid), "--by", "size", "--in-process", "--budget", "100", "--timeout", "2", "--json", "-o", str(tmp_path))
    assert run.rc == 0, run.stderr
    doc = run.json()
    assert doc["partial"] and doc["stopped"] == "deadline"

    # THEN the target runs on, its memory where it was
    st = victim.ask("state")
    assert st["errors"] == [] and st["threads_alive"]
    assert victim.ask("rss")["rss"] - rss0 < RSS_SLACK
