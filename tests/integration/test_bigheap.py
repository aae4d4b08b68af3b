"""A look at a heap of a few million objects with default settings (issue 23): `top --by retained`
finishes whole (not partial, no --timeout given) and names the holder of the bulk.

Kinds: pyenv-3.12 (the walker's batched loops on a build with debug info, the 3.12+ immortal
objects) and debian-3.11 (stripped, the distribution's interpreter most workers run). Each kind
costs about 20-40 s on the shared 2-core host; the other kinds run the same walker code on the
small heaps of test_snapshot.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import INTERPS, Interp, introspect

KINDS = [i for i in INTERPS if i.id in ("pyenv-3.12", "debian-3.11")]


@pytest.mark.parametrize("interp", KINDS, ids=[i.id for i in KINDS])
def test_look_at_three_million_objects_with_defaults(spawn, interp: Interp, tmp_path: Path) -> None:
    # GIVEN about 3M objects: 1M lists each holding a dict of an int, held by one module global
    v = spawn(interp, "seeds_leak.py")
    assert v.ask("ballast 2000000", timeout=120)["ballast"] == 1_000_000
    # WHEN top --by retained looks with default settings
    run = introspect(
        "top", str(v.pid), "--by", "retained", "--json", "-o", str(tmp_path / "t"), timeout=300
    )
    # THEN it finishes whole, every object walked, and names the holder of the bulk first
    assert run.rc == 0, run.stderr
    doc = run.json()
    col = doc["collector"]
    assert col["path"] == "fork" and not col.get("partial"), col
    assert col["objects"] >= 3_000_000, col
    top = doc["holders"][0]
    assert top["path"] == "module __main__ .ballast" and top["items"] == 1_000_000, top
    assert top["retained_bytes"] >= 1_000_000 * (56 + 64), (
        top
    )  # each item: a list and a dict at least
    assert v.ask("count")["count"] == 0  # the target goes on
