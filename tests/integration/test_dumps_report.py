"""The report and dumps: a snapshot kept without a breakdown still reports; `report PID
--keep-dir` keeps its looks, each with its memory breakdown, and they make the report again once
the process is gone. (`memory FILE` and `report FILE1 FILE2` against the live commands, on every
interpreter kind: test_dumps.py's test_files_answer_as_the_live_process_did.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import INTERPS, REPO, introspect

HOLDER = "module __main__ .global_data_store"


def _ok(*args: str) -> Any:
    run = introspect(*args, "--json", timeout=180)
    assert run.rc == 0, run.stderr
    assert "Traceback" not in run.stderr
    return run.json()


def test_a_dump_without_a_breakdown_still_reports(spawn, tmp_path: Path) -> None:
    interp = next((i for i in INTERPS if i.id == "debian-3.11"), INTERPS[0])
    # GIVEN a snapshot kept by a live top (no allocators read)
    v = spawn(interp, "seeds_leak.py")
    v.ask("leak 500")
    kept = str(tmp_path / "kept.pydump")
    _ok("top", str(v.pid), "--keep", kept, "-o", str(tmp_path / "t"))
    v.proc.kill()
    v.proc.wait(10)
    # WHEN a report is made of it
    rep = _ok("report", kept, "-o", str(tmp_path / "r"))
    # THEN everything else is there, and the missing breakdown is said with its reason
    assert rep["breakdown"] is None and "--keep" in rep["cannot"]["breakdown"], rep["cannot"]
    assert any(h["path"] == HOLDER for h in rep["snapshot"]["holders"])


def test_report_keeps_its_looks_for_later(spawn, tmp_path: Path) -> None:
    interp = next((i for i in INTERPS if i.id == "debian-3.11"), INTERPS[0])
    # GIVEN the seeds' leak, and a live report over 5 s that keeps its looks, the leak growing by
    # 1,500 records between them
    v = spawn(interp, "seeds_leak.py")
    v.ask("leak 3000")
    keep = tmp_path / "looks"
    cli = subprocess.Popen(
        [sys.executable, "-m", "introspect", "report", str(v.pid), "--duration", "5", "--interval",
         "0.5", "--looks", "2", "--backrefs", "1", "--keep-dir", str(keep), "--json",
         "-o", str(tmp_path / "live")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(2.5)
    v.ask("leak 1500")
    out, err = cli.communicate(timeout=180)
    assert cli.returncode == 0, err
    live = json.loads(out)
    looks = [str(keep / "look-1.pydump"), str(keep / "look-2.pydump")]
    # THEN both looks are on disk, private, and the report says how to read them again
    assert live["files"]["kept"] == looks, live["files"]
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in looks)
    assert os.stat(keep).st_mode & 0o077 == 0
    # AND a second report into the same place is refused before it touches the process
    again = introspect("report", str(v.pid), "--duration", "1", "--keep-dir", str(keep),
                       "-o", str(tmp_path / "no"))
    assert again.rc != 0 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert not (tmp_path / "no").exists()
    # AND read anywhere, once the process is gone, they name the suspect and its growth
    v.proc.kill()
    v.proc.wait(10)
    rep = _ok("report", *looks, "-o", str(tmp_path / "again"))
    top = rep["snapshot"]["suspects"][0]
    assert top["path"] == HOLDER and top["growth"]["items"] == 1500, top
    assert live["snapshot"]["suspects"][0]["path"] == HOLDER
    # AND each kept look carries its memory breakdown: `memory` answers on it as the live look did
    for k, path in enumerate(looks):
        mem = _ok("memory", path, "-o", str(tmp_path / f"mem-{k}"))
        look = live["breakdown"]["looks"][k]["memory"]
        assert mem["file"] == path and mem["collector"]["path"] == "dump"
        assert mem["memory"]["python_objects"] == look["python_objects"] > 3000 * 1024, (mem, look)
        assert mem["memory"]["rss"] == look["rss"] and mem["memory"]["uss"] == look["uss"]
        assert mem["memory"]["verdict"] == look["verdict"], (mem["memory"], look)
