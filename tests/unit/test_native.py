"""The CLI's compiled loops (introspect/snapshot/_graphc.c) give exactly what their numpy
versions give: BFS (order, layers, parents or reached, continued searches, int32 and int64
offsets) and the references' addresses to positions (unknown addresses, duplicates)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from introspect.snapshot import columns, graph, native


@pytest.fixture
def numpy_only() -> Iterator[Any]:
    """A context in which graph.py and columns.py run their numpy versions."""
    assert native.lib() is not None, "introspect/snapshot/_graphc.c is not built: run scripts/setup"

    class Off:
        def __enter__(self) -> None:
            self.saved = native._LIB
            native._LIB = None

        def __exit__(self, *exc: object) -> None:
            native._LIB = self.saved

    yield Off


def _graph(rng: np.random.Generator, n: int, m: int, wide: bool) -> tuple[np.ndarray, np.ndarray]:
    """A random CSR graph: some objects with many references (a big list), some chains."""
    counts = rng.poisson(m / n, n)
    if wide:
        counts[rng.integers(0, n, 3)] += n // 2
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    refs = rng.integers(0, n, int(offsets[-1])).astype(np.int32)
    refs[: n // 3] = np.arange(1, n // 3 + 1) % n  # a long chain: deep layers
    return offsets, refs


@pytest.mark.parametrize("seed", range(6))
def test_bfs_equals_numpy(seed: int, numpy_only: Any) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40000))
    offsets, refs = _graph(rng, n, int(rng.integers(0, 4 * n)), seed % 2 == 0)
    if seed % 3 == 0:
        offsets = offsets.astype(np.int32)
    sources = rng.integers(0, n, int(rng.integers(1, 50))).astype(np.int32)
    for order in (True, False):
        for parents in (True, False):
            got = graph.bfs(offsets, refs, n, sources, order=order, parents=parents)
            with numpy_only():
                want = graph.bfs(offsets, refs, n, sources, order=order, parents=parents)
            assert np.array_equal(got[0], want[0]) and got[1] == want[1]
            assert np.array_equal(got[2], want[2]) and got[2].dtype == want[2].dtype
    # a search continued from an earlier one's parents (heap.py's long-lived roots first)
    first = graph.bfs(offsets, refs, n, sources[:1], order=False)[2]
    with numpy_only():
        first_np = graph.bfs(offsets, refs, n, sources[:1], order=False)[2]
    got = graph.bfs(offsets, refs, n, sources, order=False, seen=first)[2]
    with numpy_only():
        want = graph.bfs(offsets, refs, n, sources, order=False, seen=first_np)[2]
    assert np.array_equal(got, want)


def test_bfs_refuses_what_lies_outside_the_arrays() -> None:
    src = np.array([0], np.int32)
    for offsets, refs in (([0, 1, 1], [5]), ([0, 3, 3], [1]), ([0, 1, 0], [1])):
        with pytest.raises(ValueError):
            native.bfs(np.array(offsets, np.int32), np.array(refs, np.int32), 2, src, True, True,
                       None)


@pytest.mark.parametrize("seed", range(4))
def test_resolve_equals_numpy(seed: int, numpy_only: Any) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 50000))
    addr = (rng.choice(1 << 30, n, replace=False).astype(np.uint64) << np.uint64(4)) + np.uint64(
        0x7F0000000000
    )
    if seed % 2:  # objects met twice: the first streamed keeps the references
        dup = rng.integers(0, n, 20)
        addr[dup] = addr[rng.integers(0, n, 20)]
    m = int(rng.integers(0, 3 * n))
    refaddr = addr[rng.integers(0, n, m)].copy()
    refaddr[rng.integers(0, max(m, 1), m // 50)] = np.uint64(0x10)  # no object's address
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.sort(rng.integers(0, m + 1, n))
    offsets[-1] = m
    got = columns.resolve(addr.copy(), refaddr.copy(), offsets.copy())
    with numpy_only():
        want = columns.resolve(addr.copy(), refaddr.copy(), offsets.copy())
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert got[2:] == want[2:]
