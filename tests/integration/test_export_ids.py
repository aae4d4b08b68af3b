"""Node ids of exports across dumps of one process: `export NEW --since OLD` gives the objects new
since OLD ids above OLD's export's highest, so Chrome DevTools' Summary filter "Objects allocated
between OLD and NEW" selects exactly them. Checked with a real reader of the format
(v8-heapsnapshot, installed by scripts/setup) and the filter's rule as devtools-frontend applies
it (tests/consumers/heapsnapshot_between.js): maxJSObjectId is a snapshot's highest odd id, and
the filter keeps the viewed snapshot's nodes with previous max < id <= this max."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import INTERPS, REPO, Interp, introspect

NODE_DEPS = REPO / ".node-deps" / "node_modules"
CONSUMER = REPO / "tests" / "consumers" / "heapsnapshot_between.js"
KINDS = [i for i in INTERPS if i.id in ("debian-3.11", "sid-3.14")] or INTERPS[:2]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DEPS / "v8-heapsnapshot").is_dir(),
    reason="node or the v8-heapsnapshot reader is not installed (scripts/setup installs both)",
)


def _ok(*args: str) -> Any:
    run = introspect(*args, "--json", timeout=180)
    assert run.rc == 0, run.stderr
    assert "Traceback" not in run.stderr
    return run.json()


def _between(*files: Path) -> list[dict[str, Any]]:
    run = subprocess.run(
        ["node", str(CONSUMER), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NODE_PATH": str(NODE_DEPS)},
    )
    assert run.returncode == 0, run.stderr
    seen: list[dict[str, Any]] = json.loads(run.stdout)
    return seen


@pytest.mark.parametrize("interp", [pytest.param(i, id=i.id) for i in KINDS])
def test_allocated_between_selects_exactly_the_new_objects(
    spawn, interp: Interp, tmp_path: Path
) -> None:
    # GIVEN three dumps of the seeds' leak: 300 records, then 200 more, then 100 more (each record
    # a dict holding 1 KiB of bytes, in the module's list global_data_store); the process gone
    v = spawn(interp, "seeds_leak.py")
    d = [tmp_path / f"d{k}.pydump" for k in (1, 2, 3)]
    for leak, dump in zip((300, 200, 100), d):
        v.ask(f"leak {leak}")
        _ok("dump", str(v.pid), "-o", str(dump))
    v.proc.kill()
    v.proc.wait(10)
    # WHEN the first is exported plainly and each later one --since all the earlier ones
    e = [tmp_path / f"e{k}.heapsnapshot" for k in (1, 2, 3)]
    got = [_ok("export", str(d[0]), "-o", str(e[0]))]
    got.append(_ok("export", str(d[1]), "--since", str(d[0]), "-o", str(e[1])))
    got.append(
        _ok("export", str(d[2]), "--since", str(d[0]), "--since", str(d[1]), "-o", str(e[2]))
    )
    assert "ids" not in got[0] and [g["since"] for g in got] == [
        [],
        [str(d[0])],
        [str(d[0]), str(d[1])],
    ]
    # THEN the real reader loads the three, every node with its own id, and the filter
    # "Objects allocated between" (DevTools' rule, each snapshot after the one loaded before it)
    seen = _between(*e)
    for s, g in zip(seen, got):
        assert s["nodes"] == g["nodes"] and s["distinct_ids"] == s["nodes"], s
        assert s["max"] == g["max_id"], (s["max"], g["max_id"])
    assert seen[0]["selected"] == seen[0]["nodes"]  # "allocated before e1": all of it
    for k, new_records in ((1, 200), (2, 100)):
        s, g = seen[k], got[k]
        # ... selects exactly the nodes whose id the earlier export lacks (Comparison's "new"),
        # as many as the command said were new, in the id range it gave
        assert s["mismatch"] == 0 and s["selected"] == s["absent_before"] == g["ids"]["new"], s
        assert s["min"] == seen[k - 1]["max"] and g["ids"]["new_from"] == s["min"] + 2
        assert g["ids"]["new_to"] == s["max"], (g["ids"], s["max"])
        # ... among them the leak's growth: the new records' bytes on the retainer path, and
        # their dicts and ids (ints over 256); the earlier records' bytes are all outside it
        earlier = sum((300, 200, 100)[:k])
        assert s["leak"]["inside"] == new_records and s["leak"]["outside"] == earlier, s["leak"]
        assert s["by_name"].get("dict", 0) >= new_records, s["by_name"]
        assert s["by_name"].get("int", 0) >= new_records, s["by_name"]
        # ... and little else: what changed its first path counts as new too (churn)
        assert s["selected"] < 3 * new_records + 600, s["by_name"]
        # AND what both dumps hold keeps its id and its type, the earlier records' bytes too
        assert s["renamed"] == 0 and s["carried"] == g["ids"]["kept"] + 2, s
        assert set(seen[k - 1]["leak"]["ids"]) <= set(s["leak"]["ids"])


@pytest.mark.parametrize("interp", [pytest.param(KINDS[0], id=KINDS[0].id)])
def test_plain_exports_select_nothing_and_bad_since_is_refused(
    spawn, interp: Interp, tmp_path: Path
) -> None:
    # GIVEN two dumps of the seeds' leak, 200 records apart
    v = spawn(interp, "seeds_leak.py")
    old, new = tmp_path / "old.pydump", tmp_path / "new.pydump"
    v.ask("leak 300")
    _ok("dump", str(v.pid), "-o", str(old))
    v.ask("leak 200")
    _ok("dump", str(v.pid), "-o", str(new))
    v.proc.kill()
    v.proc.wait(10)
    # WHEN both are exported plainly (path ids: hashes spread over 31 bits)
    _ok("export", str(old))
    _ok("export", str(new))
    # THEN DevTools' filter between them misses the new records (why --since exists), while
    # Comparison's "new" (ids the earlier lacks) holds them
    s = _between(tmp_path / "old.heapsnapshot", tmp_path / "new.heapsnapshot")[1]
    assert s["leak"]["inside"] < 200 and s["absent_before"] >= 600, s["leak"]
    # AND --since refuses a later dump, the file itself, or a file that is not a dump, plainly
    bad = tmp_path / "bad.pydump"
    bad.write_bytes(b"not a dump")
    for since, file, words in (
        (new, old, "dumped after"),
        (new, new, "names the exported file itself"),
        (bad, new, "not an introspect dump"),
    ):
        out = tmp_path / f"x-{since.stem}-{file.stem}.heapsnapshot"
        run = introspect("export", str(file), "--since", str(since), "-o", str(out))
        assert run.rc in (2, 14) and words in " ".join(run.stderr.split()), run.stderr
        assert "Traceback" not in run.stderr and not out.exists()
