"""k-NN graph benchmark: the chosen FAISS index vs exact flat search, on synthetic embeddings.

    python bench/bench_knn.py --out bench/scratch/knn.json [--sizes 100000,300000,1000000]

Each size runs in its own subprocess so that peak memory (ru_maxrss, which FAISS allocations do
show up in, unlike tracemalloc) is that size's alone. Per size it records: the time of
`knn_edges` (index build + search of every vector + recall measurement), the recall@64 measured
against exact search, and the exact flat baseline, timed on a query sample and extrapolated
linearly to all n queries (exact search cost is linear in the number of queries at fixed n).
The growth exponent of both is fitted on log(time) vs log(n).

The data (`clustered_embeddings`) is a mixture of clusters, each a random centre plus a random
low-rank (16-d) spread and small isotropic noise, L2-normalised: the nearest-neighbour
similarities it produces (top-1 ~0.78, 64th ~0.52 at d=256) resemble image-embedding k-NN.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GENERATOR = {"d": 256, "cluster_size": 1000, "rank": 16, "spread": 2.0, "noise": 0.1}


def clustered_embeddings(
    n: int,
    d: int = 256,
    cluster_size: int = 1000,
    rank: int = 16,
    spread: float = 2.0,
    noise: float = 0.1,
    seed: int = 0,
    dtype: type = np.float32,
) -> np.ndarray:
    """n unit vectors in n // cluster_size clusters: centre + spread * (random rank-r basis @ z)
    + noise * isotropic Gaussian, normalised. Deterministic in `seed`; built in blocks."""
    rng = np.random.default_rng(seed)
    clusters = max(1, n // cluster_size)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # columns scaled so spread * basis @ z has expected norm ~ spread for z ~ N(0, I_r)
    bases = rng.standard_normal((clusters, d, rank)).astype(np.float32) / np.float32(math.sqrt(d * rank))
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, d), dtype=dtype)
    for start in range(0, n, 32_768):
        lab = labels[start : start + 32_768]
        z = rng.standard_normal((lab.size, rank)).astype(np.float32)
        x = centres[lab] + spread * np.einsum("bdr,br->bd", bases[lab], z)
        x += (noise / math.sqrt(d)) * rng.standard_normal((lab.size, d)).astype(np.float32)
        out[start : start + lab.size] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_size(n: int, k: int, exact_queries: int, seed: int) -> dict:
    """One size, in the current process: chosen index vs exact flat on a query sample."""
    import faiss

    from curation.dedup import knn
    from curation.config import KnnConfig

    vectors = clustered_embeddings(n, seed=seed, **GENERATOR)
    rss_data = _maxrss_bytes()
    cfg = KnnConfig(exact_below=0)  # force the approximate path the pipeline uses at scale
    c0, t0 = time.process_time(), time.perf_counter()
    src, dst, sim, info = knn.knn_edges(vectors, k=k, threshold=0.6, cfg=cfg)
    t_knn, c_knn = time.perf_counter() - t0, time.process_time() - c0
    rss_knn = _maxrss_bytes()

    # Exact baseline: the flat index the pipeline uses below exact_below, timed on a query sample
    # (best of 3: the shared machine's load only ever slows a run down, so this favours exact).
    rows = np.sort(np.random.default_rng(seed + 7).choice(n, min(exact_queries, n), replace=False))
    flat = faiss.IndexFlatIP(vectors.shape[1])
    knn.add_shard(flat, vectors, 65_536)
    walls, cpus = [], []
    for _ in range(3):
        c0, t0 = time.process_time(), time.perf_counter()
        knn.search(flat, vectors[rows], k + 1, 16_384)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    t_exact, c_exact = min(walls) * n / rows.size, min(cpus) * n / rows.size
    return {
        "n": n,
        "k": k,
        "index": info["index"],
        "nprobe_calibration": info.get("nprobe_calibration"),
        "time_s": round(t_knn, 2),
        "cpu_s": round(c_knn, 2),
        "exact_time_s_extrapolated": round(t_exact, 2),
        "exact_cpu_s_extrapolated": round(c_exact, 2),
        "exact_sample_queries": int(rows.size),
        "exact_sample_time_s": [round(w, 3) for w in walls],
        "speedup_vs_exact": round(t_exact / t_knn, 2),
        "speedup_vs_exact_cpu": round(c_exact / c_knn, 2),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "recall_at_k": info["recall_at_k"],
        "edge_recall_at_0.6": info.get("edge_recall"),
        "recall_sample": info["recall_sample"],
        "edges_above_0.6": int(src.size),
        "peak_rss_bytes": rss_knn,
        "peak_rss_over_data_bytes": rss_knn - rss_data,
        "data_bytes": int(vectors.nbytes),
    }


def _fit_exponent(ns: list[int], ts: list[float]) -> float | None:
    if len(ns) < 2:
        return None
    return round(float(np.polyfit(np.log(ns), np.log(ts), 1)[0]), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scratch" / "knn.json")
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--exact-queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size, JSON on stdout
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(measure_size(args.one, args.k, args.exact_queries, args.seed)))
        return 0

    results = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        cmd = [sys.executable, __file__, "--one", str(n), "--k", str(args.k),
               "--exact-queries", str(args.exact_queries), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            results.append({"n": n, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        results.append(row)
    ok = [r for r in results if "error" not in r]
    import faiss

    report = {
        "benchmark": "knn_graph",
        "data": {"generator": "bench.bench_knn.clustered_embeddings", **GENERATOR, "seed": args.seed},
        "exact_baseline": "faiss.IndexFlatIP on the same vectors; search timed on "
        f"{args.exact_queries} sampled queries (best of 3) and extrapolated linearly to n queries",
        "timing_note": "shared 2-core machine: wall times include waiting for a core; cpu_s is "
        "process CPU time (all threads). time_s covers index training, adding, nprobe "
        "calibration, searching every vector and the recall measurement",
        "faiss": faiss.__version__,
        "omp_threads": faiss.omp_get_max_threads(),
        "cpu_count": os.cpu_count(),
        "sizes": results,
        "growth_exponent": _fit_exponent([r["n"] for r in ok], [r["time_s"] for r in ok]),
        "growth_exponent_cpu": _fit_exponent([r["n"] for r in ok], [r["cpu_s"] for r in ok]),
        "exact_growth_exponent": _fit_exponent([r["n"] for r in ok], [r["exact_time_s_extrapolated"] for r in ok]),
        "exact_growth_exponent_cpu": _fit_exponent([r["n"] for r in ok], [r["exact_cpu_s_extrapolated"] for r in ok]),
        "target": "recall@64 >= 0.95 at >= 10x faster than exact from 1M vectors (DESIGN §5)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
