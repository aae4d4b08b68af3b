"""The dominators of what the peeling leaves (introspect/snapshot/graph.py): computed in plain
Python up to SMALL_DOMINATORS vertices (no igraph import), by igraph above. Both must agree on
every graph: random ones of every shape (cycles, self-loops, repeated edges, unreachable parts,
several roots or none), and a real heap's analysis."""

from __future__ import annotations

import numpy as np
import pytest

from introspect.snapshot import graph


def _igraph(k: int, edges: np.ndarray, roots: np.ndarray) -> np.ndarray:
    g = graph.igraph_module().Graph(n=k + 1, directed=True)
    g.add_edges(edges)
    g.add_edges(np.column_stack([np.full(roots.shape[0], k, np.int32), roots]))
    dom = np.asarray(g.dominator(k, mode="out"), dtype=np.float64)
    return np.nan_to_num(dom, nan=-1)[:k].astype(np.int64)


@pytest.mark.parametrize("seed", range(4))
def test_small_dominators_agree_with_igraph(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(300):
        k = int(rng.integers(1, 80))
        m = int(rng.integers(0, 4 * k + 1))
        edges = rng.integers(0, k, size=(m, 2)).astype(np.int32)
        roots = np.unique(rng.integers(0, k, size=int(rng.integers(0, 5)))).astype(np.int32)
        mine = graph.small_dominators(k, edges, roots)
        assert mine.shape[0] == k + 1 and mine[k] == k
        assert np.array_equal(mine[:k], _igraph(k, edges, roots)), (k, edges.tolist(), roots)


def test_a_long_chain_and_a_wide_fan() -> None:
    # a chain of 20,000 (deeper than any recursion limit) and 20,000 leaves of one hub
    k = 40_001
    chain = np.column_stack([np.arange(19_999), np.arange(1, 20_000)])
    fan = np.column_stack([np.full(20_001, 20_000), np.arange(20_000, 40_001)])
    edges = np.concatenate([chain, fan, [[19_999, 20_000]]]).astype(np.int32)
    roots = np.array([0], np.int32)
    assert np.array_equal(graph.small_dominators(k, edges, roots)[:k], _igraph(k, edges, roots))


def test_dominators_take_the_small_path_without_igraph_and_give_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(7)
    n = 3000
    nrefs = rng.integers(0, 4, size=n)
    offsets = np.concatenate([[0], np.cumsum(nrefs)]).astype(np.int32)
    refs = rng.integers(0, n, size=int(offsets[-1])).astype(np.int32)
    left = rng.random(n) < 0.7
    roots = np.flatnonzero(left)[:20].astype(np.int32)
    small = np.full(n, -1, np.int32)
    graph.dominators(offsets, refs, n, left, roots, small)
    monkeypatch.setattr(graph, "SMALL_DOMINATORS", 0)
    big = np.full(n, -1, np.int32)
    graph.dominators(offsets, refs, n, left, roots, big)
    assert np.array_equal(small, big) and (small >= 0).sum() > 100
