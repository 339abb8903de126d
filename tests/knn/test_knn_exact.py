"""Exact (flat) k-NN path: equals numpy brute force; thresholds, canonical edges, float16, batching."""
from __future__ import annotations

import numpy as np
import pytest

from curation.config import KnnConfig
from curation.dedup.knn import build_index, canonical_edges, choose_index, cross_edges, knn_edges, search

FLAT = KnnConfig()  # exact_below=200_000: every test set here is searched exactly


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(base, queries, k):
    sims = _unit(queries) @ _unit(base).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def _brute_edges(x, k, threshold):
    """Reference self k-NN graph in plain numpy: k best others per row, above threshold, canonical."""
    sims = _unit(x) @ _unit(x).T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sims, idx, axis=1)
    rows = np.repeat(np.arange(len(x)), k).reshape(idx.shape)
    keep = s > threshold
    pairs = {}
    for a, b, v in zip(rows[keep], idx[keep], s[keep]):
        key = (min(a, b), max(a, b))
        pairs[key] = max(pairs.get(key, -np.inf), v)
    return pairs


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3000, 48)).astype(np.float32) * rng.uniform(0.5, 3, (3000, 1)).astype(np.float32)


def test_search_equals_numpy_brute_force(data):
    queries = np.random.default_rng(1).standard_normal((200, 48)).astype(np.float32)
    index = build_index(data, FLAT)
    assert choose_index(len(data), 48, FLAT).kind == "flat"
    sims, idx = search(index, queries, 10, batch_size=64)
    ref_sims, ref_idx = _brute(data, queries, 10)
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and sims.shape == (200, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=2e-6)


def test_knn_edges_equal_numpy_graph(data):
    src, dst, sim, info = knn_edges(data, k=8, threshold=0.25, cfg=FLAT)
    ref = _brute_edges(data, 8, 0.25)
    assert len(ref) > 500  # the threshold keeps a real part of the graph, not all or nothing
    got = {(a, b): v for a, b, v in zip(src.tolist(), dst.tolist(), sim.tolist())}
    assert got.keys() == ref.keys()
    np.testing.assert_allclose([got[key] for key in ref], list(ref.values()), atol=2e-6)
    assert info["recall_at_k"] == 1.0 and info["index"]["kind"] == "flat" and info["edges"] == len(ref)


def test_edges_are_canonical_and_above_threshold(data):
    src, dst, sim, _ = knn_edges(data, k=16, threshold=0.3, cfg=FLAT)
    assert (src < dst).all() and (sim > 0.3).all()
    assert src.dtype == np.int64 and dst.dtype == np.int64 and sim.dtype == np.float32
    keys = src * len(data) + dst
    assert (np.diff(keys) > 0).all()  # sorted by (src, dst), no duplicate pair


def test_threshold_below_all_keeps_every_neighbour(data):
    src, dst, _, _ = knn_edges(data, k=5, threshold=-2.0, cfg=FLAT)
    ref = _brute_edges(data, 5, -2.0)
    # n*k directed candidates, a mutual pair counted once
    assert len(src) == len(ref) < len(data) * 5
    degree = np.bincount(np.concatenate([src, dst]), minlength=len(data))
    assert (degree >= 5).all()


def test_duplicate_vectors_give_an_edge_not_a_self_loop(data):
    x = data[:500].copy()
    x[9] = x[5]
    x[7] = 2.5 * x[3]  # same direction: cosine 1
    src, dst, sim, _ = knn_edges(x, k=4, threshold=0.99, cfg=FLAT)
    assert sorted(zip(src.tolist(), dst.tolist())) == [(3, 7), (5, 9)]
    np.testing.assert_allclose(sim, 1.0, atol=1e-6)


def test_float16_input_matches_its_float32_copy(data):
    x16 = data.astype(np.float16)
    a = knn_edges(x16, k=8, threshold=0.25, cfg=FLAT)
    b = knn_edges(x16.astype(np.float32), k=8, threshold=0.25, cfg=FLAT)
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)
    # and float16 rounding moves similarities by well under 1e-2 against float32 input
    ref = _brute_edges(data, 8, 0.25)
    common = [(s, d, v) for s, d, v in zip(*[t.tolist() for t in a[:3]]) if (s, d) in ref]
    assert len(common) > 0.95 * len(ref)
    assert max(abs(v - ref[(s, d)]) for s, d, v in common) < 1e-2


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_batch_size_does_not_change_results(data, batch_size):
    ref = knn_edges(data, k=8, threshold=0.25, cfg=FLAT)
    got = knn_edges(data, k=8, threshold=0.25, cfg=KnnConfig(batch_size=batch_size))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    # FAISS scores batches under 20 queries with SIMD loops, larger ones with BLAS (rounding by
    # shape): the found pairs are re-scored one by one, so the bytes are the same
    np.testing.assert_array_equal(got[2], ref[2])


def test_sharded_base_gives_the_same_bytes(data):
    """Ray and Beam split the base into shards (one index each) and merge: FAISS's own scores
    round differently by shard, the per-pair scores do not."""
    from curation.dedup.knn_index import merge_results, search_shard

    whole = search(build_index(data, FLAT), data, 9, batch_size=4096)
    for cuts in ([0, 1000, 3000], [0, 1337, 2048, 3000]):  # (FAISS's scores differ in ~1000 rows here)
        parts = [search_shard(build_index(data[lo:hi], FLAT), data, 9, 1000, lo) for lo, hi in zip(cuts[:-1], cuts[1:])]
        sims, ids = merge_results(parts, 9)
        np.testing.assert_array_equal(ids, whole[1])
        np.testing.assert_array_equal(sims, whole[0])


def test_cross_edges_equal_brute_force(data):
    base = data[:2000]
    queries = data[2000:2300] + 0.3 * np.random.default_rng(2).standard_normal((300, 48)).astype(np.float32)
    q, b, s, info = cross_edges(base, queries, k=6, threshold=0.2, cfg=FLAT)
    ref_s, ref_i = _brute(base, queries, 6)
    keep = ref_s > 0.2
    np.testing.assert_array_equal(q, np.repeat(np.arange(300), 6).reshape(300, 6)[keep])
    np.testing.assert_array_equal(b, ref_i[keep])
    np.testing.assert_allclose(s, ref_s[keep], atol=2e-6)
    assert info["n_query"] == 300 and info["edges"] == int(keep.sum()) > 0


def test_cross_edges_dimension_mismatch_and_empty_queries(data):
    with pytest.raises(ValueError):
        cross_edges(data, data[:, :10], k=4, threshold=0.0, cfg=FLAT)
    q, b, s, info = cross_edges(data, data[:0], k=4, threshold=0.0, cfg=FLAT)
    assert q.size == b.size == s.size == 0 and info["edges"] == 0


def test_canonical_edges_keeps_max_similarity():
    src = np.array([3, 1, 1, 2, 4, 0])
    dst = np.array([1, 3, 3, 2, 0, 4])
    sim = np.array([0.5, 0.9, 0.7, 1.0, 0.2, 0.3], dtype=np.float32)
    a, b, s = canonical_edges(src, dst, sim)
    assert a.tolist() == [0, 1] and b.tolist() == [4, 3]
    np.testing.assert_allclose(s, [0.3, 0.9])


def test_small_sets_fewer_than_k():
    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    src, dst, sim, _ = knn_edges(x, k=64, threshold=-2.0, cfg=FLAT)
    assert len(src) == 10  # complete graph on 5 nodes
    src, dst, sim, _ = knn_edges(x[:1], k=64, threshold=-2.0, cfg=FLAT)
    assert len(src) == 0
