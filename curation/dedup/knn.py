"""Cosine k-nearest-neighbour graphs with FAISS (DESIGN §2 steps 3-4): self and cross edges.

Exact search (IndexFlatIP) below `cfg.exact_below` vectors, an inverted file above it (see
`curation.dedup.knn_index`, whose index life cycle is re-exported here). For IVF indexes nprobe is
calibrated: starting small, it grows on a geometric ladder until recall@k on a seeded sample of
queries reaches `cfg.target_recall` against exact search; the recall reported in the info dict
is then measured on a second, independent sample. Every query pass runs in `cfg.batch_size`
batches and keeps only the edges above the threshold, the best near misses under it and a
histogram of every score (`curation.dedup.knn_scores`), so memory is bounded by the output.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable, Optional

import faiss
import numpy as np

from curation import paper
from curation.config import KnnConfig
from curation.dedup.knn_index import (
    IndexSpec,
    add_shard,
    build_index,
    choose_index,
    deserialize_index,
    gpu_available,
    is_pq,
    iter_batches,
    merge_results,
    rerank,
    sample_rows,
    search,
    search_shard,
    serialize_index,
    set_nprobe,
    train_index,
    training_rows,
    unit_float32,
)
from curation.dedup.knn_scores import Collector, KnnGraph, Pairs, canonical, passes, scores

__all__ = [
    "IndexSpec",
    "gpu_available",
    "choose_index",
    "sample_rows",
    "training_rows",
    "train_index",
    "add_shard",
    "build_index",
    "search",
    "search_shard",
    "merge_results",
    "serialize_index",
    "deserialize_index",
    "rerank",
    "drop_self",
    "exact_top_k",
    "recall_of",
    "recall_at_k",
    "nprobe_ladder",
    "calibrate_nprobe",
    "canonical_edges",
    "passes",
    "scores",
    "KnnGraph",
    "knn_graph",
    "cross_graph",
    "knn_edges",
    "cross_edges",
]


def drop_self(
    sims: np.ndarray, ids: np.ndarray, self_ids: Optional[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """k columns per row: without `self_ids` the first k; with them (searched with k + 1) each
    row's own id is removed, or its last column when self was not returned (exact duplicates)."""
    if self_ids is None:
        return sims[:, :k], ids[:, :k]
    sims, ids = sims[:, : k + 1], ids[:, : k + 1]
    drop = ids == np.asarray(self_ids)[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    return sims[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)


def _top_k(
    index: faiss.Index,
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    self_ids: Optional[np.ndarray],
    cfg: KnnConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (non-self) neighbours of a query batch, exactly scored.

    IVF-PQ fetches `cfg.rerank_factor` times more candidates and re-scores them exactly (FAISS's
    IndexRefine idea, without holding a second copy of the base in the index).
    """
    want = k + (self_ids is not None)
    if is_pq(index):
        fetch = min(want * cfg.rerank_factor, index.ntotal)
        sims, ids = rerank(base, queries, search(index, queries, fetch, cfg.batch_size)[1])
    else:
        sims, ids = search(index, queries, want, cfg.batch_size)
    return drop_self(sims, ids, self_ids, k)


def exact_top_k(
    base: np.ndarray, queries: np.ndarray, k: int, self_ids: Optional[np.ndarray] = None, batch_size: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (non-self) top-k of `queries` over `base`, streaming the base through flat blocks."""
    want = k + (self_ids is not None)
    result: list[tuple[np.ndarray, np.ndarray]] = []
    for rows in iter_batches(len(base), max(batch_size, 65_536)):
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(unit_float32(base[rows]))
        result = [merge_results(result + [search_shard(flat, queries, want, batch_size, rows.start)], want)]
    return drop_self(*result[0], self_ids, k)


def recall_of(
    truth: tuple[np.ndarray, np.ndarray], got_ids: np.ndarray, threshold: Optional[float] = None,
    cfg: Optional[KnnConfig] = None,
) -> dict:
    """recall@k of `got_ids` against exact (sims, ids), and of the exact pairs above threshold. With
    `cfg`, "above threshold" compares the pairs' `scores` (background-normalised), as the graph's
    edges do; without it, the cosine."""
    true_sims, true_ids = truth
    if cfg is not None and threshold is not None:
        true_sims = scores(true_sims, true_ids, cfg)
    width = int(max(true_ids.max(initial=0), got_ids.max(initial=0))) + 2
    row = np.broadcast_to(np.arange(len(true_ids))[:, None], true_ids.shape).astype(np.int64)
    found = (row * width + got_ids)[got_ids >= 0]
    valid = true_ids >= 0
    hit = np.isin(row * width + true_ids, found) & valid
    out = {"recall_at_k": float(hit.sum() / valid.sum()) if valid.any() else 1.0}
    if threshold is not None:
        above = valid & (true_sims > threshold)
        out["edge_recall"] = float(hit[above].mean()) if above.any() else 1.0
        out["edge_recall_pairs"] = int(above.sum())
    return out


def recall_at_k(
    index: faiss.Index,
    vectors: np.ndarray,
    sample_queries: np.ndarray,
    k: int,
    *,
    self_ids: Optional[np.ndarray] = None,
    cfg: Optional[KnnConfig] = None,
) -> float:
    """Fraction of the exact top-k ids (over `vectors`, which `index` holds as ids 0..n-1) that
    the search path returns for `sample_queries`. With `self_ids` (the queries' own row ids in
    `vectors`), each query's trivial self match is excluded on both sides."""
    cfg = cfg or KnnConfig()
    truth = exact_top_k(vectors, sample_queries, k, self_ids, cfg.batch_size)
    got = _top_k(index, vectors, sample_queries, k, self_ids, cfg)[1]
    return recall_of(truth, got, None)["recall_at_k"]


def nprobe_ladder(max_nprobe: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 11, 16, 23, ... (steps of sqrt 2) up to `max_nprobe` inclusive."""
    top = max(1, int(max_nprobe))
    return sorted({min(top, round(2 ** (i / 2))) for i in range(2 * int(math.log2(top)) + 3)})


def calibrate_nprobe(
    search_ids: Callable[[int], np.ndarray],
    truth: tuple[np.ndarray, np.ndarray],
    target: float,
    max_nprobe: int,
) -> tuple[int, list[tuple[int, float]]]:
    """The smallest nprobe on `nprobe_ladder(max_nprobe)` whose recall@k reaches `target`.

    `search_ids(nprobe)` returns the (self-dropped) top-k ids of a fixed query sample searched
    at that nprobe, and `truth` is `exact_top_k` of the same sample: any engine can supply it
    (one index here; a shard fan-out in a distributed engine). Returns (nprobe, [(nprobe tried,
    recall)...]); the last rung is returned when none reaches the target.
    """
    tried: list[tuple[int, float]] = []
    for nprobe in nprobe_ladder(max_nprobe):
        recall = recall_of(truth, search_ids(nprobe))["recall_at_k"]
        tried.append((nprobe, round(recall, 5)))
        if recall >= target:
            break
    return tried[-1][0], tried


def canonical_edges(
    src: np.ndarray, dst: np.ndarray, sim: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges as src < dst, self loops dropped, one per pair with its max similarity,
    sorted by (src, dst)."""
    sim = np.asarray(sim, dtype=np.float32)
    pairs = canonical(Pairs(np.asarray(src, np.int64), np.asarray(dst, np.int64), sim, sim))
    return pairs.src, pairs.dst, pairs.sim


def _graph(
    base: np.ndarray, queries: np.ndarray, k: int, threshold: float, self_query: bool, cfg: KnnConfig
) -> KnnGraph:
    """The graph of the top-k pairs of every query: edges above threshold, near misses, score histogram."""
    n, d = base.shape
    if queries.ndim != 2 or queries.shape[1] != d:
        raise ValueError(f"queries have shape {queries.shape}, base dimension is {d}")
    spec = choose_index(n, d, cfg)
    index = build_index(base, cfg)
    k_eff = max(0, min(k, n - int(self_query)))
    info: dict = {"index": asdict(spec), "n_base": n, "n_query": len(queries), "k": k, "threshold": threshold}
    measure = spec.kind != "flat" and cfg.recall_sample > 0 and len(queries) > 0 and k_eff > 0

    def sample(seed: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        rows = sample_rows(len(queries), cfg.recall_sample, seed)
        return rows, (rows if self_query else None)

    if measure and spec.nlist and cfg.nprobe is None and cfg.target_recall is not None:
        rows, own = sample(cfg.seed + 2)

        def search_ids(nprobe: int) -> np.ndarray:
            set_nprobe(index, nprobe)
            return _top_k(index, base, queries[rows], k_eff, own, cfg)[1]

        truth = exact_top_k(base, queries[rows], k_eff, own, cfg.batch_size)
        nprobe, tried = calibrate_nprobe(search_ids, truth, cfg.target_recall, min(spec.nlist, 8 * spec.nprobe))
        set_nprobe(index, nprobe)
        info["index"]["nprobe"] = nprobe
        info["nprobe_calibration"] = tried

    collect = Collector(threshold, cfg)
    for rows in iter_batches(len(queries), cfg.batch_size):
        own = np.arange(rows.start, rows.stop)
        collect.add(rows.start, *_top_k(index, base, queries[rows], k_eff, own if self_query else None, cfg))

    if spec.kind == "flat":  # exact by construction
        info.update(recall_at_k=1.0, recall_sample=0)
    elif measure:  # an independent sample from the calibration one
        rows, own = sample(cfg.seed + 1)
        truth = exact_top_k(base, queries[rows], k_eff, own, cfg.batch_size)
        info.update(recall_of(truth, _top_k(index, base, queries[rows], k_eff, own, cfg)[1], threshold, cfg))
        info["recall_sample"] = int(rows.size)
    else:
        info.update(recall_at_k=None, recall_sample=0)
    return collect.graph(info, self_query)


def knn_graph(
    vectors: np.ndarray,
    k: int = paper.SELF_DEDUP_K,
    threshold: float = paper.SELF_DEDUP_THRESHOLD,
    cfg: Optional[KnnConfig] = None,
) -> KnnGraph:
    """Self k-NN graph of one set: canonical edges src < dst, sorted, with a score > threshold
    (`scores`), its near misses and the histogram of every scored pair (`curation.dedup.knn_scores`).

    Each vector's k nearest OTHER vectors are candidates (searched with k + 1, self dropped); an
    edge found from both ends is kept once with its larger similarity and larger score. info holds
    the index spec, the nprobe calibration, and recall@k (and recall of the pairs above threshold)
    measured on `cfg.recall_sample` queries against exact search.
    """
    return _graph(vectors, vectors, k, threshold, True, cfg or KnnConfig())


def cross_graph(
    base_vectors: np.ndarray,
    query_vectors: np.ndarray,
    k: int = paper.SELF_DEDUP_K,
    threshold: float = paper.RELATIVE_DEDUP_THRESHOLD,
    cfg: Optional[KnnConfig] = None,
) -> KnnGraph:
    """Each query's k nearest base vectors with a score > threshold: edges (query row, base row),
    sorted by query then decreasing similarity, with the near misses and the score histogram."""
    return _graph(base_vectors, query_vectors, k, threshold, False, cfg or KnnConfig())


def knn_edges(
    vectors: np.ndarray,
    k: int = paper.SELF_DEDUP_K,
    threshold: float = paper.SELF_DEDUP_THRESHOLD,
    cfg: Optional[KnnConfig] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`knn_graph`'s edges alone: (src, dst, sim, info)."""
    g = knn_graph(vectors, k, threshold, cfg)
    return g.edges.src, g.edges.dst, g.edges.sim, g.info


def cross_edges(
    base_vectors: np.ndarray,
    query_vectors: np.ndarray,
    k: int = paper.SELF_DEDUP_K,
    threshold: float = paper.RELATIVE_DEDUP_THRESHOLD,
    cfg: Optional[KnnConfig] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`cross_graph`'s edges alone: (query_idx, base_idx, sim, info)."""
    g = cross_graph(base_vectors, query_vectors, k, threshold, cfg)
    return g.edges.src, g.edges.dst, g.edges.sim, g.info
