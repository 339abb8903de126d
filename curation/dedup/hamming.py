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
pairs is the whole answer. Each chunk's keys are sorted once (`sort_chunk`) and shared by the
pieces, which then do their own buckets' work plus 2^16 binary searches of the sorted keys to size
the buckets (no pass over all n keys). FAISS's flat binary index gives the brute-force reference
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


def sort_chunk(h: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows in chunk-key order (stable), the sorted 16-bit keys) of chunk `c` of the hashes: what
    every piece of a search needs, computed once (a stage saves them for its pieces to map)."""
    keys = ((np.asarray(h, dtype=np.uint64) >> np.uint64(c * CHUNK_BITS)) & np.uint64((1 << CHUNK_BITS) - 1)).astype(np.uint16)
    order = np.argsort(keys, kind="stable")
    return order.astype(np.uint32 if len(h) < 2**32 else np.int64), keys[order]


def _buckets(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, first sorted position, size) of every bucket of equal keys, in key order: a binary
    search for each of the 2^16 possible keys (about 2M reads of a memory-mapped array of 1B keys,
    where counting them would read all of it in every piece)."""
    probe = np.arange(1 << CHUNK_BITS, dtype=np.int64)
    if sorted_keys.dtype == np.uint16:  # search in the keys' own dtype: no converted copy of them
        probe = probe.astype(np.uint16)
    bounds = np.append(np.searchsorted(sorted_keys, probe), len(sorted_keys)).astype(np.int64)
    counts = np.diff(bounds)
    keys = np.flatnonzero(counts)
    return keys.astype(np.uint64), bounds[keys], counts[keys]


def _bucket_pairs(order: np.ndarray, start: np.ndarray, counts: np.ndarray, batch: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Row pairs inside each given bucket, in batches: the buckets' sorted positions laid end to
    end, and for each offset d the positions d apart that are still in one bucket (cheap vector
    passes over these buckets' rows only, never over all n)."""
    if not len(counts):
        return
    pos = np.repeat(start - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    label = np.repeat(np.arange(len(counts)), counts)
    for d in range(1, int(counts.max())):
        left = np.flatnonzero(label[:-d] == label[d:])
        for s in range(0, len(left), batch):
            p = left[s:s + batch]
            yield np.asarray(order[pos[p]], np.int64), np.asarray(order[pos[p + d]], np.int64)


def _grid_pairs(order: np.ndarray, a_start: np.ndarray, a_count: np.ndarray, b_start: np.ndarray,
                b_count: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Row pairs of every (bucket a, bucket b) grid, in batches of about `batch` pairs: small grids
    vectorised together, a large one cut by rows."""
    sizes = a_count * b_count
    small = np.flatnonzero(sizes <= batch)
    if len(small):
        step = max(1, batch // int(sizes[small].max()))
        for lo in range(0, len(small), step):
            g = small[lo:lo + step]
            total = sizes[g]
            pid = np.repeat(np.arange(len(g)), total)
            within = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
            x, y = within // b_count[g][pid], within % b_count[g][pid]
            yield np.asarray(order[a_start[g][pid] + x], np.int64), np.asarray(order[b_start[g][pid] + y], np.int64)
    for k in np.flatnonzero(sizes > batch):
        ca, cb = int(a_count[k]), int(b_count[k])
        rows = max(1, batch // cb)
        for x0 in range(0, ca, rows):
            x = np.repeat(np.arange(x0, min(x0 + rows, ca)), cb)
            y = np.tile(np.arange(cb), len(x) // cb)
            yield np.asarray(order[a_start[k] + x], np.int64), np.asarray(order[b_start[k] + y], np.int64)


def _candidates(order: np.ndarray, sorted_keys: np.ndarray, masks: list[int], batch: int, part: int = 0,
                parts: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Row pairs whose chunk keys are equal or differ by one of `masks`, in bounded batches; only
    the pairs whose (smaller) key belongs to piece `part` of `parts`. Work is that of the piece's
    own buckets (plus 2^16 binary searches to size them), whatever the number of pieces."""
    uniq, start, counts = _buckets(sorted_keys)
    owned = key_part(uniq, parts) == part if parts > 1 else np.ones(len(uniq), dtype=bool)
    same = np.flatnonzero(owned & (counts > 1))
    yield from _bucket_pairs(order, start[same], counts[same], batch)
    for mask in masks:  # buckets `mask` apart, counted once (key < partner)
        partner = uniq ^ np.uint64(mask)
        pos = np.minimum(np.searchsorted(uniq, partner), len(uniq) - 1)
        hit = (partner > uniq) & (uniq[pos] == partner) & owned
        a, b = np.flatnonzero(hit), pos[hit]
        if len(a):
            yield from _grid_pairs(order, start[a], counts[a], start[b], counts[b], batch)


def _mih_pairs(h: np.ndarray, radius: int, batch: int, part: int, parts: int,
               sorted_chunks: list[tuple[np.ndarray, np.ndarray]] | None) -> tuple[np.ndarray, np.ndarray]:
    flips = max(0, -(-(radius + 1) // CHUNKS) - 1)
    masks = _flip_masks(flips)
    found: list[np.ndarray] = []
    n = np.int64(len(h))
    for c in range(CHUNKS):
        order, sorted_keys = sorted_chunks[c] if sorted_chunks is not None else sort_chunk(h, c)
        for i, j in _candidates(order, sorted_keys, masks, batch, part, parts):
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
                  part: int = 0, parts: int = 1, sorted_chunks: list[tuple[np.ndarray, np.ndarray]] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index pairs (i < j) with popcount(h[i] ^ h[j]) <= radius.

    `method`: "mih" (multi-index hashing, linear memory) or "flat" (FAISS brute force).
    `part` of `parts` (mih only): one independent piece of the search; the union of the pieces'
    pairs (they may overlap across chunks) is the answer of `parts=1`. `sorted_chunks`: the
    `sort_chunk` of each chunk, computed once for all pieces (may be memory-mapped).
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
    return _mih_pairs(h, radius, batch, part, parts, sorted_chunks)
