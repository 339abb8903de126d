"""PCA whitening of embeddings for copy detection.

A classifier's embedding is dominated by a few semantic directions: two different photos of the
same kind of thing sit closer than a photo and its cropped copy. Whitening (PCA fitted on a
sample of the pool, each component scaled to unit variance, re-normalised) spreads those
directions out so instance-level detail counts; copy-detection descriptors do the same.

The bytes do not depend on how the pool is split into files or which engine runs: every matrix
product here is taken over fixed blocks of rows aligned to row 0 of the whole matrix (`BLOCK`,
`FIT_CHUNK`), each on one BLAS thread (`curation.core.determinism`). Callers hand `apply` the whole
matrix in its final row order, never a file's rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.core.determinism import blockwise, one_blas_thread

#: Vectors the PCA is fitted on (a seeded sample of larger pools).
FIT_SAMPLE = 200_000
#: Rows of one projection product in `Whitening.apply`: fixed, aligned to the matrix's row 0.
BLOCK = 4_096
#: Rows of one covariance product in the fit: fixed, aligned to the sample's row 0.
FIT_CHUNK = 8_192


def fit_rows(n: int, sample: int = FIT_SAMPLE, seed: int = 0) -> np.ndarray | None:
    """Sorted rows of the seeded fitting sample of `n` vectors; None when all of them are used.
    (A stage reads just these rows of a pool that does not fit in memory.)"""
    if n <= sample:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def _eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eigenvalues, eigenvectors, mean) of the sample covariance of `x` (ddof 1), accumulated
    in float64 over fixed chunks of `FIT_CHUNK` rows summed in order: memory stays at a few chunks
    plus D x D each, where a float64 copy of a 200k x 1728 sample alone would be 2.6 GiB."""
    n, d = x.shape
    if n < 2:
        raise ValueError(f"whitening needs at least 2 vectors, got {n}")
    mean = np.zeros(d)
    for s in range(0, n, FIT_CHUNK):
        mean += np.asarray(x[s:s + FIT_CHUNK], np.float64).sum(axis=0)
    mean /= n

    def scatter(s: int) -> np.ndarray:
        c = np.asarray(x[s:s + FIT_CHUNK], np.float64) - mean
        return c.T @ c

    cov = np.zeros((d, d))
    for part in blockwise(scatter, n, FIT_CHUNK):
        cov += part
    with one_blas_thread():  # LAPACK's rounding depends on the thread count too
        values, vecs = np.linalg.eigh(cov / (n - 1))
    return values, vecs, mean


@dataclass
class Whitening:
    mean: np.ndarray  # [D]
    projection: np.ndarray  # [D, d]

    @classmethod
    def fit(cls, vectors: np.ndarray, dim: int, eps: float, sample: int = FIT_SAMPLE, seed: int = 0) -> "Whitening":
        rows = fit_rows(len(vectors), sample, seed)
        x = vectors if rows is None else vectors[rows]
        values, vecs, mean = _eigen(x)
        order = np.argsort(values)[::-1][: min(dim, x.shape[1])]
        # Fix each axis's sign so a refit on the same sample gives the same projection.
        vecs = vecs[:, order] * np.sign(vecs[np.abs(vecs[:, order]).argmax(axis=0), order])
        projection = vecs / np.sqrt(values[order] + eps)
        return cls(mean.astype(np.float32), projection.astype(np.float32))

    def apply(self, vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Whitened, L2-normalised float32 vectors (into `out` when given: a memmap the size of
        the pool). `vectors` is the whole matrix in its final row order (it may be a memmap): rows
        are projected in fixed blocks of `BLOCK` aligned to its row 0, so a row's bytes do not
        depend on how the pool was split into files."""
        if out is None:
            out = np.empty((len(vectors), self.projection.shape[1]), dtype=np.float32)

        def block(s: int) -> None:
            w = (np.asarray(vectors[s:s + BLOCK], np.float32) - self.mean) @ self.projection
            out[s:s + BLOCK] = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)

        for _ in blockwise(block, len(vectors), BLOCK):
            pass
        return out

    def save(self, path: str | Path) -> None:
        from curation.core.storage import save_npz

        save_npz(path, mean=self.mean, projection=self.projection)

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        from curation.core.storage import load_npz

        z = load_npz(path)
        return cls(z["mean"], z["projection"])
