"""connected_components / union_find_components on graphs whose components are known by hand."""
from __future__ import annotations

import numpy as np
import pytest

from curation.dedup.graph import connected_components, pair_keys, pairs_in, union_find_components

def _scipy(n, src, dst):
    return connected_components(n, src, dst, method="scipy")


SOLVERS = [connected_components, union_find_components, _scipy]


def _e(pairs):
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


@pytest.mark.parametrize("solve", SOLVERS)
def test_chain_star_disjoint_isolated(solve):
    # chain 5-3-7-1, star centred at 8 with leaves 2, 9, isolated 0, 4, 6, 10; pair 11-12
    src, dst = _e([(5, 3), (3, 7), (7, 1), (8, 2), (9, 8), (12, 11)])
    labels = solve(13, src, dst)
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 1, 2, 1, 4, 1, 6, 1, 2, 2, 10, 11, 11]


@pytest.mark.parametrize("solve", SOLVERS)
def test_self_loops_and_duplicates_do_not_merge(solve):
    src, dst = _e([(2, 2), (3, 4), (4, 3), (3, 4), (0, 0)])
    assert solve(5, src, dst).tolist() == [0, 1, 2, 3, 3]


@pytest.mark.parametrize("solve", SOLVERS)
def test_no_edges_and_empty(solve):
    empty = np.empty(0, dtype=np.int64)
    assert solve(4, empty, empty).tolist() == [0, 1, 2, 3]
    assert solve(0, empty, empty).tolist() == []


@pytest.mark.parametrize("solve", SOLVERS)
def test_long_reversed_chain_labels_zero(solve):
    n = 20_000
    src = np.arange(n - 1, 0, -1)
    labels = solve(n, src, src - 1)
    assert (labels == 0).all()


@pytest.mark.parametrize("solve", SOLVERS)
def test_rejects_out_of_range_and_negative(solve):
    with pytest.raises(ValueError):
        solve(3, np.array([0]), np.array([3]))
    with pytest.raises(ValueError):
        solve(3, np.array([-1]), np.array([1]))
    with pytest.raises(ValueError):
        solve(3, np.array([0, 1]), np.array([1]))
    with pytest.raises(ValueError):
        connected_components(3, np.array([0]), np.array([1]), method="networkx")


def test_union_find_matches_scipy_on_random_graphs():
    """Sparse to dense random graphs: many small components, then one giant one."""
    rng = np.random.default_rng(0)
    for n, m in [(1000, 300), (1000, 1000), (5000, 20_000), (50_000, 40_000)]:
        src = rng.integers(0, n, m)
        dst = rng.integers(0, n, m)
        expected = _scipy(n, src, dst)
        np.testing.assert_array_equal(union_find_components(n, src, dst), expected)
        # canonical: every label is the smallest member of its component
        for lab in np.unique(expected)[:50]:
            assert np.flatnonzero(expected == lab)[0] == lab


def test_union_find_with_high_degree_roots():
    """Many edges hook the same root in one round: only one scatter wins, the rest must survive."""
    hub_edges = np.arange(1, 5000)
    src = np.concatenate([hub_edges, np.full(3000, 7000)])
    dst = np.concatenate([np.full(4999, 6000), np.arange(3000, 6000)])
    labels = union_find_components(8000, src, dst)
    np.testing.assert_array_equal(labels, _scipy(8000, src, dst))
    # {1..6000, 7000} is one component (hub 6000, hub 7000 reaching 3000..5999); the rest alone
    assert (labels[1:6001] == 1).all() and labels[7000] == 1
    assert labels[0] == 0 and labels[6500] == 6500 and labels[7999] == 7999


def test_canonical_relabelling_handles_any_label_order():
    from curation.dedup.graph import _canonical

    # scipy's order (labels rising with the smallest node) takes the O(n) scan ...
    assert _canonical(np.array([0, 1, 0, 2, 1])).tolist() == [0, 1, 0, 3, 1]
    # ... any other order falls back to first occurrences
    assert _canonical(np.array([2, 0, 2, 1, 0])).tolist() == [0, 1, 0, 3, 1]


def test_pairs_in_ignores_the_direction_of_an_edge():
    edges = (np.array([0, 3, 5, 2]), np.array([1, 2, 6, 2]))
    other = (np.array([1, 2, 7]), np.array([0, 3, 5]))
    assert pairs_in(edges, other).tolist() == [True, True, False, False]
    assert pairs_in(edges, (np.zeros(0, int), np.zeros(0, int))).tolist() == [False] * 4
    assert pair_keys(np.array([3]), np.array([2]))[0] == pair_keys(np.array([2]), np.array([3]))[0] == (2 << 32) | 3
    with pytest.raises(ValueError, match="2\\*\\*31"):
        pair_keys(np.array([2**31]), np.array([0]))
