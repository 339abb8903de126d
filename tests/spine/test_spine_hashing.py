"""Perceptual hashes and Hamming search: stable, exact, linear."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from curation.config import HashConfig
from curation.dedup.hamming import hamming_pairs, popcount64
from curation.dedup.hashing import PCAHasher, compute_hashes, thumbnails
from curation.sources.images import encode
from curation.demo.procedural import FAMILIES

CFG = HashConfig()


def _images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    fams = list(FAMILIES.values())
    from curation.config import DecodeConfig

    return [encode(fams[i % len(fams)](rng, 128), DecodeConfig()) for i in range(n)]


def test_pca_hash_is_stable_across_fits_and_files(tmp_path) -> None:
    imgs = _images(200)
    thumbs = thumbnails(imgs, 32)
    a = PCAHasher.fit(thumbs, 64, 32)
    b = PCAHasher.fit(thumbs, 64, 32)
    h1, valid = compute_hashes(imgs, CFG, a)
    h2, _ = compute_hashes(imgs, CFG, b)
    assert valid.all() and np.array_equal(h1, h2)
    a.save(tmp_path / "pca.npz")
    h3, _ = compute_hashes(imgs, CFG, PCAHasher.load(tmp_path / "pca.npz"))
    assert np.array_equal(h1, h3)
    # Balanced bits: each bit is set for about half of the fitting sample.
    bits = np.unpackbits(h1.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) <= 0.06)


def test_pca_hash_bits_do_not_depend_on_the_shard_split() -> None:
    """Each row is projected on its own (`curation.core.determinism.row_dots`): a shard of any size,
    on any number of BLAS threads, gives a row the bits the whole batch gives it, even a row
    whose projection is exactly a median of the fit (where a BLAS product's last bit decides)."""
    from threadpoolctl import threadpool_limits

    thumbs = thumbnails(_images(120, seed=2), 32)
    hasher = PCAHasher.fit(thumbs[:99], 64, 32)  # an odd sample: each median is one row's projection
    whole = hasher.hash_thumbnails(thumbs)
    for limit in (1, 2):
        with threadpool_limits(limits=limit, user_api="blas"):
            parts = [hasher.hash_thumbnails(thumbs[lo:hi]) for lo, hi in ((0, 1), (1, 40), (40, 99), (99, 120))]
        assert np.array_equal(np.concatenate(parts), whole)


def test_pca_hash_is_the_same_in_another_process(tmp_path) -> None:
    imgs = _images(60, seed=1)
    hasher = PCAHasher.fit(thumbnails(imgs, 32), 64, 32)
    hasher.save(tmp_path / "pca.npz")
    np.save(tmp_path / "imgs.npy", np.array(imgs, dtype=object), allow_pickle=True)
    here, _ = compute_hashes(imgs, CFG, hasher)
    code = (
        "import numpy as np, sys; from curation.config import HashConfig; from curation.dedup.hashing import PCAHasher, compute_hashes;"
        f"imgs=list(np.load(r'{tmp_path}/imgs.npy', allow_pickle=True));"
        f"h,_=compute_hashes(imgs, HashConfig(), PCAHasher.load(r'{tmp_path}/pca.npz')); print(','.join(map(str,h)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert [int(x) for x in out.split(",")] == [int(x) for x in here]


def test_phash_method_matches_imagehash() -> None:
    import io

    import imagehash
    from PIL import Image

    imgs = _images(5)
    hashes, _ = compute_hashes(imgs, HashConfig(method="phash"), None)
    for data, h in zip(imgs, hashes):
        assert int(h) == int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def test_flat_images_have_no_valid_hash() -> None:
    from PIL import Image

    from curation.config import DecodeConfig

    flat = encode(Image.new("RGB", (100, 100), (120, 120, 120)), DecodeConfig())
    _, valid = compute_hashes([flat, *_images(3)], CFG, PCAHasher.fit(thumbnails(_images(20), 32), 64, 32))
    assert valid.tolist() == [False, True, True, True]


@pytest.mark.parametrize("radius", [0, 3, 5, 7, 8, 11])
def test_multi_index_hashing_equals_brute_force(radius: int) -> None:
    rng = np.random.default_rng(radius)
    base = rng.integers(0, 2**63, size=1500, dtype=np.uint64)
    near = base[:400].copy()
    for _ in range(int(rng.integers(1, 10))):
        near ^= np.uint64(1) << rng.integers(0, 64, 400).astype(np.uint64)
    h = np.concatenate([base, near, base[:20]])  # identical hashes too
    src, dst = hamming_pairs(h, radius, method="mih")
    i, j = np.triu_indices(len(h), 1)
    truth = popcount64(h[i] ^ h[j]) <= radius
    assert np.array_equal(src, i[truth]) and np.array_equal(dst, j[truth])
    fsrc, fdst = hamming_pairs(h, radius, method="flat")
    assert np.array_equal(src, fsrc) and np.array_equal(dst, fdst)


def test_hamming_search_batches_do_not_change_the_answer() -> None:
    rng = np.random.default_rng(7)
    h = np.concatenate([rng.integers(0, 2**63, 3000, dtype=np.uint64)] * 2)
    a = hamming_pairs(h, 6)
    b = hamming_pairs(h, 6, batch=997)
    assert len(a[0]) >= 3000 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_hamming_search_pieces_union_to_the_whole(parts: int) -> None:
    """Engines run the search as independent pieces: their union is the one-piece answer, and no
    piece repeats another's work (each candidate key belongs to exactly one piece)."""
    rng = np.random.default_rng(parts)
    base = rng.integers(0, 2**63, size=2000, dtype=np.uint64)
    near = base[:600] ^ (np.uint64(1) << rng.integers(0, 64, 600).astype(np.uint64))
    h = np.concatenate([base, near, base[:30]])
    whole = hamming_pairs(h, 8)
    pieces = [hamming_pairs(h, 8, part=p, parts=parts) for p in range(parts)]
    codes = np.unique(np.concatenate([s * len(h) + d for s, d in pieces]))
    assert np.array_equal(codes, whole[0] * len(h) + whole[1])
    assert all(len(s) < len(whole[0]) for s, _ in pieces)  # the work is split, not repeated
    with pytest.raises(ValueError):
        hamming_pairs(h, 8, part=parts, parts=parts)
    with pytest.raises(ValueError):
        hamming_pairs(h, 8, method="flat", part=0, parts=parts)


def test_dense_buckets_are_cut_into_batches_and_sorted_chunks_can_be_shared() -> None:
    """Buckets far larger than a batch (a pool of near-identical images shares its chunk keys):
    their grids are cut by rows and still give every pair once; chunk sorts computed once and
    passed to each piece (as a stage does) change nothing."""
    from curation.dedup.hamming import CHUNKS, sort_chunk

    rng = np.random.default_rng(11)
    core = rng.integers(0, 2**63, dtype=np.uint64)
    dense = core ^ (np.uint64(1) << rng.integers(48, 64, 400).astype(np.uint64))  # 400 hashes, 3 keys shared
    h = np.concatenate([dense, rng.integers(0, 2**63, 500, dtype=np.uint64)])
    i, j = np.triu_indices(len(h), 1)
    truth = popcount64(h[i] ^ h[j]) <= 4
    src, dst = hamming_pairs(h, 4, batch=50)
    assert np.array_equal(src, i[truth]) and np.array_equal(dst, j[truth]) and len(src) > 400 * 399 // 4
    chunks = [sort_chunk(h, c) for c in range(CHUNKS)]
    pieces = [hamming_pairs(h, 4, batch=50, part=p, parts=3, sorted_chunks=chunks) for p in range(3)]
    codes = np.unique(np.concatenate([s * len(h) + d for s, d in pieces]))
    assert np.array_equal(codes, src * len(h) + dst)
