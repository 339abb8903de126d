"""What the k-NN graphs record beside their edges (`curation.dedup.knn_scores`): the score each edge
was compared with, the near misses under the threshold, the histogram of every scored pair."""
from __future__ import annotations

import numpy as np
import pytest

from curation.config import KnnConfig
from curation.dedup.knn import cross_graph, exact_top_k, knn_graph, scores
from curation.dedup.knn_scores import Histogram, Pairs, canonical

CFG = KnnConfig(background_rank=4, background_weight=0.5, near_band=0.1)
K, T = 8, 0.35


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(120, 32))
    near = base[:60] + rng.uniform(0.2, 1.2, (60, 1)) * rng.normal(size=(60, 32))  # copies, some far
    x = np.concatenate([base, near]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _directed(base: np.ndarray, queries: np.ndarray, self_query: bool, cfg: KnnConfig = CFG) -> dict:
    """(query, base) -> (sim, score) of every top-k pair, scored by `knn.scores` on exact search."""
    own = np.arange(len(queries)) if self_query else None
    sims, ids = exact_top_k(base, queries, K, own)
    score = scores(sims, ids, cfg)
    return {(q, int(b)): (float(s), float(v)) for q in range(len(ids)) for b, s, v in zip(ids[q], sims[q], score[q]) if b >= 0}


def _undirected(pairs: dict) -> dict:
    """{(lo, hi): best score over both ends}."""
    out: dict = {}
    for (a, b), (_, v) in pairs.items():
        key = (min(a, b), max(a, b))
        out[key] = max(out.get(key, -np.inf), v)
    return out


def test_self_graph_scores_are_the_compared_scores(x):
    g = knn_graph(x, K, T, CFG)
    truth = _undirected(_directed(x, x, True))
    got = {(a, b): v for a, b, v in zip(g.edges.src.tolist(), g.edges.dst.tolist(), g.edges.score.tolist())}
    assert got == pytest.approx({p: v for p, v in truth.items() if v > T})
    assert 0 < len(got) < len(truth)
    # The normalised score is what decides, and it is not the stored cosine.
    assert np.all(g.edges.score < g.edges.sim) and np.any(g.edges.sim > T + 0.05)


def test_self_near_misses_are_the_band_under_the_threshold(x):
    g = knn_graph(x, K, T, CFG)
    truth = _undirected(_directed(x, x, True))
    near = {(a, b): v for a, b, v in zip(g.near.src.tolist(), g.near.dst.tolist(), g.near.score.tolist())}
    assert near == pytest.approx({p: v for p, v in truth.items() if T - 0.1 < v <= T})
    assert len(near) > 5
    assert np.all((g.near.score > T - 0.1) & (g.near.score <= T)) and np.all(g.near.src < g.near.dst)
    assert not set(near) & set(zip(g.edges.src.tolist(), g.edges.dst.tolist()))
    order = np.lexsort((g.near.dst, g.near.src, -g.near.score))
    assert np.array_equal(order, np.arange(len(order)))  # best first
    assert g.info["near_misses"] == len(near)


def test_near_misses_are_capped_to_the_best_whatever_the_batching(x):
    full = knn_graph(x, K, T, CFG)
    for batch_size in (7, 64, 16_384):
        capped = knn_graph(x, K, T, CFG.model_copy(update={"near_max": 10, "batch_size": batch_size}))
        assert 0 < len(capped.near) <= 10
        for name in ("src", "dst", "sim", "score"):  # the same choice at every batching
            assert np.array_equal(getattr(capped.near, name), getattr(full.near, name)[:len(capped.near)]), name
        assert capped.histogram == full.histogram
    assert len(knn_graph(x, K, T, CFG.model_copy(update={"near_max": 0})).near) == 0


def test_histogram_counts_every_scored_pair(x):
    g = knn_graph(x, K, T, CFG)
    h = g.histogram
    assert sum(h["counts"]) == len(x) * K  # every query's k scored pairs, not only the edges
    scored = np.array([v for _, v in _directed(x, x, True).values()])
    bins = np.floor(scored.astype(np.float64) / 0.01).astype(np.int64)
    assert h["bin_width"] == 0.01 and h["first_bin"] == bins.min()
    assert h["counts"] == np.bincount(bins - bins.min()).tolist()
    assert h["counts"][0] > 0 and h["counts"][-1] > 0


def test_cross_graph_scores_near_misses_and_histogram(x):
    base, queries = x[:150], x[150:]
    g = cross_graph(base, queries, K, T, CFG)
    truth = _directed(base, queries, False)
    edges = {(a, b): v for a, b, v in zip(g.edges.src.tolist(), g.edges.dst.tolist(), g.edges.score.tolist())}
    near = {(a, b): v for a, b, v in zip(g.near.src.tolist(), g.near.dst.tolist(), g.near.score.tolist())}
    assert edges == pytest.approx({p: v for p, (_, v) in truth.items() if v > T})
    assert near == pytest.approx({p: v for p, (_, v) in truth.items() if T - 0.1 < v <= T})
    assert edges and near
    assert sum(g.histogram["counts"]) == len(queries) * K
    assert np.all(np.diff(g.edges.src) >= 0)  # by query, as before


def test_without_normalisation_the_score_is_the_cosine(x):
    g = knn_graph(x, K, 0.5, KnnConfig())
    assert np.array_equal(g.edges.score, g.edges.sim) and np.array_equal(g.near.score, g.near.sim)


def test_histogram_adds_up_the_same_in_any_split():
    values = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    whole, parts = Histogram(0.05), Histogram(0.05)
    whole.add(values)
    for chunk in np.array_split(values, 7)[::-1]:
        parts.add(chunk)
    assert whole.to_json() == parts.to_json() and sum(whole.to_json()["counts"]) == 1000


def test_canonical_keeps_each_pairs_best_score_and_similarity():
    p = Pairs(np.array([1, 0, 2, 3]), np.array([0, 1, 2, 1]), np.array([0.5, 0.7, 0.9, 0.6], np.float32),
              np.array([0.4, 0.2, 0.9, 0.1], np.float32))
    c = canonical(p)
    assert c.src.tolist() == [0, 1] and c.dst.tolist() == [1, 3]
    assert c.sim.tolist() == pytest.approx([0.7, 0.6]) and c.score.tolist() == pytest.approx([0.4, 0.1])


def test_edge_recall_counts_the_pairs_the_threshold_keeps(x: np.ndarray) -> None:
    """The reported recall of the pairs above the threshold is over the pairs whose score passes
    (what the graph keeps), not over the raw cosines, when scores are normalised."""
    from curation.dedup.knn import recall_of

    truth = exact_top_k(x, x[:50], 16, np.arange(50))
    t = 0.35
    scored = recall_of(truth, truth[1], t, CFG)
    raw = recall_of(truth, truth[1], t)
    assert scored["edge_recall_pairs"] == int((scores(*truth, CFG) > t).sum())
    assert raw["edge_recall_pairs"] == int((truth[0] > t).sum())
    assert scored["edge_recall_pairs"] < raw["edge_recall_pairs"]  # normalisation lowers scores here
    assert scored["edge_recall"] == raw["edge_recall"] == 1.0  # the exact ids found themselves
