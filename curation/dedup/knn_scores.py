"""What a k-NN graph records beside its edges, so a user can see where the threshold falls.

A threshold is compared with a score, not the raw cosine: with background normalisation
(`scores`) the two differ by the query's background, so the graphs store both (`Pairs.score`).
Besides the edges, every query batch feeds a `Collector`:

- the near misses: pairs scoring within `cfg.near_band` at or under the threshold, the
  `cfg.near_max` best kept (by score, ties by rows), so the memory they take is bounded whatever
  the pool;
- a histogram of the score of every scored top-k pair, in fixed bins of `cfg.score_bin`: integer
  counts that add up the same whatever the batching or the engine.

Both are chosen by a total order over directed pairs, so the result does not depend on how the
queries were cut into batches (the local and the sharded paths cut them differently).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation.config import KnnConfig

#: The stages' count key of the score histogram (`Histogram.to_json`).
HISTOGRAM_KEY = "score_histogram"


def scores(sims: np.ndarray, ids: np.ndarray, cfg: KnnConfig) -> np.ndarray:
    """The scores thresholds compare, for top-k rows sorted best first: the cosine, minus
    `cfg.background_weight` x the query's similarity to its `cfg.background_rank`-th neighbour
    (clipped at 0; the last found one when fewer exist). Without normalisation, the cosine."""
    if not cfg.background_rank or not cfg.background_weight or sims.shape[1] == 0:
        return sims
    count = (ids >= 0).sum(axis=1)
    col = np.clip(np.minimum(cfg.background_rank, count) - 1, 0, None)
    background = np.where(count > 0, sims[np.arange(len(sims)), col], 0.0)
    return sims - cfg.background_weight * np.maximum(background, 0.0)[:, None]


def _above(score: np.ndarray, ids: np.ndarray, threshold: float) -> np.ndarray:
    return (ids >= 0) & (score > threshold)


def passes(sims: np.ndarray, ids: np.ndarray, threshold: float, cfg: KnnConfig) -> np.ndarray:
    """Which of a query batch's top-k pairs are edges: found (id >= 0) with a score above `threshold`."""
    return _above(scores(sims, ids, cfg), ids, threshold)


@dataclass(frozen=True)
class Pairs:
    """Pairs of rows (query or src, base or dst) with their cosine and the score compared."""

    src: np.ndarray
    dst: np.ndarray
    sim: np.ndarray
    score: np.ndarray

    @staticmethod
    def of(parts: list["Pairs"]) -> "Pairs":
        """The parts concatenated (int64 rows, float32 values); none: no pairs."""
        def cat(name: str, dtype: type) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts] + [np.empty(0, dtype)]).astype(dtype)

        return Pairs(cat("src", np.int64), cat("dst", np.int64), cat("sim", np.float32), cat("score", np.float32))

    def take(self, rows: np.ndarray) -> "Pairs":
        return Pairs(self.src[rows], self.dst[rows], self.sim[rows], self.score[rows])

    def __len__(self) -> int:
        return int(self.src.size)


def best_first(pairs: Pairs, limit: int | None = None) -> Pairs:
    """The pairs by decreasing score, ties by (src, dst); the first `limit` of them."""
    order = np.lexsort((pairs.dst, pairs.src, -pairs.score))
    return pairs.take(order[:limit])


def canonical(pairs: Pairs) -> Pairs:
    """Undirected pairs as src < dst, self loops dropped, sorted by (src, dst), one per pair with
    its larger cosine and its larger score (a pair is an edge when either end scored it above
    the threshold, so the larger score is the one that decided)."""
    lo, hi = np.minimum(pairs.src, pairs.dst), np.maximum(pairs.src, pairs.dst)
    keep = lo != hi
    lo, hi, sim, score = lo[keep], hi[keep], pairs.sim[keep], pairs.score[keep]
    order = np.lexsort((-sim, hi, lo))  # by pair, best similarity first
    lo, hi, sim, score = lo[order], hi[order], sim[order], score[order]
    first = np.ones(lo.size, dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    starts = np.flatnonzero(first)
    best = np.maximum.reduceat(score, starts) if starts.size else score[:0]
    return Pairs(lo[first], hi[first], sim[first], best.astype(np.float32))


@dataclass
class Histogram:
    """Counts of scores in bins [i * width, (i + 1) * width), bin `first` to `first + len(counts) - 1`."""

    width: float
    first: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, values: np.ndarray) -> None:
        """Count `values` (exact integer sums: any split of the values gives the same counts)."""
        if not values.size:
            return
        # float64 division, so a bin does not depend on numpy's promotion rules for float32
        bins = np.floor(np.asarray(values, np.float64) / self.width).astype(np.int64)
        lo, hi = int(bins.min()), int(bins.max())
        if self.counts.size:
            lo, hi = min(lo, self.first), max(hi, self.first + self.counts.size - 1)
        grown = np.zeros(hi - lo + 1, np.int64)
        grown[self.first - lo:self.first - lo + self.counts.size] = self.counts
        grown += np.bincount(bins - lo, minlength=grown.size)
        self.first, self.counts = lo, grown

    def to_json(self) -> dict[str, Any]:
        """{"bin_width", "first_bin", "counts"}: bin i of `counts` covers scores in
        [(first_bin + i) * bin_width, (first_bin + i + 1) * bin_width)."""
        return {"bin_width": self.width, "first_bin": self.first if self.counts.size else 0,
                "counts": [int(c) for c in self.counts]}


class Collector:
    """Per query batch of a graph (`add`), what the graph keeps: the edges, the best near
    misses and the score histogram (`graph`)."""

    def __init__(self, threshold: float, cfg: KnnConfig):
        self.threshold, self.cfg = threshold, cfg
        self.edges: list[Pairs] = []
        self.near = Pairs.of([])
        self.histogram = Histogram(cfg.score_bin)

    def add(self, first_row: int, sims: np.ndarray, ids: np.ndarray) -> None:
        """The top-k (sims, ids) of the queries `first_row`, `first_row + 1`, ..."""
        score = scores(sims, ids, self.cfg)
        found = ids >= 0
        edge = _above(score, ids, self.threshold)
        near = found & ~edge & (score > self.threshold - self.cfg.near_band)
        rows = np.broadcast_to(np.arange(first_row, first_row + len(ids), dtype=np.int64)[:, None], ids.shape)
        self.edges.append(Pairs(rows[edge], ids[edge], sims[edge], score[edge]))
        if self.cfg.near_max and near.any():
            self.near = best_first(Pairs.of([self.near, Pairs(rows[near], ids[near], sims[near], score[near])]),
                                   self.cfg.near_max)
        self.histogram.add(score[found])

    def graph(self, info: dict[str, Any], self_query: bool) -> "KnnGraph":
        """The graph of every batch added. A self graph's pairs are undirected (`canonical`);
        a near miss found as an edge from its other end is dropped, so every near miss scores
        in (threshold - near_band, threshold] and never is an edge."""
        edges, near = Pairs.of(self.edges), self.near
        if self_query:
            edges, near = canonical(edges), canonical(near)
            width = int(max(edges.dst.max(initial=0), near.dst.max(initial=0))) + 1
            near = near.take(~np.isin(near.src * width + near.dst, edges.src * width + edges.dst))
        info.update(edges=len(edges), near_misses=len(near))
        return KnnGraph(edges, best_first(near), self.histogram.to_json(), info)


@dataclass(frozen=True)
class KnnGraph:
    """A k-NN graph: its edges (self graphs: src < dst sorted; cross graphs: by query, then best
    first), its near misses (best first), the histogram of every scored pair (`Histogram.to_json`)
    and the info dict (index, calibration, recall, counts)."""

    edges: Pairs
    near: Pairs
    histogram: dict[str, Any]
    info: dict[str, Any]


def bin_of(value: float, width: float) -> int:
    """The histogram bin of one score (`Histogram.add`'s rule)."""
    return math.floor(float(value) / width)
