"""Hierarchical k-means with resampling + balanced top-down sampling (Vo et al. 2024)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from curation.retrieval.balanced import (
    balanced_cap,
    balanced_table,
    hierarchical_kmeans,
    hierarchical_sample,
    hierarchy_from_config,
    label_entropy,
    per_cluster_take,
    split_target,
)
from curation.config import BalancedConfig

SIZES = (2000 * 0.7 ** np.arange(20)).astype(int) + 5  # 2005, 1405, ..., 7: a long tail


def _concepts(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(SIZES), 16))
    x = np.concatenate([c + 0.05 * rng.standard_normal((s, 16)) for c, s in zip(centres, SIZES)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(len(SIZES)), SIZES)


@pytest.fixture(scope="module")
def tree():
    x, y = _concepts()
    h = hierarchical_kmeans(x, [60, 20], resampling_steps=[0, 5], sample_sizes=[1, 2], niter=20, seed=0)
    return x, y, h


@pytest.mark.parametrize(
    "sizes, target, cap",
    [([10, 5, 1], 12, 6), ([10, 5, 1], 11, 5), ([10, 5, 1], 10, 4), ([10, 5, 1], 16, 10), ([10, 5, 1], 99, 10), ([3, 3, 3], 0, 0), ([7], 3, 3)],
)
def test_balanced_cap(sizes: list[int], target: int, cap: int) -> None:
    x = balanced_cap(np.array(sizes), target)
    assert x == cap
    s = np.array(sizes)
    assert np.minimum(x, s).sum() <= target
    if s.sum() > target:
        assert np.minimum(x + 1, s).sum() > target  # largest such x


def test_split_target_sums_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 50, size=rng.integers(1, 30))
        target = int(rng.integers(0, sizes.sum() + 10))
        out = split_target(sizes, target, rng)
        assert out.sum() == min(target, sizes.sum())
        assert np.all(out <= sizes) and np.all(out >= 0)
        x = balanced_cap(sizes, target)
        assert np.all(out >= np.minimum(x, sizes)) and np.all(out <= np.minimum(x + 1, sizes))


def test_per_cluster_take() -> None:
    labels = np.array([1, 0, 1, 1, 0, 2])
    key = np.array([0.3, 0.9, 0.1, 0.2, 0.5, 0.0])
    np.testing.assert_array_equal(per_cluster_take(labels, key, 2), [1, 2, 3, 4, 5])  # drops 0: third of cluster 1
    np.testing.assert_array_equal(per_cluster_take(labels, key, np.array([1, 1, 0])), [2, 4])


def test_hierarchy_shape(tree) -> None:
    x, _, h = tree
    assert [len(lv.centroids) for lv in h.levels] == [60, 20]
    assert h.levels[0].labels.shape == (len(x),) and h.levels[1].labels.shape == (60,)
    assert h.levels[0].sizes.sum() == h.levels[1].sizes.sum() == len(x)
    np.testing.assert_array_equal(np.bincount(h.point_clusters(2), minlength=20), h.levels[1].sizes)
    # Resampling + k-means++ find the 20 concepts at the top level: each top cluster is one concept.
    _, y, _ = tree
    top = h.point_clusters(2)
    assert all(len(np.unique(y[top == c])) == 1 for c in range(20))


@pytest.mark.parametrize("strategy", ["random", "closest"])
def test_sampling_hits_target_and_flattens(tree, strategy: str) -> None:
    x, y, h = tree
    sel = hierarchical_sample(h, 1000, strategy=strategy, seed=0)
    assert len(sel) == 1000 and len(np.unique(sel)) == 1000
    before, after = label_entropy(y), label_entropy(y[sel])
    # Input: 2.98 bits over 20 concepts (max 4.32); balanced: 4.01 bits, a gain of 1.04 bits.
    assert before == pytest.approx(2.975, abs=0.01)
    assert after - before > 0.9
    counts = np.bincount(y[sel], minlength=20)
    assert counts.max() <= 78  # the cap: no concept above ~1000/13 while small ones are kept whole
    np.testing.assert_array_equal(counts[-6:], SIZES[-6:])
    assert np.array_equal(sel, hierarchical_sample(h, 1000, strategy=strategy, seed=0))


def test_closest_takes_points_nearest_the_leaf_centroid(tree) -> None:
    _, _, h = tree
    sel = hierarchical_sample(h, 600, strategy="closest", seed=0)
    leaf = h.levels[0].labels
    for c in np.unique(leaf[sel])[:10]:
        members = np.flatnonzero(leaf == c)
        taken = np.intersect1d(members, sel)
        assert h.sqdist[taken].max() <= h.sqdist[np.setdiff1d(members, taken)].min(initial=np.inf)


def test_target_above_pool_takes_everything(tree) -> None:
    x, _, h = tree
    assert len(hierarchical_sample(h, 10**9)) == len(x)


def test_from_config_with_splits_float32_and_table() -> None:
    x, y = _concepts(1)
    cfg = BalancedConfig(clusters=[10, 4], splits=[3, 1], resampling_steps=[0, 2], sample_sizes=[1, 2], niter=10, float64=False, resample_strategy="random")
    h = hierarchy_from_config(x, cfg)
    assert 10 < len(h.levels[0].centroids) <= 30  # 10 clusters split in (at most) 3
    sel = hierarchical_sample(h, 200, seed=1)
    table = balanced_table([f"i{i}" for i in range(len(x))], x, h, sel)
    assert table.num_rows == 200 and set(table.column("mode").to_pylist()) == {"balanced"}
    assert table.column("seed_dataset").null_count == 200
    leaf = h.levels[0].labels[sel]
    cent = h.levels[0].centroids[leaf]
    cosine = np.sum(x[sel] * cent, axis=1) / np.linalg.norm(cent, axis=1)  # x is unit-norm
    np.testing.assert_allclose(table.column("similarity").to_numpy(), cosine, rtol=1e-5)
    np.testing.assert_array_equal(table.column("cluster").to_numpy(), leaf)
    assert json.loads(table.column("provenance")[0].as_py())[0]["mode"] == "balanced"


def test_level_with_more_clusters_than_items_is_clamped() -> None:
    x, _ = _concepts(2)
    with pytest.warns(RuntimeWarning, match="using K=5"):
        h = hierarchical_kmeans(x[:400], [5, 8], niter=5, seed=0)
    assert len(h.levels[1].centroids) == 5
