"""Hours per stage of `lvd plan`'s scale estimate, and the driver's memory at its largest steps.

Each stage is its work (images, hashes, edges, multiply-adds, bytes), the rate it runs at (from
`curation.plan.rates`: measured in bench/results.json, or assumed and labelled so), and the cores or
GPUs our engines spread it over:

- CPU map stages and shard tasks run on `workers` cores (per-core rates x workers), the safety
  models of ingest (NSFW filter + face blur, on for crawled data) among them;
- components on the local engine is one process; on Ray a union-find per edge shard plus a merge
  tree; on Beam large-star/small-star rounds, each paying a fixed pipeline cost;
- k-means is trained in the driver (FAISS on the head's `head_cores`), then every kept image is
  assigned to its centroid next to its file;
- exact retrieval search and cluster assignment run on the GPUs (the tasks ask for one:
  `engine.map(..., gpu=True)`; the rate is assumed, no GPU was measured), or with `use_gpu: never`
  on the CPU workers at the measured flat-search rate;
- the output join reads every pool file and writes the curated bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curation.dedup.hamming import auto_parts
from curation.plan.rates import Rate, Rates

#: V100 float32 peak (datasheet): FAISS's flat search is a float32 GEMM (cuBLAS).
V100_FP32_TFLOPS = 15.7
#: Assumed fraction of that peak an exact search (GEMM + top-k selection) sustains.
GPU_SEARCH_EFFICIENCY = 0.5
#: Multiply-adds per second of exact search on one GPU (2 FLOP per multiply-add).
GPU_SEARCH_MACS = V100_FP32_TFLOPS * 1e12 / 2 * GPU_SEARCH_EFFICIENCY
#: Cores of the head that trains k-means (n2-highmem-32, infra/README.md).
HEAD_CORES = 32
#: Bytes of one image id held by the driver (32 hex characters as numpy bytes: curation/core/ids.py).
ID_BYTES_IN_DRIVER = 32


@dataclass(frozen=True)
class Stage:
    """One stage across the cluster: work, rate, unit-hours on `units` cores or GPUs, wall hours."""

    name: str
    work: float
    work_unit: str
    rate: str  # the rate as text, with its unit
    source: str  # measured | assumed | given | baseline
    basis: str
    unit: str  # core | GPU
    units: int  # cores or GPUs the stage is spread over (1: one process)
    unit_hours: float
    wall_hours: float


def stage(name: str, work: float, work_unit: str, rate: str, src: Any, unit: str, units: int, unit_s: float,
          extra_wall_s: float = 0.0) -> Stage:
    """A stage of `unit_s` unit-seconds spread over `units`, plus fixed wall seconds."""
    return Stage(name, work, work_unit, rate, src.source, src.basis, unit, units, unit_s / 3600,
                 (unit_s / units + extra_wall_s) / 3600)


@dataclass(frozen=True)
class Workload:
    """What the funnel asks of the stages."""

    pool: int  # unique images entering deduplication (1.2B)
    kept: int  # images left by deduplication: clustered and searched (744M)
    embedded: int  # images the embedders see (pool + retrieval pass + seeds)
    edges: int  # k-NN graph edges, upper bound (pool x k)
    dim: int
    clusters: int  # K of the k-means
    train_sample: int
    niter: int
    sample_queries: int  # seed images of `sample` rows: exact top-N over the kept pool
    cluster_queries: int  # seed images of `cluster` rows: assigned to a centroid
    output: int  # curated images
    avg_image_bytes: int


def _search(name: str, macs: float, gpus: int, workers: int, rates: Rates) -> Stage:
    """Exact inner-product search of `macs` multiply-adds: on `gpus` GPUs, else the CPU workers."""
    if gpus:
        gpu = Rate(GPU_SEARCH_MACS, "multiply-adds/s per GPU", "assumed",
                   f"assumed: {GPU_SEARCH_EFFICIENCY:.0%} of a V100's {V100_FP32_TFLOPS:g} TFLOP/s float32 (FAISS flat search)")
        return stage(name, macs, "multiply-adds", f"{GPU_SEARCH_MACS / 1e12:,.1f} T multiply-adds/s per GPU", gpu, "GPU",
                     gpus, macs / GPU_SEARCH_MACS)
    r = rates.flat_search
    return stage(name, macs, "multiply-adds", f"{1 / r.value / 1e9:,.1f} G multiply-adds/s per core", r, "core", workers,
                 macs * r.value)


def _components(w: Workload, engine: str, workers: int, engine_rounds: int, rates: Rates) -> Stage:
    r = rates
    if engine == "local":
        return stage("components", w.edges, "edges", f"{r.union_find.value:,.0f} edges/s per core (one process)",
                     r.union_find, "core", 1, w.edges / r.union_find.value)
    if engine == "ray":
        return stage("components", w.edges, "edges", f"{r.ray_merge.value:,.0f} edges/s per core", r.ray_merge, "core",
                     workers, w.edges / r.ray_merge.value)
    # beam: each round shuffles the edges; the measured rate covers the measured run's rounds
    ref = r.star_ref_rounds.value or engine_rounds
    return stage("components", w.edges, "edges", f"{r.star.value:,.0f} edges/s per core x {engine_rounds}/{ref:g}"
                 f" rounds + {r.beam_round_s.value:.1f} s per round", r.star, "core", workers,
                 w.edges / r.star.value * engine_rounds / ref, engine_rounds * r.beam_round_s.value)


def safety_stage(w: Workload, workers: int, rates: Rates) -> Stage:
    """The NSFW filter and face blurring of every ingested image (on for crawled data), on the
    CPU workers at the measured core-seconds per image (or the GPU sessions' CPU fallback)."""
    r = rates.safety
    return stage("safety", w.pool, "images", f"{r.value * 1e3:,.1f} core-ms per image (NSFW + face blur)", r, "core",
                 workers, w.pool * r.value)


def verify_stage(w: Workload, workers: int, rates: Rates) -> Stage:
    """Pixel verification of the self-dedup candidate pairs (on for a dedup model with a verified
    calibration), on the CPU workers: the measured pairs per pool image x core-seconds per pair."""
    pairs = w.pool * rates.verify_pairs.value
    return stage("verify", pairs, "pairs", f"{rates.verify.value * 1e3:,.1f} core-ms per pair,"
                 f" {rates.verify_pairs.value:,.1f} pairs per image ({rates.verify_pairs.source})", rates.verify, "core",
                 workers, pairs * rates.verify.value)


def funnel_stages(w: Workload, engine: str, gpus: int, workers: int, ips: Rate, engine_rounds: int, rates: Rates,
                  head_cores: int = HEAD_CORES, search_gpu: bool = True, safety: bool = True,
                  verify: bool = False) -> list[Stage]:
    """Every stage of a run, in run order (see the module docstring for where each runs);
    `search_gpu=False` (`use_gpu: never`) keeps assignment and retrieval search on the CPUs;
    `safety` costs the NSFW + face-blur pass of ingest (on for crawled data); `verify` the pixel
    verification of the k-NN graph's candidate pairs."""
    r = rates
    search_gpus = gpus if search_gpu else 0
    hash_parts = auto_parts(w.pool)
    train = float(w.train_sample) * w.clusters * w.dim * w.niter
    stages = [
        stage("ingest", w.pool, "images", f"{r.ingest.value:,.0f} img/s per core", r.ingest, "core", workers, w.pool / r.ingest.value),
        *([safety_stage(w, workers, rates)] if safety else []),
        stage("hash", w.pool, "images", f"{r.hash_image.value * 1e3:.2f} core-ms per image", r.hash_image, "core", workers,
              w.pool * r.hash_image.value),
        stage("hash_edges", w.pool, "hashes", f"{r.hamming.ref_core_s:,.1f} s at {r.hamming.ref_n:,.0f}, growth n^{r.hamming.exponent:g},"
              f" {hash_parts:,} pieces", r.hamming, "core", min(workers, hash_parts), r.hamming.core_seconds(w.pool)),
        stage("embed", w.embedded, "images", f"{ips.value:,.1f} img/s per GPU", ips, "GPU", gpus, w.embedded / ips.value),
        stage("knn_edges", w.pool, "vectors", f"{r.knn.ref_core_s:,.0f} core-s at {r.knn.ref_n:,.0f} x {r.knn.ref_dim}-d,"
              f" growth n^{r.knn.exponent:g}, x d/{r.knn.ref_dim}", r.knn, "core", workers, r.knn.core_seconds(w.pool, w.dim)),
        *([verify_stage(w, workers, rates)] if verify else []),
        _components(w, engine, workers, engine_rounds, rates),
        stage("cluster_train", train, "multiply-adds", f"{1 / r.kmeans.value / 1e9:,.1f} G multiply-adds/s per core"
              f" ({w.train_sample:,} x K x {w.niter} iterations, in the driver)", r.kmeans, "core",
              head_cores, train * r.kmeans.value),
        _search("cluster_assign", float(w.kept) * w.clusters * w.dim, search_gpus, workers, rates),
        _search("retrieve", float(w.sample_queries) * w.kept * w.dim + float(w.cluster_queries) * w.clusters * w.dim,
                search_gpus, workers, rates),
    ]
    moved = float(w.pool + w.output) * w.avg_image_bytes
    stages.append(stage("output", moved, "bytes", f"{r.output.value / 1e6:,.0f} MB/s per core (pool read + output written)",
                        r.output, "core", workers, moved / r.output.value))
    over = r.overhead[engine]
    stages.append(stage("engine_overhead", w.pool, "images", f"{over.value * 1e3:.2f} core-ms per image", over, "core", workers,
                        w.pool * over.value))
    return stages


@dataclass(frozen=True)
class DriverMemory:
    """The driver's (Ray head's, Beam launcher's) peak memory at its largest steps."""

    ids_bytes: int  # the pool's image ids as bytes
    plan_bytes: int  # planning the kept pool from every embedding file's ids
    plan_basis: str
    components_bytes: int  # the components stage (per-image arrays; rows labelled by tasks)
    components_basis: str
    largest_bytes: int
    largest: str


def driver_memory(pool: int, rates: Rates) -> DriverMemory:
    """Peak driver bytes, from the per-row peaks `bench_driver_ids` measures (or assumed); both
    steps read every pool image's id (planning reads the embedding files before the kept filter)."""
    plan = int(pool * rates.driver_plan.value)
    comp = int(pool * rates.driver_components.value)
    largest = max((plan, "kept-pool planning"), (comp, "components"))
    return DriverMemory(pool * ID_BYTES_IN_DRIVER, plan, f"{rates.driver_plan.value:g} B per id ({rates.driver_plan.source})",
                        comp, f"{rates.driver_components.value:g} B per pool row ({rates.driver_components.source})",
                        largest[0], largest[1])


# -- the `balance` stage: hierarchical k-means (balanced rows) -------------------------------------
@dataclass(frozen=True)
class HierarchyLevel:
    """One level of the hierarchical k-means as `lvd plan` costs it."""

    level: int
    items: int  # points (level 1) or clusters of the level below
    clusters: int  # K (level 1: coarse clusters)
    splits: int
    leaves: int  # clusters this level hands up (K x splits)
    centroid_bytes: int  # float32 centroids held (level 1: coarse + leaves)
    pool_passes: int  # engine passes over the kept pool's embedding files (level 1 only)
    train_macs: float  # multiply-adds of the driver's k-means (training, resampling)
    split_macs: float  # multiply-adds of the split tasks' k-means (level 1: every member, on the CPU workers)
    assign_macs: float  # multiply-adds of the engine's assignment passes


def hierarchy_cost(clusters: tuple[int, ...], splits: tuple[int, ...], steps: tuple[int, ...], sizes: tuple[int, ...],
                   kept: int, dim: int, train_sample: int, niter: int) -> list[HierarchyLevel]:
    """Multiply-adds and centroid memory per level (`curation.retrieval.balanced.scaled_levels` gives the
    levels): k-means is (points x K x d) per iteration and one more for the last assignment; a
    resampling step re-fits on K x sample_size points and re-assigns every item; level 1 trains its
    coarse clusters on the sample, and its splits are k-means of `splits` centroids over each coarse
    cluster's members, every kept image (kept x splits x d per iteration), in engine tasks after a
    pass that spills the vectors by coarse cluster."""
    out = []
    items = kept
    for i, (k, s, st, sz) in enumerate(zip(clusters, splits, steps, sizes)):
        fit = min(train_sample, items) if i == 0 else items
        train = float(fit) * k * dim * (niter + 1)
        resampled = sz > 1 and st > 0
        passes = 1 + (st if i == 0 and resampled else 0) + (1 if i == 0 and s > 1 else 0)
        assign = float(items) * (k + (s if s > 1 else 0)) * dim * passes if i == 0 else 0.0
        if resampled:
            train += st * (float(min(items, k * sz)) * k * dim * (niter + 1) + (0 if i == 0 else float(items) * k * dim))
        split = float(items) * s * dim * (niter + 1) if s > 1 else 0.0
        leaves = k * s
        held = (k + (leaves if s > 1 else 0)) * dim * 4
        out.append(HierarchyLevel(i + 1, items, k, s, leaves, held, passes if i == 0 else 0, train, split, assign))
        items = leaves
    return out


def hierarchy_stages(levels: list[HierarchyLevel], gpus: int, workers: int, rates: Rates, head_cores: int = HEAD_CORES,
                     search_gpu: bool = True) -> list[Stage]:
    """The driver's k-means (level-1 coarse clusters on the sample, every level above; FAISS on the
    head's cores at the measured k-means rate), the split tasks (level 1's k-means per coarse
    cluster over all its members, on the CPU workers at the same rate) and the engine's passes
    over the kept pool (GPU tasks, or the CPU workers at the measured flat-search rate)."""
    r = rates
    train = sum(lv.train_macs for lv in levels)
    split = sum(lv.split_macs for lv in levels)
    assign = sum(lv.assign_macs for lv in levels)
    out = [stage("balance_train", train, "multiply-adds", f"{1 / r.kmeans.value / 1e9:,.1f} G multiply-adds/s per core"
                 f" ({len(levels)} levels, in the driver)", r.kmeans, "core", head_cores, train * r.kmeans.value)]
    if split:
        out.append(stage("balance_split", split, "multiply-adds", f"{1 / r.kmeans.value / 1e9:,.1f} G multiply-adds/s per core"
                         " (engine tasks, one thread each)", r.kmeans, "core", workers, split * r.kmeans.value))
    out.append(_search("balance_assign", assign, gpus if search_gpu else 0, workers, rates))
    return out
