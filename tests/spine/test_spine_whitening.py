"""PCA whitening: deterministic, unit-norm output, and it separates instances from their kind."""
from __future__ import annotations

import numpy as np

from curation.dedup import whitening
from curation.dedup.whitening import Whitening


def test_whitening_is_deterministic_and_normalised(tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    a, b = Whitening.fit(x, 32, 1e-4), Whitening.fit(x, 32, 1e-4)
    assert np.array_equal(a.projection, b.projection)
    y = a.apply(x)
    assert y.shape == (2000, 32) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    a.save(tmp_path / "w.npz")
    assert np.array_equal(Whitening.load(tmp_path / "w.npz").apply(x), y)


def test_whitening_bytes_do_not_depend_on_threads_or_splits(monkeypatch) -> None:
    """A BLAS product rounds a row by the call's shape and thread count: fit and apply take their
    products over fixed blocks aligned to row 0, each on one BLAS thread, so the process's thread
    settings change nothing and a block-aligned slice gives the whole matrix's bytes."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr(whitening, "BLOCK", 256)  # products big enough for OpenBLAS to use 2 threads
    monkeypatch.setattr(whitening, "FIT_CHUNK", 512)
    x = np.random.default_rng(2).standard_normal((2000, 128)).astype(np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        w1 = Whitening.fit(x, 64, 1e-4)
        y1 = w1.apply(x)
    with threadpool_limits(limits=2, user_api="blas"):
        w2 = Whitening.fit(x, 64, 1e-4)
        y2 = w2.apply(x)
    assert np.array_equal(w1.projection, w2.projection) and np.array_equal(w1.mean, w2.mean)
    assert np.array_equal(y1, y2)
    assert np.array_equal(w1.apply(x[512:1280]), y1[512:1280])  # three whole blocks, same bytes


def test_whitening_separates_instances_sharing_a_dominant_direction() -> None:
    rng = np.random.default_rng(1)
    kind = rng.standard_normal(128)
    # Distinct images of one kind: a strong shared direction plus small instance detail.
    instances = 10 * kind + rng.standard_normal((500, 128))
    copies = instances + 0.3 * rng.standard_normal((500, 128))

    def cos(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)

    raw_gap = cos(instances, copies).mean() - cos(instances, np.roll(instances, 1, axis=0)).mean()
    w = Whitening.fit(np.vstack([instances, copies]), 64, 1e-4)
    wi, wc = w.apply(instances), w.apply(copies)
    white_gap = (wi * wc).sum(1).mean() - (wi * np.roll(wi, 1, axis=0)).sum(1).mean()
    assert raw_gap < 0.05 and white_gap > 0.5
