"""Hamming search in pieces (`hash_edges` engine tasks): does the work split, or repeat?

    python -m bench.bench_hamming_pieces --out bench/scratch/hamming_pieces.json [--hashes 2000000]

Hashes: half random 63-bit values, half one-bit flips of them (radius 3 finds them); and a dense
variant with 11 random bits per 16-bit chunk (buckets of n / 2048 hashes, as a pool of ~30M has
with full entropy: the regime where per-piece passes over all n used to dominate). For each,
the one-piece search, then every piece of `parts` in turn on the chunk sorts computed once, as
the stage's tasks do. The number to read is `split_overhead`: (sum of the pieces' seconds) /
(one piece's seconds); 1.0 means the work splits exactly, `parts` would mean each piece redoes it.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.common import parser, write_result


def _hashes(n: int, dense: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, n, dtype=np.uint64)
    if dense:
        return h & np.uint64(0x07FF07FF07FF07FF)
    h[n // 2:] = h[: n - n // 2] ^ (np.uint64(1) << rng.integers(0, 64, n - n // 2).astype(np.uint64))
    return h


def measure(h: np.ndarray, radius: int, parts: list[int]) -> dict[str, Any]:
    from curation.dedup.hamming import CHUNKS, hamming_pairs, sort_chunk

    start = time.perf_counter()
    chunks = [sort_chunk(h, c) for c in range(CHUNKS)]
    sort_s = time.perf_counter() - start
    start = time.perf_counter()
    whole = hamming_pairs(h, radius, sorted_chunks=chunks)
    one_s = time.perf_counter() - start
    out: dict[str, Any] = {"radius": radius, "pairs": int(len(whole[0])), "sort_once_s": round(sort_s, 3),
                           "one_piece_s": round(one_s, 3)}
    for p in parts:
        times, codes = [], []
        for part in range(p):
            start = time.perf_counter()
            s, d = hamming_pairs(h, radius, part=part, parts=p, sorted_chunks=chunks)
            times.append(time.perf_counter() - start)
            codes.append(s * len(h) + d)
        assert np.array_equal(np.unique(np.concatenate(codes)), whole[0] * len(h) + whole[1])
        out[f"parts_{p}"] = {"sum_s": round(sum(times), 3), "max_piece_s": round(max(times), 3),
                             "split_overhead": round(sum(times) / max(one_s, 1e-9), 2)}
    return out


def main() -> None:
    p = parser("hamming_pieces", __doc__)
    p.add_argument("--hashes", type=int, default=2_000_000)
    p.add_argument("--parts", default="8,64")
    args = p.parse_args()
    parts = [int(x) for x in args.parts.split(",")]
    write_result(args.out, {"hashes": args.hashes,
                            "flips": measure(_hashes(args.hashes, dense=False), 3, parts),
                            "dense_buckets": measure(_hashes(args.hashes // 2, dense=True), 0, parts)})


if __name__ == "__main__":
    main()
