"""Hierarchical k-means (the `balance` stage's hierarchy) against one flat k-means with as many leaves.

    python -m bench.bench_balanced --out bench/scratch/balanced.json [--sizes 250000,500000,1000000 --d 256]

Data: n x d synthetic points (`bench_kmeans.synthetic`: a seeded Gaussian mixture). The hierarchy is
Vo et al.'s web configuration scaled to the pool (`curation.retrieval.balanced.scaled_levels` of the default
`clustering.balanced`, as a run of that size builds it), every level timed on its own
(`curation.retrieval.balanced.next_level`: k-means, resampling, splits). The peer is one flat k-means
(`curation.retrieval.balanced.kmeans`, the same Lloyd code) with as many clusters as the hierarchy's leaves,
the same iterations and seed. Flat k-means costs n x leaves x d per iteration, which on 2 cores
takes minutes per iteration from 1M points: above `--flat-max` points it is timed for one iteration
and scaled by the iterations (reported as such). On a lent GPU both run on it (FAISS GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_kmeans import synthetic  # noqa: E402
from curation.retrieval.balanced import kmeans, level_seed, next_level, scaled_levels  # noqa: E402
from curation.config import BalancedConfig  # noqa: E402


def hierarchy_times(x: np.ndarray, niter: int, seed: int) -> dict:
    """Seconds per level of the pool-scaled default hierarchy, and its shape."""
    plan = scaled_levels(BalancedConfig(), len(x))
    items, below, levels = x, np.ones(len(x), dtype=np.int64), []
    for i, (k, splits, steps, size) in enumerate(zip(plan.clusters, plan.splits, plan.resampling_steps, plan.sample_sizes)):
        start = time.perf_counter()
        level, _ = next_level(items, below, k, splits, steps, size, niter=niter, float64=True, resample_strategy="closest",
                              seed=level_seed(seed, i), use_gpu="auto")
        levels.append({"level": i + 1, "items": len(items), "clusters": int(k), "splits": int(splits),
                       "resampling_steps": int(steps), "sample_size": int(size), "kept_clusters": len(level.centroids),
                       "seconds": round(time.perf_counter() - start, 3)})
        items, below = level.centroids, level.sizes
    return {"plan": plan.note, "leaves": levels[0]["kept_clusters"], "levels": levels,
            "seconds": round(sum(lv["seconds"] for lv in levels), 3)}


def flat_time(x: np.ndarray, leaves: int, niter: int, seed: int, measured_iters: int) -> dict:
    """Seconds of one flat k-means of `leaves` clusters (measured over `measured_iters` iterations,
    scaled to `niter` when fewer)."""
    start = time.perf_counter()
    kmeans(x, leaves, measured_iters, seed, True, "auto")
    seconds = time.perf_counter() - start
    scaled = seconds * (niter + 1) / (measured_iters + 1)  # Lloyd assigns once more than it iterates
    return {"clusters": leaves, "iterations_measured": measured_iters, "seconds_measured": round(seconds, 3),
            "seconds": round(scaled, 3), "extrapolated": measured_iters < niter}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="250000,500000,1000000", help="pool sizes (comma list)")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--niter", type=int, default=10, help="Lloyd iterations of every k-means, both sides")
    p.add_argument("--flat-max", type=int, default=250_000, help="largest pool whose flat k-means runs every iteration")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        x = synthetic(n, args.d, 512, args.seed)
        hier = hierarchy_times(x, args.niter, args.seed)
        flat = flat_time(x, hier["leaves"], args.niter, args.seed, args.niter if n <= args.flat_max else 1)
        rows.append({"n": n, "hierarchical": hier, "flat": flat, "flat_over_hierarchical": round(flat["seconds"] / hier["seconds"], 2)})
        per_level = ", ".join(f"L{lv['level']} {lv['seconds']:.1f}" for lv in hier["levels"])
        extra = " (extrapolated)" if flat["extrapolated"] else ""
        print(f"n={n:,}: hierarchy {hier['seconds']:.1f} s ({per_level}), flat {hier['leaves']:,} leaves "
              f"{flat['seconds']:.1f} s{extra}", flush=True)
        del x
    growth = None
    if len(rows) > 1:  # seconds ~ n^a between the smallest and largest pools
        a, b = rows[0], rows[-1]
        growth = {side: round(float(np.log(b[side]["seconds"] / a[side]["seconds"]) / np.log(b["n"] / a["n"])), 2)
                  for side in ("hierarchical", "flat")}
    result = {"d": args.d, "niter": args.niter, "rows": rows, "growth_exponent": growth,
              "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
