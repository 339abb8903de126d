"""Perceptual hashes for near-duplicate detection (paper §3 step 2: PCA-hash dedup).

The PCA hash projects a normalised 32x32 grayscale thumbnail onto the top-64 principal
components of a sample of the pool and keeps one bit per component (projection above the
component's median, so bits are balanced). The fitted PCA (mean, components, medians) is saved in
the run, so hashes are reproducible and new images can be hashed against the same basis.
imagehash's DCT pHash is the alternative method.

Per-item isolation (issue 14): an image whose thumbnail or pHash cannot be computed (Pillow
raises on its bytes) gets an all-zero thumbnail and `valid = False`, as a flat image does: it
takes part in exact (image_id) dedup only, and the stage goes on. The hash stage rejects no image,
so it writes no reject row: bytes this broken fail the embed stage too, which rejects the image
(stage `embed`), and an image without an embedding is never retrieved. `hash_images` returns the
failures ({row: "Type: message"}) for callers that count them.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from curation.config import HashConfig
from curation.core.determinism import row_dots
from curation.core.item_guard import item_error

log = logging.getLogger(__name__)


#: Thumbnails with less grey-level spread than this carry no structure: their hash is noise, so
#: they take part in exact (image_id) dedup only.
FLAT_STD = 4.0


def thumbnail_vector(data: bytes, side: int) -> np.ndarray:
    """Zero-mean, unit-variance grayscale thumbnail: invariant to brightness and contrast shifts.

    A flat thumbnail (std < FLAT_STD) comes back all zeros.
    """
    img = Image.open(io.BytesIO(data))
    img.draft("L", (side * 2, side * 2))  # JPEG DCT-domain downscale: much faster, same result at 32 px
    img = img.convert("L").resize((side, side), Image.Resampling.BOX)
    x = np.asarray(img, dtype=np.float32).ravel()
    x -= x.mean()
    std = x.std()
    return x / std if std >= FLAT_STD else np.zeros_like(x)


def thumbnails_checked(images: list[bytes], side: int) -> tuple[np.ndarray, dict[int, str]]:
    """(thumbnail vectors, {row: error} of the images Pillow could not thumbnail: all-zero rows)."""
    out = np.zeros((len(images), side * side), dtype=np.float32)
    failed: dict[int, str] = {}
    for i, data in enumerate(images):
        try:
            vector = thumbnail_vector(data, side)
        except Exception as exc:  # item boundary: Pillow on one image's bytes
            failed[i] = item_error(exc)
            continue
        out[i] = vector
    return out, failed


def thumbnails(images: list[bytes], side: int) -> np.ndarray:
    """Thumbnail vectors (`thumbnail_vector`); an image that cannot be read gives an all-zero row."""
    thumbs, failed = thumbnails_checked(images, side)
    _warn(failed, len(images))
    return thumbs


def _warn(failed: dict[int, str], total: int) -> None:
    if failed:
        first = min(failed)
        log.warning("%d of %d images could not be hashed (hash marked invalid), e.g. row %d: %s",
                    len(failed), total, first, failed[first])


@dataclass
class PCAHasher:
    """A fitted PCA hash: `bits` components of thumbnails of side `side`."""

    mean: np.ndarray  # [side*side]
    components: np.ndarray  # [bits, side*side]
    medians: np.ndarray  # [bits]
    side: int

    @classmethod
    def fit(cls, thumbs: np.ndarray, bits: int, side: int) -> "PCAHasher":
        if thumbs.shape[0] < 2:
            raise ValueError("need at least 2 thumbnails to fit the PCA hash")
        mean = thumbs.mean(axis=0)
        centred = (thumbs - mean).astype(np.float64)
        # Right singular vectors = principal axes; SVD of the sample is exact and deterministic.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        comps = vt[:bits]
        if comps.shape[0] < bits:  # tiny samples: pad with fixed random directions
            rng = np.random.default_rng(0)
            extra = rng.standard_normal((bits - comps.shape[0], thumbs.shape[1]))
            comps = np.vstack([comps, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
        # Sign convention: the largest-magnitude coefficient of each axis is positive, so a refit
        # on the same sample gives the same bits whatever LAPACK does.
        signs = np.sign(comps[np.arange(bits), np.abs(comps).argmax(axis=1)])
        comps = (comps * signs[:, None]).astype(np.float32)
        proj = row_dots(thumbs - mean, comps)  # per row: a bit never depends on the batch
        return cls(mean.astype(np.float32), comps, np.median(proj, axis=0).astype(np.float32), side)

    def hash_thumbnails(self, thumbs: np.ndarray) -> np.ndarray:
        proj = row_dots(thumbs - self.mean, self.components)  # as in `fit`, whatever the shard
        return pack_bits(proj > self.medians)

    def save(self, path: str | Path) -> None:
        from curation.core.storage import save_npz

        save_npz(path, mean=self.mean, components=self.components, medians=self.medians, side=np.int64(self.side))

    @classmethod
    def load(cls, path: str | Path) -> "PCAHasher":
        from curation.core.storage import load_npz

        z = load_npz(path)
        return cls(z["mean"], z["components"], z["medians"], int(z["side"]))


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """[n, 64] booleans -> [n] uint64, first column in the most significant bit."""
    n, b = bits.shape
    if b != 64:
        raise ValueError("only 64-bit hashes are supported")
    packed = np.packbits(bits.astype(np.uint8), axis=1)  # [n, 8] big-endian bytes
    return packed.view(">u8").ravel().astype(np.uint64)


def phash(data: bytes) -> int:
    """imagehash's 64-bit DCT perceptual hash, as an unsigned integer."""
    import imagehash

    h = imagehash.phash(Image.open(io.BytesIO(data)), hash_size=8)
    return int(pack_bits(h.hash.reshape(1, 64))[0])


def fit_sample_indices(ids: list[str], sample: int, seed: int) -> np.ndarray:
    """Which rows train the PCA: a seeded choice, independent of row order (sorted by id)."""
    order = np.argsort(np.asarray(ids), kind="stable")
    if len(ids) <= sample:
        return order
    rng = np.random.default_rng(seed)
    return np.sort(order[rng.choice(len(ids), size=sample, replace=False)])


def hash_images(images: list[bytes], cfg: HashConfig, hasher: PCAHasher | None
                ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Hash a batch with the configured method -> (hashes, valid, {row: error}): flat images and
    images that could not be read are not valid (their hash means nothing)."""
    if cfg.method != "phash" and hasher is None:
        raise ValueError("PCA hashing needs a fitted PCAHasher")
    thumbs, failed = thumbnails_checked(images, cfg.thumb_side)
    valid = np.abs(thumbs).sum(axis=1) > 0
    if cfg.method == "phash":
        hashes = np.zeros(len(images), dtype=np.uint64)
        for i, data in enumerate(images):
            if i in failed:
                continue
            try:
                hashes[i] = phash(data)
            except Exception as exc:  # item boundary: imagehash / Pillow on one image
                failed[i] = item_error(exc)
                valid[i] = False
        return hashes, valid, failed
    return hasher.hash_thumbnails(thumbs), valid, failed


def compute_hashes(images: list[bytes], cfg: HashConfig, hasher: PCAHasher | None) -> tuple[np.ndarray, np.ndarray]:
    """Hash a batch with the configured method -> (hashes, valid); flat images and images that
    could not be read are not valid (a warning counts the latter)."""
    hashes, valid, failed = hash_images(images, cfg, hasher)
    _warn(failed, len(images))
    return hashes, valid
