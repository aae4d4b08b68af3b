"""Leak suspects on real interpreters: five common leak shapes grown in one real program, each
named by its path with its accumulation point and what accumulates; no suspect before anything
leaks; and no user __repr__ ever called while finding them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Interp, interp_params, introspect


@pytest.mark.parametrize("interp", interp_params())
def test_suspects_name_each_leak_and_what_accumulates(spawn: Any, interp: Interp, tmp_path: Path) -> None:
    repr_log = tmp_path / "repr.log"
    victim = spawn(interp, "leak_shapes.py", env={"REPR_LOG": str(repr_log)})
    # GIVEN a program that has not leaked yet THEN no suspect, by size or by growth
    top = introspect("top", str(victim.pid), "--by", "retained", "--json", "-o", str(tmp_path / "t"))
    assert top.rc == 0, top.stderr
    assert top.json()["suspects"] == [], top.json()["suspects"]
    base = introspect("growth", str(victim.pid), "--json", "-o", str(tmp_path / "g1"))
    assert base.rc == 0 and base.json()["suspects"] == [], base.stderr

    # WHEN it keeps 3,000 of each shape
    assert victim.ask("grow 3000")["n"] == 3000
    run = introspect("growth", str(victim.pid), "--json", "-o", str(tmp_path / "g2"))
    assert run.rc == 0, run.stderr
    found = {s["path"]: s for s in run.json()["suspects"]}
    print({p: (s["items"], s["retained_bytes"], s["accumulation_point"]["shape"]["text"][:80]) for p, s in found.items()})

    # THEN each is a suspect, by its own path, with its items counted and its growth stated
    def one(pred: Any) -> dict[str, Any]:
        hits = [s for p, s in found.items() if pred(p)]
        assert len(hits) == 1, sorted(found)
        return hits[0]

    seeds = one(lambda p: p == "module __main__ .global_data_store")
    assert seeds["type"] == "list" and seeds["items"] == 3000 and seeds["growth"]["retained_bytes"] > 3000 * 1024
    assert seeds["accumulation_point"]["shape"]["text"].startswith("list of 3,000 × dict {")
    fields = {f["field"]: f["type"] for f in seeds["accumulation_point"]["shape"]["fields"]}
    assert fields == {"'id'": "int", "'data'": "bytes"}, fields
    registry = one(lambda p: p.startswith("module __main__ .Plugin") and p.endswith(".registry"))
    assert registry["items"] == 3000 and registry["accumulation_point"]["shape"]["item_type"] == "__main__.Plugin"
    assert {f["field"] for f in registry["accumulation_point"]["shape"]["fields"]} >= {".name", ".options"}
    lru = one(lambda p: p.startswith("module __main__ .Service .lookup"))
    assert lru["type"] == "dict" and lru["items"] == 3000
    loggers = one(lambda p: p.startswith("module logging") and "loggerDict" in p)
    assert loggers["items"] >= 3000 and loggers["accumulation_point"]["shape"]["item_type"] == "logging.Logger"
    strings = one(lambda p: p == "module __main__ .name_cache")
    assert strings["accumulation_point"]["shape"]["item_type"] == "str" and strings["items"] == 3000
    # ... and the text leads with them
    text = (tmp_path / "g2" / "growth.txt").read_text()
    assert text.index("leak suspects:") < text.index("holders not listed at the previous look")
    assert "accumulates: list of 3,000 × dict {'id': int, 'data': bytes" in text

    # WHEN asked for values THEN builtin values are shown, a user object only by its type
    assert victim.ask("grow 300")["n"] == 3300
    vals = introspect("growth", str(victim.pid), "--values", "--json", "-o", str(tmp_path / "g3"))
    assert vals.rc == 0, vals.stderr
    shown = {s["path"]: s["accumulation_point"].get("values", "") for s in vals.json()["suspects"]}
    print(shown)
    assert shown["module __main__ .global_data_store"].startswith("[{'id': 0, 'data': b"), shown
    registry_values = [v for p, v in shown.items() if p.endswith(".registry")]
    assert registry_values and "<Plugin>" in registry_values[0] and "Plugin plugin-" not in registry_values[0], shown
    # AND --waste finds the cache's equal strings, 3,000 copies, held by the cache
    waste = introspect("top", str(victim.pid), "--waste", "--values", "--json", "-o", str(tmp_path / "w"))
    assert waste.rc == 0, waste.stderr
    dups = [r for r in waste.json()["waste"]["duplicates"] if r["type"] == "str" and r["length"] == 560]
    assert dups and dups[0]["copies"] == 3300 and dups[0]["wasted_bytes"] >= 3299 * 560, dups
    assert dups[0]["held_by"][0] == "module __main__ .name_cache (dict)", dups[0]
    assert dups[0]["preview"].startswith("'customer-name-customer-name-")

    # AND no user __repr__ ran, in the target or in its frozen copy
    assert victim.ask("repr")["repr_calls"] == 0
    assert not repr_log.exists()
    assert victim.alive() and victim.stderr() == ""
