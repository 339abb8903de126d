"""PCA whitening: deterministic, unit-norm output, and it separates instances from their kind."""
from __future__ import annotations

import numpy as np

from curation.whitening import Whitening


def test_whitening_is_deterministic_and_normalised(tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    a, b = Whitening.fit(x, 32, 1e-4), Whitening.fit(x, 32, 1e-4)
    assert np.array_equal(a.projection, b.projection)
    y = a.apply(x)
    assert y.shape == (2000, 32) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    a.save(tmp_path / "w.npz")
    assert np.array_equal(Whitening.load(tmp_path / "w.npz").apply(x), y)


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
