"""`balanced` curation without seeds: hierarchical k-means with resampling, then balanced sampling.

After Vo et al. 2024 ("Automatic Data Curation for Self-Supervised Learning: A Clustering-Based
Approach", facebookresearch/ssl-data-curation). Level 1 clusters the points, level l clusters the
centroids of level l-1, so the top level's clusters are coarse concepts and the leaves fine ones.
Resampling makes centroids spread evenly over the data instead of crowding into dense regions:
each step takes `sample_size` points per cluster (closest to its centroid, or random), re-runs
k-means on that union (starting from the current centroids: our choice, theirs restarts) and
re-assigns every point. Sampling then goes top-down: at every node the target is split over the
children with a cap x such that sum(min(x, child size)) = target, so small clusters are kept whole
and large ones are cut down: the result is flatter than the input over concepts.

K-means here is Lloyd's algorithm with FAISS doing the (GPU when present) nearest-centroid search
and numpy accumulating the centroid sums, in float64 when asked (their `dtype: float64`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from curation.retrieval.clustering import UseGpu, as_float32, assign, clamp_k, initial_centroids
from curation.config import BalancedConfig
from curation.retrieval.retrieve import retrieval_table

log = logging.getLogger(__name__)

Strategy = Literal["random", "closest"]


@dataclass(frozen=True)
class Level:
    """One level: `labels[i]` is the cluster of item i of the level below (points for level 1)."""

    centroids: np.ndarray  # (k, d) float32
    labels: np.ndarray  # int64
    sizes: np.ndarray  # (k,) int64: points under each cluster


@dataclass(frozen=True)
class Hierarchy:
    levels: list[Level]  # bottom (level 1) first
    sqdist: np.ndarray  # squared distance of every point to its level-1 centroid

    def point_clusters(self, level: int) -> np.ndarray:
        """Cluster of every point at `level` (1-based): level-1 labels composed upwards."""
        labels = self.levels[0].labels
        for lv in self.levels[1:level]:
            labels = lv.labels[labels]
        return labels


def lloyd(x: np.ndarray, init: np.ndarray, niter: int, float64: bool = True, use_gpu: UseGpu = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd iterations from `init`: (centroids, labels, squared distances) after `niter` updates.

    An emptied cluster is re-seeded on the point currently worst served (largest distance), the
    usual fix that keeps all K clusters alive.
    """
    centroids = as_float32(init).copy()
    k = len(centroids)
    dtype = np.float64 if float64 else np.float32
    labels, sqd = assign(x, centroids, metric="l2", use_gpu=use_gpu)
    for _ in range(niter):
        onehot = sp.csr_matrix((np.ones(len(x), dtype=dtype), (labels, np.arange(len(x)))), shape=(k, len(x)))
        sums = np.asarray(onehot @ x.astype(dtype, copy=False))
        counts = np.bincount(labels, minlength=k)
        alive = counts > 0
        centroids[alive] = (sums[alive] / counts[alive, None]).astype(np.float32)
        empty = np.flatnonzero(~alive)
        if len(empty):
            worst = np.argsort(-sqd, kind="stable")[: len(empty)]
            centroids[empty] = x[worst]
        labels, sqd = assign(x, centroids, metric="l2", use_gpu=use_gpu)
    return centroids, labels, sqd


def kmeans(x: np.ndarray, k: int, niter: int, seed: int, float64: bool = True, use_gpu: UseGpu = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd k-means from `clustering.initial_centroids` (seeded); K clamped to len(x)."""
    x = as_float32(x)
    k = clamp_k(k, len(x))
    return lloyd(x, initial_centroids(x, k, seed), niter, float64, use_gpu)


def per_cluster_take(labels: np.ndarray, key: np.ndarray, take: np.ndarray | int) -> np.ndarray:
    """Indices of the first `take` items of every cluster when ordered by `key` (ascending).

    `take` is one count for all clusters or one per cluster label.
    """
    order = np.lexsort((key, labels))
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(order)) - starts
    limit = take if np.isscalar(take) else np.asarray(take)[sorted_labels]
    return np.sort(order[rank < limit])


def resample(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, sqd: np.ndarray, steps: int, sample_size: int,
             strategy: Strategy, niter: int, seed: int, float64: bool, use_gpu: UseGpu) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resampling steps: k-means on `sample_size` points per cluster, then re-assign all points."""
    for step in range(steps):
        key = sqd if strategy == "closest" else np.random.default_rng([seed, step]).random(len(x))
        picked = per_cluster_take(labels, key, sample_size)
        centroids, _, _ = lloyd(x[picked], centroids, niter, float64, use_gpu)
        labels, sqd = assign(x, centroids, metric="l2", use_gpu=use_gpu)
    return centroids, labels, sqd


def split(x: np.ndarray, labels: np.ndarray, parts: int, niter: int, seed: int, float64: bool, use_gpu: UseGpu) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every cluster into (at most) `parts` by k-means of its members: the fine leaves."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    new_labels = np.empty(len(x), dtype=np.int64)
    sqd = np.empty(len(x), dtype=np.float32)
    centroids = []
    for c, members in enumerate(np.split(order, bounds)):
        sub_c, sub_l, sub_d = kmeans(x[members], min(parts, len(members)), niter, seed + c, float64, use_gpu)
        new_labels[members] = sub_l + sum(len(cc) for cc in centroids)
        sqd[members] = sub_d
        centroids.append(sub_c)
    return np.concatenate(centroids), new_labels, sqd


def _compact(centroids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop clusters with no member and renumber the rest 0..k'-1 in order."""
    used = np.unique(labels)
    remap = np.full(len(centroids), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return centroids[used], remap[labels]


def hierarchical_kmeans(
    vectors: np.ndarray,
    clusters: Sequence[int],
    *,
    splits: Sequence[int] | None = None,
    resampling_steps: Sequence[int] | None = None,
    sample_sizes: Sequence[int] | None = None,
    niter: int = 50,
    float64: bool = True,
    resample_strategy: Strategy = "closest",
    seed: int = 0,
    use_gpu: UseGpu = "auto",
) -> Hierarchy:
    """Build the hierarchy bottom-up; one entry per level in every list (splits default 1, no
    resampling by default). A level with sample size <= 1 is not resampled, as in their config."""
    n_levels = len(clusters)
    splits = list(splits or [1] * n_levels)
    steps = list(resampling_steps or [0] * n_levels)
    sizes = list(sample_sizes or [1] * n_levels)
    if not (len(splits) == len(steps) == len(sizes) == n_levels):
        raise ValueError("clusters, splits, resampling_steps and sample_sizes need one entry per level")
    x = as_float32(vectors)
    levels: list[Level] = []
    point_sqd = np.empty(0, dtype=np.float32)
    below_sizes = np.ones(len(x), dtype=np.int64)
    for i in range(n_levels):
        level, sqd = next_level(x, below_sizes, clusters[i], splits[i], steps[i], sizes[i], niter=niter, float64=float64,
                                resample_strategy=resample_strategy, seed=level_seed(seed, i), use_gpu=use_gpu)
        if i == 0:
            point_sqd = sqd
        levels.append(level)
        log.info("hierarchical k-means level %d: %d items -> %d clusters", i + 1, len(x), len(level.centroids))
        x, below_sizes = level.centroids, level.sizes
    return Hierarchy(levels, point_sqd)


def level_seed(seed: int, index: int) -> int:
    """Seed of level `index` (0-based)."""
    return seed + 1000 * index


def next_level(x: np.ndarray, below_sizes: np.ndarray, k: int, splits: int, steps: int, sample_size: int, *, niter: int,
               float64: bool, resample_strategy: Strategy, seed: int, use_gpu: UseGpu = "auto") -> tuple[Level, np.ndarray]:
    """One level over the items `x` (points, or the centroids of the level below, each standing
    for `below_sizes` points): k-means, resampling steps (when sample_size > 1), splits, compaction.
    Returns the level and every item's squared distance to its centroid."""
    c, labels, sqd = kmeans(x, k, niter, seed, float64, use_gpu)
    if sample_size > 1 and steps > 0:
        c, labels, sqd = resample(x, c, labels, sqd, steps, sample_size, resample_strategy, niter, seed, float64, use_gpu)
    if splits > 1:
        c, labels, sqd = split(x, labels, splits, niter, seed, float64, use_gpu)
    c, labels = _compact(c, labels)
    return Level(c, labels, np.bincount(labels, weights=below_sizes, minlength=len(c)).astype(np.int64)), sqd


def hierarchy_from_config(vectors: np.ndarray, cfg: BalancedConfig, use_gpu: UseGpu = "auto") -> Hierarchy:
    """`hierarchical_kmeans` with the parameters of `clustering.balanced` in the run config."""
    return hierarchical_kmeans(
        vectors, cfg.clusters, splits=cfg.splits, resampling_steps=cfg.resampling_steps, sample_sizes=cfg.sample_sizes,
        niter=cfg.niter, float64=cfg.float64, resample_strategy=cfg.resample_strategy, seed=cfg.seed, use_gpu=use_gpu,
    )


def balanced_cap(sizes: np.ndarray, target: int) -> int:
    """The largest x with sum(min(x, size)) <= target (max size when everything fits)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if target < 0:
        raise ValueError(f"target must be non-negative, got {target}")
    hi = int(sizes.max(initial=0))
    if sizes.sum() <= target:
        return hi
    lo = 0  # invariant: f(lo) <= target < f(hi), f(x) = sum(min(x, sizes)) non-decreasing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.minimum(mid, sizes).sum() <= target:
            lo = mid
        else:
            hi = mid
    return lo


def split_target(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Per-child targets summing to exactly min(target, sum(sizes)): min(x, size) with the cap x
    of `balanced_cap`, plus one for a random few of the children larger than x (the remainder)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.sum() <= target:
        return sizes.copy()
    x = balanced_cap(sizes, target)
    out = np.minimum(x, sizes)
    remainder = target - int(out.sum())
    if remainder:
        out[rng.choice(np.flatnonzero(sizes > x), size=remainder, replace=False)] += 1
    return out


def hierarchical_sample(hierarchy: Hierarchy, target: int, strategy: Strategy = "random", seed: int = 0) -> np.ndarray:
    """Top-down balanced sampling: sorted indices of min(target, n) points (what it did per level:
    `hierarchical_sample_stats`)."""
    return hierarchical_sample_stats(hierarchy, target, strategy, seed)[0]


def label_entropy(labels: np.ndarray) -> float:
    """Shannon entropy (bits) of the label distribution: higher is flatter."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def balanced_table(image_ids: Sequence[str], vectors: np.ndarray, hierarchy: Hierarchy, selected: np.ndarray) -> pa.Table:
    """Rows (mode `balanced`, no seed dataset) for the selected points, with their leaf cluster and
    cosine similarity to the leaf centroid."""
    leaf = hierarchy.levels[0].labels[selected]
    cent = hierarchy.levels[0].centroids[leaf]
    vec = as_float32(vectors[selected])
    norms = np.linalg.norm(cent, axis=1) * np.linalg.norm(vec, axis=1)
    sims = np.einsum("ij,ij->i", vec, cent) / np.maximum(norms, 1e-12)
    return retrieval_table(np.asarray(image_ids, dtype=object)[selected], seed_dataset=None, mode="balanced", clusters=leaf, similarities=sims)


# -- at pool scale: the `balance` stage (pipelines/stages/balance.py) ---------------------------------
@dataclass(frozen=True)
class LevelPlan:
    """The levels a run builds: the config's, scaled to the pool (see `scaled_levels`)."""

    clusters: tuple[int, ...]
    splits: tuple[int, ...]
    resampling_steps: tuple[int, ...]
    sample_sizes: tuple[int, ...]
    factor: float | None  # pool / clusters_pool; None: the levels as configured
    dropped: int  # configured levels left out (scaled under the floor, or not fewer than the level below)
    note: str

    @property
    def leaves(self) -> int:
        return self.clusters[0] * self.splits[0]

    def items(self, pool: int) -> list[int]:
        """Items each level clusters: the points, then the (most) clusters of the level below."""
        out = [pool]
        for i in range(1, len(self.clusters)):
            out.append(self.clusters[i - 1] * self.splits[i - 1])
        return out


def scaled_levels(cfg: BalancedConfig, pool: int) -> LevelPlan:
    """The configured levels for a pool of `pool` images.

    A preset is meant for `clusters_pool` images (Vo et al.: 743M; DINOv3: ~17B); another pool
    keeps its images per cluster at every level, i.e. every level's K is multiplied by
    f = pool / clusters_pool. Level 1 keeps its split (K1 x f clusters split in S1) while K1 x f is
    at least `min_clusters`, else becomes one k-means of K1 x S1 x f leaves (at least
    `min_clusters`); a level above whose scaled K is under `min_clusters`, or not fewer than the
    clusters below it, is dropped with every level above it (our choice: a level must group).
    Without `clusters_pool` (custom levels) the levels are used as given.
    """
    lists = (cfg.clusters, cfg.splits, cfg.resampling_steps, cfg.sample_sizes)
    if cfg.clusters_pool is None or pool < 1:
        return LevelPlan(*(tuple(v) for v in lists), factor=None, dropped=0,
                         note=f"levels {_levels_text(cfg.clusters, cfg.splits)} as configured")
    f = pool / cfg.clusters_pool
    floor = cfg.min_clusters
    coarse, leaves = round(cfg.clusters[0] * f), round(cfg.clusters[0] * cfg.splits[0] * f)
    if cfg.splits[0] > 1 and coarse >= floor:
        first = (min(coarse, pool), cfg.splits[0])
    else:
        first = (min(max(floor, leaves), pool), 1)
    clusters, splits = [first[0]], [first[1]]
    below = first[0] * first[1]
    for i in range(1, len(cfg.clusters)):
        k = round(cfg.clusters[i] * f)
        if k < floor or k >= below:
            break
        clusters.append(k)
        splits.append(cfg.splits[i])
        below = k * cfg.splits[i]
    n = len(clusters)
    dropped = len(cfg.clusters) - n
    note = f"{cfg.preset} levels {_levels_text(cfg.clusters, cfg.splits)} for {cfg.clusters_pool:,} images"
    if pool != cfg.clusters_pool:
        note += f", scaled by {f:.3g} to {pool:,} images: {_levels_text(clusters, splits)}"
    if dropped:
        note += f" ({dropped} level{'s' if dropped > 1 else ''} above dropped: under {floor} clusters or not fewer than below)"
    return LevelPlan(tuple(clusters), tuple(splits), tuple(cfg.resampling_steps[:n]), tuple(cfg.sample_sizes[:n]),
                     factor=f, dropped=dropped, note=note)


def _levels_text(clusters: Sequence[int], splits: Sequence[int]) -> str:
    return " / ".join(f"{k:,}x{s}" if s > 1 else f"{k:,}" for k, s in zip(clusters, splits))


@dataclass(frozen=True)
class SampleStats:
    """What top-down sampling did at every level (bottom first): cluster sizes before and after,
    and the caps x it chose (one per parent node with a non-zero target; the top level has one)."""

    before: list[np.ndarray]
    after: list[np.ndarray]
    caps: list[np.ndarray]


def hierarchical_sample_stats(hierarchy: Hierarchy, target: int, strategy: Strategy = "random", seed: int = 0
                              ) -> tuple[np.ndarray, SampleStats]:
    """`hierarchical_sample` (the same choice, the same random draws), with what it did per level."""
    rng = np.random.default_rng(seed)
    levels = hierarchy.levels
    top = levels[-1].sizes
    caps: list[np.ndarray] = [np.array([balanced_cap(top, target)], dtype=np.int64)]
    want = split_target(top, target, rng)
    after = [want]
    for i in range(len(levels) - 1, 0, -1):
        labels, child_sizes = levels[i].labels, levels[i - 1].sizes
        child_want = np.zeros(len(child_sizes), dtype=np.int64)
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], np.arange(len(want) + 1))
        level_caps = []
        for c in np.flatnonzero(want):
            children = order[starts[c] : starts[c + 1]]
            level_caps.append(balanced_cap(child_sizes[children], int(want[c])))
            child_want[children] = split_target(child_sizes[children], int(want[c]), rng)
        want = child_want
        after.insert(0, want)
        caps.insert(0, np.asarray(level_caps, dtype=np.int64))
    labels = levels[0].labels
    key = hierarchy.sqdist if strategy == "closest" else rng.random(len(labels))
    selected = per_cluster_take(labels, key, want)
    return selected, SampleStats([lv.sizes for lv in levels], after, caps)


def hierarchy_from_levels(leaf_centroids: np.ndarray, leaf_labels: np.ndarray, sqdist: np.ndarray,
                          upper: Sequence[tuple[np.ndarray, np.ndarray]]) -> Hierarchy:
    """A `Hierarchy` from stored levels: level 1 as per-point leaf labels (and squared distances),
    every level above as (centroids, label of each cluster of the level below)."""
    leaf_labels = np.asarray(leaf_labels, dtype=np.int64)
    sizes = np.bincount(leaf_labels, minlength=len(leaf_centroids)).astype(np.int64)
    levels = [Level(leaf_centroids, leaf_labels, sizes)]  # centroids as given (memory-mapped: sampling never reads them)
    for centroids, labels in upper:
        labels = np.asarray(labels, dtype=np.int64)
        sizes = np.bincount(labels, weights=levels[-1].sizes, minlength=len(centroids)).astype(np.int64)
        levels.append(Level(centroids, labels, sizes))
    return Hierarchy(levels, np.asarray(sqdist, dtype=np.float32))


def concept_balance(labels: Sequence[str] | np.ndarray) -> dict[str, float]:
    """Entropy (bits) and evenness (entropy / log2 of the number of concepts; 1.0 is uniform) of a
    concept labelling, and the largest concept over the median one."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    entropy = label_entropy(labels) if len(counts) else 0.0
    return {"concepts": int(len(counts)), "entropy_bits": round(entropy, 3),
            "evenness": round(float(entropy / np.log2(max(len(counts), 2))), 3),
            "max_over_median": round(float(counts.max() / np.median(counts)), 2) if len(counts) else 0.0}
