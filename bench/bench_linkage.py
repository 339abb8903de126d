"""The components stage's linkage split (`curation.dedup.linkage.split_labels`) against plain
connected components of the same verified pairs, in the same process.

    python -m bench.bench_linkage [--groups 5000] [--size 12]

A seeded synthetic checked-pair graph shaped like the verify stage's output on the real-photo
benchmark: copy groups of `--size` images whose pairs are all checked (90 % verify), chained in
twos by one look-alike image that verifies against 40 % of the neighbouring group while every
other pair between the two groups fails. Reported: checked pairs, seconds (best of 3) and pairs per
second for both, their ratio, the clusters each finds and whether the split recovered the groups.
"""
from __future__ import annotations

import time

import numpy as np

from bench.common import parser, write_result


def checked_graph(groups: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, verified, the group of each node) of the synthetic graph described above."""
    rng = np.random.default_rng(seed)
    a, b = np.triu_indices(size, 1)
    base = np.arange(groups) * size
    src = (base[:, None] + a[None]).ravel()
    dst = (base[:, None] + b[None]).ravel()
    ok = rng.random(len(src)) < 0.9
    ok[::len(a)] = True  # each group stays connected through its first image
    # Groups 2i and 2i+1: every pair between them checked; the first image of 2i verifies against
    # 40 % of 2i+1.
    left = base[0::2]
    xs, ys = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cross_src = (left[:, None] + xs.ravel()[None]).ravel()
    cross_dst = (left[:, None] + size + ys.ravel()[None]).ravel()
    cross_ok = (np.tile(xs.ravel(), len(left)) == 0) & (rng.random(len(cross_src)) < 0.4)
    labels = np.repeat(np.arange(groups), size)
    return np.r_[src, cross_src], np.r_[dst, cross_dst], np.r_[ok, cross_ok], labels


def _best_of(fn, repeats: int = 3) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    from curation.config import VerifyConfig
    from curation.dedup.graph import connected_components
    from curation.dedup.linkage import split_labels

    p = parser("linkage", __doc__)
    p.add_argument("--groups", type=int, default=5_000)
    p.add_argument("--size", type=int, default=12)
    args = p.parse_args()
    src, dst, ok, truth = checked_graph(args.groups, args.size)
    n = len(truth)
    rate = VerifyConfig().min_linkage
    plain_s, plain = _best_of(lambda: connected_components(n, src[ok], dst[ok]))
    split_s, split = _best_of(lambda: split_labels(n, src, dst, ok, None, rate))
    recovered = bool((np.unique(np.c_[split, truth], axis=0).shape[0] == args.groups)
                     and len(np.unique(split)) == args.groups)
    write_result(args.out, {
        "groups": args.groups, "group_size": args.size, "images": n, "checked_pairs": len(src),
        "verified_pairs": int(ok.sum()), "min_linkage": rate,
        "components": {"seconds": round(plain_s, 4), "pairs_per_s": round(len(src) / plain_s),
                       "clusters": int(len(np.unique(plain)))},
        "linkage": {"seconds": round(split_s, 4), "pairs_per_s": round(len(src) / split_s),
                    "clusters": int(len(np.unique(split))), "recovers_the_groups": recovered},
        "linkage_over_components": round(split_s / plain_s, 1),
    })


if __name__ == "__main__":
    main()
