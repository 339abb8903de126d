"""All pairs of 64-bit hashes within a Hamming radius, without an O(n^2) matrix.

Multi-index hashing (Norouzi et al. 2012): split the 64 bits into 4 chunks of 16; by the
pigeonhole principle two hashes within radius r agree on some chunk up to f = ceil((r+1)/4) - 1
flipped bits. Candidates are the pairs that share a chunk key (or keys `f` flips apart); they are
verified exactly with popcount. Everything is vectorised numpy over sorted keys, in bounded
batches. Work grows with the number of candidates: linear in n while buckets stay small, but with
16-bit chunk keys a bucket holds n / 65,536 hashes, so past a few million hashes the candidates grow
as n^2 (measured n^1.85 from 100k to 1M, bench/bench_hashdedup.py). That work splits exactly into
`parts` independent pieces (`part` of `parts`): each piece owns the chunk keys that hash to it and
generates only their candidates, so engines run the pieces as parallel tasks and the union of their
pairs is the whole answer. FAISS's flat binary index gives the brute-force reference
(`method="flat"`), used in tests and small sets.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterator

import numpy as np

CHUNKS = 4
CHUNK_BITS = 64 // CHUNKS
#: Hashes per independent piece of the search when the number of pieces is automatic.
HASHES_PER_PART = 1_000_000


def auto_parts(n: int, per_part: int = HASHES_PER_PART) -> int:
    """Pieces for a search over n hashes: one per `per_part` hashes (at least one)."""
    return max(1, -(-n // per_part))


def popcount64(x: np.ndarray) -> np.ndarray:
    """Bit count of each uint64."""
    return np.bitwise_count(np.asarray(x, dtype=np.uint64))


def _flip_masks(flips: int) -> list[int]:
    return [sum(1 << b for b in bits) for f in range(1, flips + 1) for bits in combinations(range(CHUNK_BITS), f)]


def key_part(keys: np.ndarray, parts: int) -> np.ndarray:
    """The piece (0 .. parts-1) that owns each chunk key: a multiplicative hash, so that neighbouring
    keys (and the dense buckets of similar images) spread over all pieces."""
    mixed = (np.asarray(keys, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (mixed % np.uint64(parts)).astype(np.int64)


def _candidates(keys: np.ndarray, masks: list[int], batch: int, part: int = 0, parts: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs whose chunk keys are equal or differ by one of `masks`, in bounded batches; only
    the pairs whose (smaller) key belongs to piece `part` of `parts`."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    uniq, start, counts = np.unique(sorted_keys, return_index=True, return_counts=True)
    owned = key_part(uniq, parts) == part if parts > 1 else np.ones(len(uniq), dtype=bool)
    owned_rows = np.repeat(owned, counts)  # per sorted row: does its key belong to this piece?
    # Same key: pairs (i, i+o) inside each run of equal keys.
    for offset in range(1, int(counts.max(initial=1))):
        left = np.flatnonzero((sorted_keys[:-offset] == sorted_keys[offset:]) & owned_rows[:-offset])
        for s in range(0, len(left), batch):
            part = left[s : s + batch]
            yield order[part], order[part + offset]
    # Keys `mask` apart: the cartesian product of the two buckets, counted once (key < partner).
    for mask in masks:
        partner = uniq ^ np.uint64(mask)
        pos = np.searchsorted(uniq, partner)
        pos_c = np.minimum(pos, len(uniq) - 1)
        hit = (partner > uniq) & (uniq[pos_c] == partner) & owned
        a, b = np.flatnonzero(hit), pos_c[hit]
        if len(a) == 0:
            continue
        gb = counts[b]
        sizes = counts[a] * gb
        step = max(1, batch // int(sizes.max()))
        for lo in range(0, len(a), step):
            sl = slice(lo, lo + step)
            total = sizes[sl]
            pid = np.repeat(np.arange(len(total)), total)
            within = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
            ia = start[a[sl]][pid] + within // gb[sl][pid]
            ib = start[b[sl]][pid] + within % gb[sl][pid]
            yield order[ia], order[ib]


def _mih_pairs(h: np.ndarray, radius: int, batch: int, part: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    flips = max(0, -(-(radius + 1) // CHUNKS) - 1)
    masks = _flip_masks(flips)
    found: list[np.ndarray] = []
    n = np.int64(len(h))
    for c in range(CHUNKS):
        keys = (h >> np.uint64(c * CHUNK_BITS)) & np.uint64((1 << CHUNK_BITS) - 1)
        for i, j in _candidates(keys, masks, batch, part, parts):
            ok = popcount64(h[i] ^ h[j]) <= radius
            lo, hi = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
            found.append(lo.astype(np.int64) * n + hi)
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    codes = np.unique(np.concatenate(found))
    return codes // n, codes % n


def _flat_pairs(h: np.ndarray, radius: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    codes = np.ascontiguousarray(h.astype(">u8").view(np.uint8).reshape(-1, 8))
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    srcs, dsts = [], []
    for s in range(0, len(codes), batch):
        lims, _, labels = index.range_search(codes[s : s + batch], radius + 1)  # FAISS: strict <
        q = np.repeat(np.arange(s, s + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        keep = q < labels
        srcs.append(q[keep])
        dsts.append(labels[keep].astype(np.int64))
    return np.concatenate(srcs), np.concatenate(dsts)


def hamming_pairs(hashes: np.ndarray, radius: int, method: str = "mih", batch: int = 4_000_000,
                  part: int = 0, parts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index pairs (i < j) with popcount(h[i] ^ h[j]) <= radius.

    `method`: "mih" (multi-index hashing, linear memory) or "flat" (FAISS brute force).
    `part` of `parts` (mih only): one independent piece of the search; the union of the pieces'
    pairs (they may overlap across chunks) is the answer of `parts=1`.
    """
    if parts < 1 or not 0 <= part < parts:
        raise ValueError(f"part must be in [0, parts), got part={part}, parts={parts}")
    if parts > 1 and method != "mih":
        raise ValueError("only the mih method splits into parts")
    h = np.asarray(hashes, dtype=np.uint64)
    if len(h) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if method == "flat":
        src, dst = _flat_pairs(h, radius, min(batch, 65_536))
        order = np.lexsort((dst, src))
        return src[order], dst[order]
    if method != "mih":
        raise ValueError(f"unknown Hamming search method {method!r}")
    return _mih_pairs(h, radius, batch, part, parts)
