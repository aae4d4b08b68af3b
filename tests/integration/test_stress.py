"""scripts/stress stays runnable and honest: a few rounds on one real interpreter, every count zero.

The full load (500 rounds per kind) is run by hand (scripts/stress); this keeps the script from
rotting in seconds: 9 rounds = top, growth and backrefs three times each, residue checked thrice.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import INTERPS, REPO

# The stripped distro build through gdb is the production case; a pyenv build is the fallback.
PREFERRED = ["debian-3.11-gdb", "pyenv-3.12-gdb", "pyenv-3.11-gdb"]


def test_stress_rounds_leave_victim_unharmed() -> None:
    available = {f"{i.id}-{m}" for i in INTERPS for m in i.methods}
    kind = next((k for k in PREFERRED if k in available), None)
    if kind is None:
        pytest.skip(f"none of {', '.join(PREFERRED)} on this machine")
    # GIVEN the stress script on one interpreter kind, WHEN it injects 9 times into its busy victim
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stress.py"), "--rounds", "9", "--check-every", "3", "--kinds", kind, "--json"],
        capture_output=True, text=True, timeout=300,
    )
    # THEN every round succeeded and nothing was harmed or left behind
    assert proc.stdout, proc.stderr
    (row,) = json.loads(proc.stdout)["kinds"]
    assert (row["kind"] + "-" + row["method"]) == kind
    assert row["rounds"] == 9 and row["ok"] == 9, row["problems"]
    for count in ("crashes", "hangs", "victim_errors", "residue", "cli_failures"):
        assert row[count] == 0, (count, row["problems"])
    assert 0 < row["paused_median_s"] <= row["paused_p99_s"]
    assert proc.returncode == 0, proc.stderr
