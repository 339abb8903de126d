"""Level 1 of the hierarchy at pool scale: the leaf model (coarse centroids, each split into leaves)
and every image's leaf, as the `balance` stage computes them over embedding files.

The coarse k-means and each coarse cluster's split train on a seeded sample (`train_splits`, or
`split_members` over every member, one single-threaded k-means per coarse cluster so that every
engine rounds alike); `assign_leaves` then gives any batch of vectors its leaf by scoring the
candidate leaves pair by pair (`pair_sqdist`: bytes independent of the batch).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from curation.retrieval.balanced import _compact, kmeans
from curation.retrieval.clustering import UseGpu, _flat_index, as_float32


@dataclass(frozen=True)
class LeafModel:
    """Level 1 at pool scale: coarse centroids and, for each coarse cluster c, its leaf centroids
    `leaves[offsets[c]:offsets[c + 1]]` (its split; the coarse centroid itself without splits)."""

    coarse: np.ndarray  # (k, d) float32
    leaves: np.ndarray  # (L, d) float32; may be memory-mapped (10M leaves: 51 GB at d=1280): read by rows
    offsets: np.ndarray  # (k + 1,) int64

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coarse": self.coarse, "leaves": self.leaves, "offsets": self.offsets}


def unsplit(coarse: np.ndarray) -> LeafModel:
    """A level 1 without splits: every coarse cluster is a leaf."""
    coarse = as_float32(coarse)
    return LeafModel(coarse, coarse, np.arange(len(coarse) + 1, dtype=np.int64))


@contextmanager
def single_thread() -> Iterator[None]:
    """BLAS and OpenMP (FAISS) on one thread inside the block: a k-means run in an engine task then
    rounds the same way on every engine (a Ray worker has one thread, a local worker all cores)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def split_members(x: np.ndarray, coarse_labels: np.ndarray, positions: np.ndarray, parts: int, niter: int, seed: int,
                  float64: bool = True) -> dict[int, np.ndarray]:
    """Leaf centroids of every coarse cluster present: k-means of its members into (at most) `parts`
    (seed + cluster, as `split`), members in position order, on one thread; a leaf no member
    keeps is dropped. What the `balance` stage's split tasks run on one bucket of coarse clusters."""
    order = np.lexsort((positions, coarse_labels))
    labels = np.asarray(coarse_labels)[order]
    bounds = np.flatnonzero(np.diff(labels)) + 1
    out: dict[int, np.ndarray] = {}
    with single_thread():
        for members in np.split(order, bounds):
            if not len(members):
                continue
            c = int(coarse_labels[members[0]])
            sub, sub_labels, _ = kmeans(x[members], min(parts, len(members)), niter, seed + c, float64, "never")
            out[c] = sub[np.unique(sub_labels)]
    return out


def leaf_model(coarse: np.ndarray, leaves: dict[int, np.ndarray]) -> LeafModel:
    """Level 1 from its coarse centroids and the leaves found for each (`split_members`); a coarse
    cluster with no member stays one leaf (its own centroid)."""
    coarse = as_float32(coarse)
    subs = [as_float32(leaves.get(c, coarse[c:c + 1])) for c in range(len(coarse))]
    offsets = np.concatenate([[0], np.cumsum([len(sub) for sub in subs])]).astype(np.int64)
    return LeafModel(coarse, np.concatenate(subs), offsets)


def train_splits(sample: np.ndarray, coarse: np.ndarray, parts: int, niter: int, seed: int, float64: bool = True,
                 use_gpu: UseGpu = "auto") -> LeafModel:
    """Split every coarse cluster by k-means of its members among `sample` (in memory; the stage
    splits every kept image's cluster with engine tasks, `split_members`)."""
    labels, _, _ = assign_leaves(sample, unsplit(coarse), use_gpu=use_gpu)
    return leaf_model(coarse, split_members(as_float32(sample), labels, np.arange(len(sample)), parts, niter, seed, float64))


#: Coarse centroids FAISS proposes per vector in `assign_leaves`, each then scored exactly.
LEAF_CANDIDATES = 4
#: Vectors whose candidates `pair_sqdist` scores at once (bounds the [chunk, k, d] temporary).
PAIR_CHUNK = 128


def pair_sqdist(x: np.ndarray, candidates: Callable[[slice], np.ndarray], k: int) -> np.ndarray:
    """[m, k] squared distances of x [m, d] to their own k candidates (`candidates(rows)`: [rows, k, d],
    or [1, k, d] shared), each summed along d by numpy's pairwise sum: a fixed sequence of float32
    operations for a given d, so the same bytes whatever the call's shape, the other rows or the
    threads (a BLAS product's rounding depends on them)."""
    out = np.empty((len(x), k), np.float32)
    for s in range(0, len(x), PAIR_CHUNK):
        rows = slice(s, min(s + PAIR_CHUNK, len(x)))
        diff = np.asarray(x[rows], np.float32)[:, None, :] - np.asarray(candidates(rows), np.float32)
        out[rows] = np.multiply(diff, diff).sum(axis=-1)
    return out


def assign_leaves(vectors: np.ndarray, model: LeafModel, batch: int = 65_536, use_gpu: UseGpu = "auto"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(leaf, squared distance to it, cosine to it) of every vector: the nearest coarse centroid
    (L2), then the nearest leaf of that coarse cluster. What the engine tasks of the `balance` stage
    run. FAISS proposes `LEAF_CANDIDATES` coarse centroids; those and the leaves are scored per
    pair (`pair_sqdist`), ties to the lower label: the same bytes on every engine, whatever the
    split of the vectors into files or the thread count."""
    x = as_float32(vectors)
    n = len(x)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.float32)
    coarse = as_float32(model.coarse)
    k = min(LEAF_CANDIDATES, len(coarse))
    index = _flat_index(coarse, "l2", use_gpu)
    coarse_labels = np.empty(n, dtype=np.int64)
    sqd = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch):
        xb = x[start:start + batch]
        ids = index.search(xb, k)[1]
        d2 = pair_sqdist(xb, lambda rows: coarse[ids[rows]], k)
        best = np.lexsort((ids, d2))[:, 0]  # per row: the nearest, equal distances to the lower label
        rows = np.arange(len(xb))
        coarse_labels[start:start + batch], sqd[start:start + batch] = ids[rows, best], d2[rows, best]
    if len(model.leaves) == len(coarse):  # no splits
        labels = coarse_labels
    else:
        labels = np.empty(n, dtype=np.int64)
        order = np.argsort(coarse_labels, kind="stable")
        bounds = np.flatnonzero(np.diff(coarse_labels[order])) + 1
        for members in np.split(order, bounds):
            c = int(coarse_labels[members[0]])
            lo, hi = int(model.offsets[c]), int(model.offsets[c + 1])
            sub = as_float32(model.leaves[lo:hi])
            d2 = pair_sqdist(x[members], lambda rows: sub[None], hi - lo)
            best = np.argmin(d2, axis=1)  # the first of equal distances: the lower label
            labels[members] = lo + best
            sqd[members] = d2[np.arange(len(members)), best]
    cent = as_float32(model.leaves[labels])
    dots = np.multiply(x, cent).sum(axis=-1)
    norms = np.sqrt(np.multiply(x, x).sum(axis=-1)) * np.sqrt(np.multiply(cent, cent).sum(axis=-1))
    return labels, sqd, (dots / np.maximum(norms, 1e-12)).astype(np.float32)


def compact_leaves(leaves: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaves with at least one point, renumbered 0..L'-1 in order, and the points' new labels."""
    kept, labels = _compact(leaves, np.asarray(labels, dtype=np.int64))  # a memory-mapped `leaves` is read by rows
    return as_float32(kept), labels
