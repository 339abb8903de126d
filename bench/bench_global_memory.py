"""Driver memory of the global stages: the pool's vectors in the driver (before) against the
file-by-file stages (now), on one synthetic pool, in one run.

    python -m bench.bench_global_memory --out bench/scratch/global_memory.json [--vectors 100000,400000]

Each pool: `--vectors` unit float16 vectors (a tenth near-copies of another) of `--dim` (the copy descriptor's 1728) in `--files`
embedding files, two thirds kept by dedup. Each phase runs in a fresh process that reports its own
peak anonymous memory (RssAnon, polled every 10 ms, minus the same reading after imports): file
pages of a memory-mapped input are left out, as the kernel can drop them at will.

- `vectors`: the k-NN stages' input, whitened to 768 dims: everything read and whitened in memory
  (`read_unique` + `Whitening`) against `dedup_vectors` (sample gathered, memmap written per file);
- `knn` (first pool size only): those vectors and the self k-NN graph (k = 64): in memory on the
  local engine against the memmap on Ray (2 CPUs; shard actors open the file);
- `cluster`: k-means (K = 256, 25 600 training vectors) and assignment of the kept pool: in memory
  (`cluster_pool`) against the `cluster` stage (sample gathered, assignment per file on 2 local
  worker processes).

Each pair gives the same answer (checked here); the numbers to read are the MiB ratios, and
`growth`: how each peak grows from the first pool size to the last (the file-by-file side is
bounded by the whitening sample, 200k vectors, and one file; the in-memory side grows with the pool).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import SCRATCH, add_phase_arguments, parser, run_phase, write_result

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WHITEN_DIM = 768
CLUSTERS = {"k": 256, "niter": 10, "train_sample": 25_600, "use_gpu": "never"}


def _anon_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakAnon:
    """Peak RssAnon of this process while the block runs, polled by a thread."""

    def __enter__(self) -> "PeakAnon":
        self.base = self.peak = _anon_mib()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, _anon_mib())

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, _anon_mib())


def make_pool(root: Path, n: int, dim: int, files: int) -> None:
    """Embedding files of random unit vectors and a components table keeping two thirds."""
    import pyarrow as pa

    from embedder.store import write_embeddings
    from curation.core.rundir import write_table

    if (root / "dedup" / "components.parquet").exists():
        return
    rng = np.random.default_rng(0)
    ids = np.array([f"{i:032x}" for i in rng.permutation(n)])
    x = rng.standard_normal((n, dim)).astype(np.float32)
    copies = rng.choice(n, n // 10, replace=False)  # a tenth are near-copies of another vector
    x[copies] = x[rng.choice(n, len(copies))] + 0.3 * rng.standard_normal((len(copies), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for f, part in enumerate(np.array_split(np.arange(n), files)):
        write_embeddings(root / "embeddings" / f"part-{f:05d}.parquet", ids[part], x[part].astype(np.float16))
    write_table(pa.table({"image_id": pa.array(ids), "keep": pa.array(np.arange(n) % 3 != 0)}),
                root / "dedup" / "components.parquet")


def _context(root: Path, engine: str, workers: int) -> Any:
    from curation.config import RunConfig
    from pipelines.context import RunContext
    from pipelines.engines import make_engine
    from curation.core.rundir import RunDir

    from curation.config import PACKAGED_COPY_MODEL

    # One embedding space for dedup and retrieval: the `cluster` stage reads RUN/embeddings.
    cfg = RunConfig.model_validate({"dedup": {"whiten_dim": WHITEN_DIM}, "clustering": CLUSTERS,
                                    "knn": {"use_gpu": "never"}, "retrieval": {"model": PACKAGED_COPY_MODEL}})
    return RunContext(run=RunDir(root), cfg=cfg, engine=make_engine(engine, workers, progress=False), progress=False)


def _in_memory_vectors(ctx: Any) -> tuple[np.ndarray, np.ndarray]:
    from curation.dedup.whitening import Whitening
    from pipelines.stages.embedding import read_unique

    ids, emb = read_unique(ctx.run, "embeddings")
    return ids, Whitening.fit(emb, WHITEN_DIM, ctx.cfg.dedup.whiten_eps, seed=ctx.cfg.seed).apply(emb)


def _digest(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _knn(ctx: Any, vectors: np.ndarray) -> str:
    from pipelines.stages.embedding import dedup_knn_config

    cfg = dedup_knn_config(ctx.cfg)
    edges = ctx.engine.knn_graph(vectors, 64, 0.5, cfg).edges
    return _digest(edges.src, edges.dst)


def _cluster_in_memory(ctx: Any) -> str:
    from curation.retrieval.clustering import cluster_pool
    from pipelines.stages.components import kept_ids
    from pipelines.stages.embedding import read_unique

    ids, vectors = read_unique(ctx.run, "embeddings")
    keep = np.isin(ids, kept_ids(ctx.run))
    _, labels, _ = cluster_pool(vectors[keep], ctx.cfg.clustering)
    return _digest(labels)


def _cluster_sharded(ctx: Any) -> str:
    import pyarrow.parquet as pq

    from pipelines.stages.retrieval import ASSIGNMENTS, run_cluster

    run_cluster(ctx)
    return _digest(pq.read_table(ctx.run.path(ASSIGNMENTS)).column("cluster").to_numpy())


def _dedup_vectors(ctx: Any) -> np.ndarray:
    from pipelines.stages.embedding import dedup_vectors

    return dedup_vectors(ctx, "embeddings", fit=True)[1]


PHASES: dict[str, tuple[str, int, Callable[[Any], str]]] = {
    "vectors_in_memory": ("local", 1, lambda ctx: _digest(_in_memory_vectors(ctx)[1])),
    "vectors_memmap": ("local", 1, lambda ctx: _digest(_dedup_vectors(ctx))),
    "knn_in_memory": ("local", 1, lambda ctx: _knn(ctx, _in_memory_vectors(ctx)[1])),
    "knn_memmap_ray": ("ray", 2, lambda ctx: _knn(ctx, _dedup_vectors(ctx))),
    "cluster_in_memory": ("local", 1, _cluster_in_memory),
    "cluster_sharded": ("local", 2, _cluster_sharded),
}


def phase(name: str, root: Path) -> dict[str, Any]:
    """One phase in this process: seconds, peak anonymous MiB above the post-import baseline."""
    import curation.retrieval.clustering  # noqa: F401  (imports are not what is measured)
    import curation.dedup.knn  # noqa: F401
    import curation.dedup.whitening  # noqa: F401
    import embedder.models  # noqa: F401  (torch: the calibration table lives beside the models)
    import pipelines.stages.embedding  # noqa: F401
    import pipelines.stages.retrieval  # noqa: F401

    engine, workers, fn = PHASES[name]
    ctx = _context(root, engine, workers)
    try:
        start = time.perf_counter()
        with PeakAnon() as mem:
            digest = fn(ctx)
        seconds = time.perf_counter() - start
    finally:
        ctx.engine.close()
    return {"seconds": round(seconds, 2), "peak_anon_mib": round(mem.peak - mem.base, 1), "digest": digest}


def measure(vectors: int, dim: int, files: int, knn: bool) -> dict[str, Any]:
    """The phases on a pool of `vectors`, each in its own process, and the before/after ratios
    (the k-NN pair only when `knn`: on 2 cores it takes minutes at 100k vectors)."""
    root = SCRATCH / f"global-memory-{vectors}x{dim}"
    make_pool(root, vectors, dim, files)
    out: dict[str, Any] = {"vectors": vectors, "dim": dim, "files": files, "raw_mib": round(vectors * dim * 2 / 2**20, 1)}
    for name in [n for n in PHASES if knn or not n.startswith("knn")]:
        out[name] = run_phase("bench.bench_global_memory", name, root)
    for stage, (before, after) in {"vectors": ("vectors_in_memory", "vectors_memmap"),
                                   "knn": ("knn_in_memory", "knn_memmap_ray"),
                                   "cluster": ("cluster_in_memory", "cluster_sharded")}.items():
        if before not in out:
            continue
        out[f"{stage}_same_answer"] = out[before]["digest"] == out[after]["digest"]
        out[f"{stage}_memory_ratio"] = round(out[before]["peak_anon_mib"] / max(out[after]["peak_anon_mib"], 1.0), 2)
    return out


def main() -> None:
    p = parser("global_memory", __doc__)
    p.add_argument("--vectors", default="100000,400000", help="pool sizes, comma-separated")
    p.add_argument("--dim", type=int, default=1728)
    p.add_argument("--files", type=int, default=20)
    add_phase_arguments(p)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.run))))
        return
    sizes = [int(v) for v in args.vectors.split(",")]
    pools = [measure(n, args.dim, args.files, knn=i == 0) for i, n in enumerate(sizes)]
    result: dict[str, Any] = {"pools": pools}
    if len(pools) > 1:  # how each side's peak grows with the pool, against the pool's growth
        growth = {"pool": round(sizes[-1] / sizes[0], 2)}
        for name in [n for n in PHASES if n in pools[-1]]:
            growth[name] = round(pools[-1][name]["peak_anon_mib"] / max(pools[0][name]["peak_anon_mib"], 1.0), 2)
        result["growth"] = growth
    write_result(args.out, result)


if __name__ == "__main__":
    main()
