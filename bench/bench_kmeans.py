"""FAISS k-means vs scikit-learn MiniBatchKMeans at equal inertia, side by side.

    python bench/bench_kmeans.py --out bench/scratch/kmeans.json [--n 1000000 --d 256 --k 512]

Data: n x d synthetic points, a Gaussian mixture with 2K true centres (seeded). Both run plain
(Euclidean) k-means with the same number of threads. FAISS runs `--niter` Lloyd iterations on all
points from the pipeline's own seeding; its per-iteration objective and cumulative time are its
trajectory (wall and CPU clocks: the machine may be shared). MiniBatchKMeans (sklearn's default
k-means++ init, mini-batches of `--batch-size`) is driven with `partial_fit` over `--sklearn-epochs` shuffled passes; its inertia is measured at
checkpoints on a fixed 100k-point probe, outside its clock; FAISS is scored on the same probe
after every iteration. The equal-inertia target is the worse of the two final probe inertias plus
`--tolerance` (0.1 %), so both reach it; each side's time to reach it is reported with the ratio.
Final inertias are re-scored on all points with the same exact FAISS search.
K defaults to 512 rather than the anchor's 20k so that sklearn finishes in minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from curation.retrieval.clustering import inertia, initial_centroids  # noqa: E402


def synthetic(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """n points around 2k Gaussian centres (unit-variance centres, noise 0.3), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2 * k, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        stop = min(start + step, n)
        which = rng.integers(0, len(centres), size=stop - start)
        x[start:stop] = centres[which] + 0.3 * rng.standard_normal((stop - start, d), dtype=np.float32)
    return x


def run_faiss(x: np.ndarray, k: int, niter: int, seed: int, probe: np.ndarray) -> dict:
    """FAISS Lloyd on all points, one iteration per call, probe inertia after each (off the clock).

    The start is `clustering.initial_centroids`, the pipeline's own seeding (greedy k-means++ on
    a subsample at this K), timed with FAISS; call i continues from call i-1's centroids.
    """
    km = faiss.Kmeans(x.shape[1], k, niter=1, seed=seed, spherical=False, min_points_per_centroid=1,
                      max_points_per_centroid=math.ceil(len(x) / k) + 1, verbose=False)
    w0, c0 = time.perf_counter(), time.process_time()
    centroids = initial_centroids(x, k, seed)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    init_seconds, trajectory = wall, []
    for _ in range(niter):
        w0, c0 = time.perf_counter(), time.process_time()
        km.train(x, init_centroids=centroids)
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        centroids = km.centroids.copy()
        trajectory.append((wall, cpu, inertia(probe, centroids) / len(probe)))
    return {"seconds": wall, "cpu_seconds": cpu, "init_seconds": init_seconds, "centroids": centroids, "trajectory": trajectory}


def run_sklearn(x: np.ndarray, k: int, seed: int, batch_size: int, epochs: int, checkpoints: int, probe: np.ndarray) -> dict:
    """partial_fit over shuffled mini-batches; (fit seconds, mean inertia on `probe`) checkpoints."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    mbk = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, random_state=seed, n_init=1, compute_labels=False)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    every = max(1, steps_per_epoch // checkpoints)
    wall = cpu = 0.0
    step, trajectory = 0, []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = x[np.sort(order[start : start + batch_size])]
            w0, c0 = time.perf_counter(), time.process_time()
            mbk.partial_fit(batch)
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            step += 1
            if step % every == 0:
                trajectory.append((wall, cpu, inertia(probe, mbk.cluster_centers_.astype(np.float32)) / len(probe)))
    return {"seconds": wall, "cpu_seconds": cpu, "centroids": mbk.cluster_centers_.astype(np.float32), "steps": step, "trajectory": trajectory}


def time_to(trajectory: list[tuple[float, float, float]], target: float) -> dict | None:
    """Wall and CPU seconds at the first checkpoint whose mean inertia is at or below target."""
    hit = next((point for point in trajectory if point[2] <= target), None)
    return None if hit is None else {"seconds": hit[0], "cpu_seconds": hit[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--niter", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=4096, help="sklearn mini-batch size")
    ap.add_argument("--sklearn-epochs", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.001, help="relative slack on the equal-inertia target")
    ap.add_argument("--checkpoints", type=int, default=8, help="sklearn inertia checkpoints per epoch")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/scratch/kmeans.json")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    x = synthetic(args.n, args.d, args.k, args.seed)
    probe = x[np.random.default_rng(args.seed + 1).choice(len(x), size=min(len(x), 100_000), replace=False)]
    load_before = os.getloadavg()
    with threadpool_limits(limits=args.threads):
        sk = run_sklearn(x, args.k, args.seed, args.batch_size, args.sklearn_epochs, args.checkpoints, probe)
        fa = run_faiss(x, args.k, args.niter, args.seed, probe)
        sk_final = inertia(x, sk["centroids"]) / len(x)
        fa_final = inertia(x, fa["centroids"]) / len(x)
    # Both trajectories are scored on the same probe subsample; the target is the worse final one,
    # with a little slack so that a side's plateau noise does not decide its time.
    target = max(fa["trajectory"][-1][2], sk["trajectory"][-1][2]) * (1 + args.tolerance)
    t_fa, t_sk = time_to(fa["trajectory"], target), time_to(sk["trajectory"], target)
    result = {
        "data": {"n": args.n, "d": args.d, "k": args.k, "seed": args.seed, "mixture_centres": 2 * args.k},
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "platform": platform.platform(), "faiss": faiss.__version__},
        "faiss": {"seconds": fa["seconds"], "cpu_seconds": fa["cpu_seconds"], "init_seconds": fa["init_seconds"], "niter": args.niter, "mean_inertia": fa_final, "trajectory_probe": fa["trajectory"]},
        "sklearn_minibatch": {"seconds": sk["seconds"], "cpu_seconds": sk["cpu_seconds"], "steps": sk["steps"], "epochs": args.sklearn_epochs, "batch_size": args.batch_size,
                              "mean_inertia": sk_final, "trajectory_probe": sk["trajectory"]},
        "equal_inertia": {"target_probe_mean_inertia": target, "tolerance": args.tolerance, "faiss": t_fa, "sklearn": t_sk,
                          "sklearn_over_faiss_wall": None if not (t_fa and t_sk) else t_sk["seconds"] / t_fa["seconds"],
                          "sklearn_over_faiss_cpu": None if not (t_fa and t_sk) else t_sk["cpu_seconds"] / t_fa["cpu_seconds"]},
        "final_inertia_sklearn_over_faiss": sk_final / fa_final,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    brief = {key: result[key] for key in ("data", "equal_inertia", "final_inertia_sklearn_over_faiss")}
    brief["seconds"] = {"faiss": fa["seconds"], "sklearn": sk["seconds"]}
    brief["cpu_seconds"] = {"faiss": fa["cpu_seconds"], "sklearn": sk["cpu_seconds"]}
    brief["mean_inertia"] = {"faiss": fa_final, "sklearn": sk_final}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
