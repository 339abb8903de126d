"""Spherical k-means of the deduplicated pool with FAISS (GPU when present), for `cluster` retrieval.

At paper scale (744M vectors, K = paper.KMEANS_CLUSTERS) the centroids are trained on a seeded
sample and every vector is then assigned in batches, so memory stays at one batch plus the
centroids. Embeddings are L2-normalised, so the spherical variant (centroids re-normalised each
iteration) and inner-product assignment give cosine similarity to the centroid directly.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Literal

import faiss
import numpy as np

from curation.core.determinism import best_first, pair_dots

if TYPE_CHECKING:
    from curation.config import ClusterConfig

log = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
UseGpu = Literal["auto", "never"]
Init = Literal["auto", "kmeans++", "random"]

#: k-means++ seeding runs on at most this many points per centroid (a seeded subsample)...
KMEANSPP_POINTS_PER_CENTROID = 64
#: ...and only while K x subsample stays under this many (point, seed) pairs. Beyond it (paper
#: scale: K = 100k) seeding is random, as FAISS does: k-means++ makes K sequential passes over
#: its subsample, memory-bound, and would cost more than all the Lloyd iterations together.
KMEANSPP_BUDGET = 200_000_000
#: Centroids FAISS proposes per vector in `assign`, each then scored exactly (a near tie between
#: the best two is decided the same way on every engine).
ASSIGN_CANDIDATES = 4


def gpu_count(use_gpu: UseGpu = "auto") -> int:
    """GPUs FAISS may use: 0 with faiss-cpu, with use_gpu='never', or on a machine without one."""
    if use_gpu == "never" or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return faiss.get_num_gpus()


def clamp_k(k: int, n: int) -> int:
    """K no larger than the number of points (a warning, not a crash, when it has to shrink)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if n < 1:
        raise ValueError("cannot cluster zero vectors")
    if k > n:
        message = f"k-means: K={k} is larger than the {n} points; using K={n}"
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return n
    return k


def scaled_k(k: int | None, pool: int, k_min: int = 16) -> tuple[int, str]:
    """K for a deduplicated pool of `pool` images, and a line saying how it was chosen.

    `k` None: the paper's ratio (paper.KMEANS_CLUSTERS clusters for paper.POOL_AFTER_RELATIVE_DEDUP
    images, ~7,440 per cluster) applied to the pool, at least `k_min` (our choice: a pool of a few
    hundred images would otherwise get one cluster, or every image its own) and at most the pool.
    A number: that K, clamped to the pool.
    """
    from curation import paper

    if pool < 1:
        return (k or k_min), "empty pool"
    if k is not None:
        chosen = min(k, pool)
        return chosen, f"K={chosen:,} as configured" + (f" (clamped from {k:,} to the pool)" if chosen < k else "")
    exact = pool * paper.KMEANS_CLUSTERS / paper.POOL_AFTER_RELATIVE_DEDUP
    chosen = min(max(k_min, round(exact)), pool)
    why = (f"K={chosen:,}: the paper's {paper.KMEANS_CLUSTERS:,} clusters per {paper.POOL_AFTER_RELATIVE_DEDUP:,} images"
           + (f" at {pool:,} images" if pool != paper.POOL_AFTER_RELATIVE_DEDUP else ""))
    if round(exact) < k_min:
        why += f" = {exact:,.1f}, raised to the floor of {k_min:,} (clustering.k_min)"
    if chosen < max(k_min, round(exact)):
        why += f", cut to the pool's {pool:,}"
    return chosen, why + f"; ~{pool / chosen:,.0f} images per cluster"


def as_float32(x: np.ndarray) -> np.ndarray:
    """C-contiguous float32 view or copy: what FAISS takes (embeddings are stored as float16)."""
    return np.ascontiguousarray(x, dtype=np.float32)


def training_sample(n: int, sample: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded sample of `sample` of `n` rows, or None when all rows are used."""
    if sample is None or sample >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=sample, replace=False))


def kmeanspp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ seeding: k rows of x (float32).

    D^2 sampling (Arthur & Vassilvitskii 2007) with 2 + ln k candidates per step, keeping the one
    that lowers the potential most (as scikit-learn does): plain D^2 sampling still puts two
    seeds in one of several well-separated clusters about half the time once most are covered.
    """
    rng = np.random.default_rng(seed)
    x = as_float32(x)
    trials = 2 + int(np.log(k))
    sq_norms = np.einsum("ij,ij->i", x, x, dtype=np.float64)

    def sq_dist(rows: np.ndarray) -> np.ndarray:  # (len(rows), n) squared distances
        return np.maximum(sq_norms[rows, None] - 2.0 * (x[rows] @ x.T) + sq_norms[None, :], 0.0)

    chosen = [int(rng.integers(len(x)))]
    d2 = sq_dist(np.array(chosen))[0]
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point coincides with a seed (duplicates): any point will do
            cands = rng.integers(len(x), size=1)
        else:
            cands = np.minimum(np.searchsorted(np.cumsum(d2), rng.random(trials) * total), len(x) - 1)
        new = np.minimum(d2[None, :], sq_dist(cands))
        best = int(np.argmin(new.sum(axis=1)))
        chosen.append(int(cands[best]))
        d2 = new[best]
    return x[chosen].copy()


def initial_centroids(x: np.ndarray, k: int, seed: int, init: Init = "auto") -> np.ndarray:
    """K starting centroids: k-means++ on a seeded subsample when affordable ('auto'), else K
    distinct random points. Random seeds merge well-separated clusters that k-means++ keeps apart."""
    n = len(x)
    sub = min(n, KMEANSPP_POINTS_PER_CENTROID * k)
    if init == "kmeans++" or (init == "auto" and k * sub <= KMEANSPP_BUDGET):
        idx = training_sample(n, sub, seed)
        return kmeanspp(x if idx is None else x[idx], k, seed)
    rng = np.random.default_rng(seed)
    return as_float32(x[np.sort(rng.choice(n, size=k, replace=False))])


def train_kmeans(
    vectors: np.ndarray,
    k: int,
    niter: int = 25,
    seed: int = 0,
    sample: int | None = None,
    *,
    spherical: bool = True,
    use_gpu: UseGpu = "auto",
    init: Init = "auto",
    init_centroids: np.ndarray | None = None,
) -> np.ndarray:
    """Train K centroids (float32, K x d) on a seeded sample of `vectors` (all when sample is None).

    K is clamped to the number of training points. FAISS's own subsampling is disabled so that
    `sample` alone decides which points train, and the result depends only on `seed`. The start
    is `init_centroids` when given, else `initial_centroids(..., init)`.
    """
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    idx = training_sample(len(vectors), sample, seed)
    x = as_float32(vectors if idx is None else vectors[idx])
    k = clamp_k(k, len(x))
    if init_centroids is None:
        init_centroids = initial_centroids(x, k, seed, init)
    elif len(init_centroids) != k:
        raise ValueError(f"init_centroids has {len(init_centroids)} rows for K={k}")
    ngpu = gpu_count(use_gpu)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        gpu=ngpu if ngpu else False,
        min_points_per_centroid=1,  # small K-to-n ratios are legitimate here; no stderr noise
        max_points_per_centroid=math.ceil(len(x) / k) + 1,
        verbose=False,
    )
    km.train(x, init_centroids=as_float32(init_centroids))
    log.debug("k-means: K=%d on %d x %d, objective %.4g, %d GPU(s)", k, len(x), x.shape[1], km.obj[-1] if len(km.obj) else 0.0, ngpu)
    return np.asarray(km.centroids, dtype=np.float32)


def _flat_index(centroids: np.ndarray, metric: Metric, use_gpu: UseGpu) -> faiss.Index:
    d = centroids.shape[1]
    index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    if gpu_count(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(as_float32(centroids))
    return index


def assign(
    vectors: np.ndarray,
    centroids: np.ndarray,
    batch_size: int = 65_536,
    *,
    metric: Metric = "ip",
    use_gpu: UseGpu = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every vector, `batch_size` vectors per FAISS call.

    Returns (labels int64, scores float32). With metric='ip' (default) the score is the inner
    product, i.e. the cosine similarity for normalised inputs; with 'l2' it is the squared
    Euclidean distance (lower is closer). With 'ip' FAISS proposes the `ASSIGN_CANDIDATES` best
    centroids and each is scored on its own (`curation.core.determinism.pair_dots`), the best kept
    (equal scores: the lower label): labels and scores have the same bytes whatever the split of
    the vectors into files or batches, the thread count or the device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(vectors)
    labels = np.empty(n, dtype=np.int64)
    scores = np.empty(n, dtype=np.float32)
    if n == 0:
        return labels, scores
    index = _flat_index(centroids, metric, use_gpu)
    centroids = as_float32(centroids)
    k = min(ASSIGN_CANDIDATES, len(centroids)) if metric == "ip" else 1
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x = as_float32(vectors[start:stop])
        dist, ids = index.search(x, k)
        if metric == "ip":  # BLAS scores round by the call's shape and threads: re-score per pair
            dist, ids = best_first(pair_dots(x, lambda rows: centroids[ids[rows]], k), ids)
        labels[start:stop] = ids[:, 0]
        scores[start:stop] = dist[:, 0]
    return labels, scores


def inertia(vectors: np.ndarray, centroids: np.ndarray, batch_size: int = 65_536, use_gpu: UseGpu = "auto") -> float:
    """Sum of squared Euclidean distances of every vector to its nearest centroid (k-means loss)."""
    _, sq = assign(vectors, centroids, batch_size, metric="l2", use_gpu=use_gpu)
    return float(np.sum(sq, dtype=np.float64))


def cluster_pool(vectors: np.ndarray, cfg: ClusterConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `clustering` stage: train on `cfg.train_sample` points, assign all. (centroids, labels, sims)."""
    centroids = train_kmeans(vectors, cfg.k, cfg.niter, cfg.seed, cfg.train_sample, use_gpu=cfg.use_gpu, init=cfg.init)
    labels, sims = assign(vectors, centroids, cfg.assign_batch, use_gpu=cfg.use_gpu)
    return centroids, labels, sims
