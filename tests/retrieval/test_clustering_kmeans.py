"""FAISS k-means: recovers well-separated clusters, clamps K, samples and assigns deterministically."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from curation.retrieval.clustering import assign, clamp_k, cluster_pool, gpu_count, inertia, initial_centroids, kmeanspp, train_kmeans, training_sample


def _blobs(seed: int, k: int = 8, per: int = 200, d: int = 32, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), per)
    x = centres[y] + noise * rng.standard_normal((k * per, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), y  # the pipeline stores float16 embeddings


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_well_separated_clusters(seed: int) -> None:
    x, y = _blobs(seed)
    centroids = train_kmeans(x, 8, niter=20, seed=seed)
    assert centroids.shape == (8, 32) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-4)  # spherical
    labels, sims = assign(x, centroids, batch_size=333)
    assert labels.dtype == np.int64 and sims.dtype == np.float32
    assert adjusted_rand_score(y, labels) == 1.0
    assert sims.min() > 0.9  # every point is close to its (unit) centroid


def test_random_seeding_is_what_kmeanspp_fixes() -> None:
    # Why 'auto' uses greedy k-means++ at small K: random seeds merge clusters on this very data.
    x, y = _blobs(0)
    rand = train_kmeans(x, 8, niter=20, seed=0, init="random")
    assert adjusted_rand_score(y, assign(x, rand)[0]) < 0.95
    seeds = kmeanspp(x, 8, seed=0)
    assert adjusted_rand_score(y, assign(x, seeds)[0]) == 1.0


def test_k_larger_than_points_is_clamped_with_a_warning() -> None:
    x, _ = _blobs(0, k=2, per=3)
    with pytest.warns(RuntimeWarning, match="K=50 is larger than the 6 points; using K=6"):
        centroids = train_kmeans(x, 50, niter=5, seed=0)
    assert centroids.shape == (6, 32)
    assert clamp_k(4, 10) == 4
    with pytest.raises(ValueError):
        clamp_k(0, 10)


def test_training_sample_is_seeded_and_used() -> None:
    assert training_sample(100, None, 0) is None and training_sample(100, 500, 0) is None
    a, b = training_sample(1000, 50, 7), training_sample(1000, 50, 7)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    x, _ = _blobs(1)
    c1 = train_kmeans(x, 8, niter=10, seed=5, sample=400)
    c2 = train_kmeans(x, 8, niter=10, seed=5, sample=400)
    np.testing.assert_array_equal(c1, c2)  # deterministic for a seed
    c3 = train_kmeans(x, 8, niter=10, seed=6, sample=400)
    assert not np.array_equal(c1, c3)


def test_assign_l2_and_inertia() -> None:
    x = np.array([[0, 0], [1, 0], [10, 0], [10, 2]], dtype=np.float32)
    centroids = np.array([[0.5, 0], [10, 1]], dtype=np.float32)
    labels, sq = assign(x, centroids, batch_size=1, metric="l2")
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_allclose(sq, [0.25, 0.25, 1, 1])
    assert inertia(x, centroids) == pytest.approx(2.5)
    empty_labels, _ = assign(x[:0], centroids)
    assert empty_labels.shape == (0,)


def test_initial_centroids_random_above_budget() -> None:
    x, _ = _blobs(0, k=4, per=10)
    c = initial_centroids(x, 5, seed=0, init="random")
    # Random init picks distinct data points.
    assert len({tuple(r) for r in c}) == 5
    assert all(any(np.array_equal(r, p) for p in x.astype(np.float32)) for r in c)


def test_no_gpu_here_means_cpu_path() -> None:
    assert gpu_count("never") == 0


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs faiss-gpu and a CUDA device")
def test_gpu_path_matches_cpu() -> None:
    x, y = _blobs(0)
    gpu = train_kmeans(x, 8, niter=20, seed=0, use_gpu="auto")
    cpu = train_kmeans(x, 8, niter=20, seed=0, use_gpu="never")
    gl, gs = assign(x, gpu, use_gpu="auto")
    cl, cs = assign(x, cpu, use_gpu="never")
    assert adjusted_rand_score(y, gl) == 1.0 and adjusted_rand_score(gl, cl) == 1.0
    np.testing.assert_allclose(gs, cs, atol=1e-3)


def test_cluster_pool_from_config() -> None:
    from curation.config import ClusterConfig

    x, y = _blobs(2)
    cfg = ClusterConfig(k=8, niter=15, train_sample=800, assign_batch=100, seed=1)
    centroids, labels, sims = cluster_pool(x, cfg)
    assert centroids.shape == (8, 32) and labels.shape == sims.shape == (1600,)
    assert adjusted_rand_score(y, labels) == 1.0  # trained on half the points, assigned on all
