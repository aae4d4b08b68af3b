"""The compiled walk step (introspect/agent/_cwalk.c) against the Python one, on every
interpreter kind: two forked copies of one heap (tests/victims/walk_twins.py), each walked by one
step, must stream the same objects (address, type, size, gc flag) with the same references, and
a look through the CLI must say which step walked."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from introspect.agent import AGENT_PATH, compiled_walker
from introspect.snapshot.collect import Walker
from introspect.snapshot.records import Reader, read_snapshot
from tests.conftest import REPO, Interp, interp_params

TWINS = REPO / "tests" / "victims" / "walk_twins.py"


def _objects(raw: bytes) -> tuple[dict[int, tuple[str, int, int, tuple[int, ...]]], dict[str, Any]]:
    """address -> (type, size, tracked, referents' addresses) from a stream's frames, read
    straight from its bytes (records.py's format 3), and the end frame."""
    types: dict[int, str] = {}
    out: dict[int, tuple[str, int, int, tuple[int, ...]]] = {}
    end: dict[str, Any] = {}
    i = 0
    while i < len(raw):
        kind, size = raw[i:i + 1], int.from_bytes(raw[i + 1:i + 5], "little")
        body = raw[i + 5:i + 5 + size]
        i += 5 + size
        if kind == b"T":
            types.update({int(k): str(v) for k, v in json.loads(body)})
        elif kind == b"E":
            end = json.loads(body)
        elif kind == b"O":
            _, count, items, _ = np.frombuffer(body[:32], "<u8")
            at, cols = 32, []
            for dtype, n in (("<i8", count), ("<i4", count), ("<u4", count), ("<u8", items),
                             ("u1", count), ("<u8", count)):
                width = np.dtype(dtype).itemsize * int(n)
                cols.append(np.frombuffer(body[at:at + width], dtype))
                at += width
            sizes, tix, nref, refs, flags, addrs = cols
            ends = np.cumsum(nref)
            for j in range(int(count)):
                mine = refs[int(ends[j] - nref[j]):int(ends[j])]
                out[int(addrs[j])] = (types[int(tix[j])], int(sizes[j]), int(flags[j]),
                                      tuple(sorted(int(a) for a in mine)))
    return out, end


def _twins(interp: Interp, so: bytes, freeze: bool, tmp_path: Path) -> list[Any]:
    """The two walks of walk_twins.py: [(objects, end frame)] of the copy given ``so`` as its
    compiled step, then of the copy without one."""
    (tmp_path / "cwalk.so").write_bytes(so)
    fifos = [str(tmp_path / n) for n in ("s1", "c1", "s2", "c2")]
    for p in fifos:
        os.mkfifo(p, 0o600)
    fds = [os.open(fifos[0], os.O_RDONLY | os.O_NONBLOCK),
           os.open(fifos[2], os.O_RDONLY | os.O_NONBLOCK)]
    proc = subprocess.Popen([interp.path, str(TWINS), str(AGENT_PATH), str(tmp_path / "cwalk.so"),
                             "1" if freeze else "0", *fifos], stdout=subprocess.PIPE, text=True)
    walks: list[Any] = []
    try:
        for k, fd in enumerate(fds):
            reader = Reader(fd, time.monotonic() + 60)
            raw: list[bytes] = []
            metas: list[dict[str, Any]] = []
            snap = read_snapshot(reader, tee=raw, on_meta=metas.append)
            walker = Walker(reader, fifos[1 + 2 * k], int(metas[0]["pid"]),
                            int(metas[0]["start_ticks"]), reader.deadline)
            walker.close()
            walker.kill()
            walks.append(_objects(b"".join(raw)))  # the tee: each frame whole, as it came
            assert snap.n == walks[-1][1]["objects"]
    finally:
        proc.wait(60)
        for fd in fds:
            os.close(fd)
    return walks


def _same_heap(comp: dict[int, Any], py: dict[int, Any]) -> None:
    # The two copies differ in what the script and the fork made after its second fork: b (a
    # pid, an int only the first copy has, in __main__'s dict), the snapshot's parameters (a
    # small dict at one address in both, with other keys and values), threading's after-fork
    # state (the main thread's ident and locks), 3.8's code objects' inline caches. Nothing
    # else: of 100,000 objects and more, the same at the same addresses, each with the same
    # type, size, gc flag and references.
    only_c = [comp[a] for a in comp.keys() - py.keys()]
    only_p = [py[a] for a in py.keys() - comp.keys()]
    differ = [(comp[a], py[a]) for a in comp.keys() & py.keys() if comp[a] != py[a]]
    assert len(comp) > 100000
    assert len(only_c) + len(only_p) + len(differ) <= 12, (only_c, only_p, differ)
    kinds = Counter(t for t, *_ in comp.values())
    assert kinds["code"] >= 100 and kinds["tuple"] >= 20000 and kinds["dict"] >= 20000, kinds


@pytest.mark.parametrize("freeze", [False, True], ids=["plain", "frozen"])
@pytest.mark.parametrize("interp", interp_params())
def test_compiled_and_python_steps_stream_the_same_heap(interp: Interp, freeze: bool,
                                                        tmp_path: Path) -> None:
    so, why = compiled_walker()
    assert so is not None, f"the compiled walk step is not built ({why}): run scripts/setup"
    (comp, cend), (py, pend) = _twins(interp, so, freeze, tmp_path)
    assert cend["walker"] == "compiled", cend
    assert pend["walker"].startswith("python ("), pend
    _same_heap(comp, py)


@pytest.mark.parametrize("interp", [i for i in interp_params() if i.id in ("pyenv-3.8",
                                                                            "sid-3.15")])
def test_a_build_that_does_not_load_leaves_the_python_step(interp: Interp,
                                                          tmp_path: Path) -> None:
    """A corrupt build (here: not an ELF file) is refused by the loader; that copy walks with
    the Python step and says why, and its records equal the other copy's."""
    (comp, cend), (py, pend) = _twins(interp, os.urandom(4096), False, tmp_path)
    assert cend["walker"].startswith("python (the compiled walk step did not load: "), cend
    _same_heap(comp, py)


@pytest.mark.parametrize("interp", interp_params())
def test_compiled_answers_equal_the_python_ones(interp: Interp, tmp_path: Path) -> None:
    """A dump's counts and labels (the walker's "I" and "L" answers) from the compiled step equal
    the Python step's, for every kind of holder (tests/victims/answer_twins.py); a position out
    of the walk's range is refused, as keep[p] refuses it."""
    so, why = compiled_walker()
    assert so is not None, f"the compiled walk step is not built ({why}): run scripts/setup"
    (tmp_path / "cwalk.so").write_bytes(so)
    out = subprocess.run(
        [interp.path, str(REPO / "tests" / "victims" / "answer_twins.py"), str(AGENT_PATH),
         str(tmp_path / "cwalk.so")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["pairs"] > 300000 and got["counts"] > 200000, got
    assert dict(got["kinds"]).keys() >= {"dict", "MyDict", "OrderedDict", "Plain", "Slotted",
                                         "list", "tuple", "set", "frozenset"}, got["kinds"]
    assert got["labels_differ"] == [] and got["counts_differ"] == [], got
    assert got["errors"] == [], got
