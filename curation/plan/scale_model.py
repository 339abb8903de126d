"""The scale model behind `lvd plan`: bytes, shards, rounds and hours at the paper's scale.

Pure functions over stated numbers (no engine is imported; FAISS only through
`curation.dedup.knn_index.choose_index`, imported when an index is sized, the same rule the k-NN stage
uses to size its index). `scale_estimate` is the engine-aware estimate of the whole funnel, 1.2B
unique images -> the curated set: raw embedding bytes, IVF-PQ index bytes, index shards that fit
a worker's memory, k-NN graph edges and Parquet bytes, rounds of distributed connected components,
the driver's peak memory, and wall hours per stage on `gpus` GPUs and `workers` CPU cores
(`curation.plan.stage_hours`, from the rates of `curation.plan.rates`: measured in `bench/results.json`, or
assumed and labelled so). The recipe-level cost (embedding GPU-hours, index memory, disk) is
`curation.plan.cost`; the text of the estimate is `curation.plan.planner.format_scale`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from curation import paper
from curation.config import ClusterConfig, KnnConfig
from curation.plan.rates import Rate, Rates, load_rates
from curation.plan.stage_hours import (
    DriverMemory,
    HierarchyLevel,
    Stage,
    Workload,
    driver_memory,
    funnel_stages,
    hierarchy_cost,
    hierarchy_stages,
)

#: NVIDIA V100 SXM2 dense fp16 tensor-core peak (datasheet), the paper's GPU.
V100_FP16_TFLOPS = 125.0
#: Assumed model FLOP utilisation of batched ViT-H/16 inference on a V100.
ASSUMED_MFU = 0.35
#: Default embedding rate: ViT-H/16 (paper.VIT_H16_GFLOP per image) at ASSUMED_MFU of a V100.
DEFAULT_IMAGES_PER_SECOND = V100_FP16_TFLOPS * 1e12 * ASSUMED_MFU / (paper.VIT_H16_GFLOP * 1e9)
#: ViT-H embedding width (the retrieval embedder's output dimension).
VIT_H_DIM = 1280
#: IVF-PQ code: 64 one-byte sub-quantizer codes + an 8-byte id per vector (inverted lists).
PQ_CODE_BYTES = 64
ID_BYTES = 8
#: Stored embeddings are float16; FAISS keeps coarse centroids and PQ codebooks in float32.
FLOAT16_BYTES = 2
FLOAT32_BYTES = 4
#: One search result: float32 similarity + int64 id.
RESULT_BYTES = 4 + 8
#: One k-NN graph edge in Parquet before compression: src, dst int64 + sim float32.
EDGE_BYTES = 8 + 8 + 4
#: Average stored image: JPEG quality 90, longer side <= 512 px (config.DecodeConfig defaults).
AVG_IMAGE_BYTES = 60_000
#: An index shard may take this fraction of a worker's memory (the rest: runtime, batches, slack).
SHARD_MEMORY_FRACTION = 0.5
#: Default CPU workers per GPU: a DGX-1 (the paper's 8 x V100 node) has 2 x 20 physical cores.
CPU_CORES_PER_GPU = 5
#: Default worker memory: one V100-32GB, where the Ray engine puts one index shard per GPU.
DEFAULT_WORKER_MEMORY_GIB = 32.0
ENGINES = ("local", "ray", "beam")
#: How our engines run connected components (pipelines/engines/): the Ray engine cuts the edges
#: into 2 shards per worker and merges shard results as a binary tree (ray_global.ray_components).
RAY_EDGE_SHARDS_PER_WORKER = 2
RAY_MERGE_FAN_IN = 2
GIB = 2**30


class ScaleError(ValueError):
    """Inputs the model cannot size (a dimension PQ cannot split, a worker too small for a shard)."""


# --------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------


def human_bytes(nbytes: float) -> str:
    """Decimal units, one decimal: 2,457,600,000,000 -> '2.5 TB'."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def raw_embedding_bytes(vectors: int, dim: int = VIT_H_DIM, dtype_bytes: int = FLOAT16_BYTES) -> int:
    """Bytes of `vectors` raw embeddings: n x d x dtype (1.2e9 x 1024 x 2 = 2,457,600,000,000)."""
    return vectors * dim * dtype_bytes


def ivfpq_list_bytes(vectors: int, pq_code_bytes: int = PQ_CODE_BYTES) -> int:
    """Bytes of IVF-PQ inverted lists: one code and one int64 id per vector."""
    return vectors * (pq_code_bytes + ID_BYTES)


@dataclass(frozen=True)
class IvfPqSize:
    """An IVF-PQ index over `vectors` d-dim vectors, nlist chosen by `curation.dedup.knn_index.choose_index`."""

    vectors: int
    dim: int
    nlist: int
    nprobe: int
    pq_code_bytes: int
    codes: int  # vectors x pq_code_bytes
    ids: int  # vectors x 8
    centroids: int  # nlist x dim x 4 (float32 coarse quantizer)
    codebook: int  # 256 x dim x 4 (float32 PQ centroids: 256 per sub-quantizer of dim / m)
    total: int


def ivfpq_size(vectors: int, dim: int = VIT_H_DIM, pq_code_bytes: int = PQ_CODE_BYTES,
               knn: Optional[KnnConfig] = None) -> IvfPqSize:
    """IVF-PQ bytes with the k-NN stage's own rule for nlist (4 sqrt(n), at most n / train_per_list,
    or `knn.nlist` when set). Raises ScaleError when `pq_code_bytes` does not divide `dim` (FAISS)."""
    from curation.dedup.knn_index import (  # imports FAISS: only when sizing
        PQ_CENTROIDS,
        choose_index,
    )

    if dim % pq_code_bytes:
        raise ScaleError(f"dimension {dim} is not a multiple of the {pq_code_bytes}-byte PQ code (one byte per d / m sub-vector)")
    cfg = (knn or KnnConfig()).model_copy(update={"index": "ivf_pq", "pq_m": pq_code_bytes, "use_gpu": "never"})
    spec = choose_index(vectors, dim, cfg)
    codes, ids = vectors * pq_code_bytes, vectors * ID_BYTES
    centroids, codebook = spec.nlist * dim * FLOAT32_BYTES, PQ_CENTROIDS * dim * FLOAT32_BYTES
    return IvfPqSize(vectors, dim, spec.nlist, spec.nprobe, pq_code_bytes, codes, ids, centroids, codebook,
                     codes + ids + centroids + codebook)


@dataclass(frozen=True)
class ShardPlan:
    """Index shards: the fewest that fit `memory_fraction` of a worker, and what the engine uses."""

    worker_memory_bytes: int
    memory_fraction: float
    budget_bytes: int  # memory_fraction x worker memory
    fixed_bytes: int  # per worker whatever the shard: centroids + codebook + search buffers
    search_buffer_bytes: int  # batch x fetch x (4 + 8) results + batch x dim x 4 query floats
    count: int  # fewest shards whose per-worker bytes fit the budget
    vectors_per_shard: int
    per_worker_bytes: int
    engine_shards: int  # shards our engine makes (local 1; ray one per GPU; beam one per worker)
    engine_per_worker_bytes: int
    engine_fits: bool


def shard_plan(index: IvfPqSize, worker_memory_gib: float, engine: str, gpus: int, workers: int,
               batch: int, fetch: int, memory_fraction: float = SHARD_MEMORY_FRACTION) -> ShardPlan:
    """Shards of `index` so each worker's shard (lists + fixed bytes) fits `memory_fraction` of its
    memory during add and search; `fetch` results per query (k + 1 self match, x the IVF-PQ re-rank
    factor), `batch` queries at a time. Raises ScaleError when even the fixed part does not fit."""
    memory = int(worker_memory_gib * GIB)
    budget = int(memory * memory_fraction)
    search = batch * fetch * RESULT_BYTES + batch * index.dim * FLOAT32_BYTES
    fixed = index.centroids + index.codebook + search
    per_vector = index.pq_code_bytes + ID_BYTES
    if budget <= fixed:
        raise ScaleError(f"{worker_memory_gib:g} GiB per worker is too small: centroids, codebook and search buffers"
                         f" alone need {human_bytes(fixed)} of its {memory_fraction:.0%} ({human_bytes(budget)})")
    count = max(1, math.ceil(index.vectors * per_vector / (budget - fixed)))
    engine_shards = {"local": 1, "ray": gpus or workers, "beam": workers}[engine]

    def per_worker(shards: int) -> int:
        return math.ceil(index.vectors / shards) * per_vector + fixed

    return ShardPlan(memory, memory_fraction, budget, fixed, search, count, math.ceil(index.vectors / count), per_worker(count),
                     engine_shards, per_worker(engine_shards), per_worker(engine_shards) <= budget)


# --------------------------------------------------------------------------------------------
# Graph and rounds
# --------------------------------------------------------------------------------------------


def rounds_bound(n: int) -> int:
    """Upper bound on large-star/small-star rounds, O(log n): ceil(log2 n)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def rounds_typical(n: int, ref_nodes: float, ref_rounds: float) -> int:
    """Star rounds expected on n nodes: the measured run's rounds scaled by log2(n) / log2(ref_nodes)
    (rounds grow like log n), never above the bound; the bound itself without a measured run."""
    if ref_nodes <= 1 or ref_rounds <= 0:
        return rounds_bound(n)
    return min(rounds_bound(n), max(1, math.ceil(ref_rounds * math.log2(max(n, 2)) / math.log2(ref_nodes))))


def merge_tree_rounds(shards: int, fan_in: int = RAY_MERGE_FAN_IN) -> int:
    """Rounds of the Ray merge tree: one union-find round over the edge shards, then
    ceil(log_fan_in(shards)) merge levels (pipelines/engines/ray_global.ray_components)."""
    rounds, level = 1, shards
    while level > 1:
        level, rounds = -(-level // fan_in), rounds + 1
    return rounds


@dataclass(frozen=True)
class Components:
    """Rounds of connected components on `nodes` nodes (engine rounds: what ours would run)."""

    nodes: int
    rounds_bound: int  # ceil(log2 n), large-star/small-star
    rounds_typical: int  # star rounds scaled from the measured run
    rounds_typical_basis: str
    engine_rounds: int
    engine_basis: str


def components_rounds(nodes: int, engine: str, workers: int, rates: Rates) -> Components:
    typical = rounds_typical(nodes, rates.star_ref_nodes.value, rates.star_ref_rounds.value)
    basis = (f"{rates.star_ref_rounds.value:g} rounds measured on {rates.star_ref_nodes.value:,.0f} nodes,"
             f" x log2(n) / log2({rates.star_ref_nodes.value:,.0f})" if rates.star_ref_rounds.source == "measured"
             else "assumed: the bound (no measured star run)")
    if engine == "local":
        rounds, how = 1, "one union-find pass in one process"
    elif engine == "ray":
        shards = workers * RAY_EDGE_SHARDS_PER_WORKER
        rounds, how = merge_tree_rounds(shards), f"union-find on {shards:,} edge shards + a binary merge tree"
    else:
        per = int(rates.beam_rounds_per_pipeline.value)
        rounds, how = typical, f"typical star rounds, {per} per Beam pipeline: {-(-typical // per)} pipelines"
    return Components(nodes, rounds_bound(nodes), typical, basis, rounds, how)


# --------------------------------------------------------------------------------------------
# Hours
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleEstimate:
    """The whole engine-aware estimate (`asdict` gives the JSON of `lvd plan --json`'s "scale")."""

    engine: str
    gpus: int
    workers: int
    worker_memory_gib: float
    pool: int  # unique images entering deduplication (1.2B for the paper)
    retrieval_images: int  # images the retrieval embedder embeds (deduplicated pool + seeds)
    output: int
    dim: int
    dtype_bytes: int
    raw_embedding_bytes: int
    index: IvfPqSize
    shards: ShardPlan
    k: int
    edges_upper_bound: int  # pool x k
    edges_parquet_bytes: int  # edges x 20 B, before compression
    components: Components
    kept: int  # images left by deduplication (clustered and searched)
    clusters: int  # K of the `cluster` stage, scaled to `kept` (clustering.scaled_k); 0 without cluster rows
    clusters_note: str
    sample_queries: int
    cluster_queries: int
    driver: DriverMemory
    stages: list[Stage]
    total_hours: float
    bottleneck: str  # the stage with the most wall hours
    budget_hours: float
    fits: bool
    rates_file: Optional[str]
    not_modelled: list[str]
    hierarchy: Optional[dict[str, Any]] = None  # the `balance` stage's levels, when the recipe has balanced rows


def scale_estimate(
    pool: int,
    retrieval_images: int,
    output: int,
    engine: str = "local",
    gpus: int = paper.PAPER_GPUS,
    workers: Optional[int] = None,
    worker_memory_gib: float = DEFAULT_WORKER_MEMORY_GIB,
    dim: int = VIT_H_DIM,
    dtype_bytes: int = FLOAT16_BYTES,
    pq_code_bytes: int = PQ_CODE_BYTES,
    k: int = paper.SELF_DEDUP_K,
    images_per_second: Optional[float] = None,
    budget_hours: float = paper.PAPER_HOURS,
    rates: Optional[Rates] = None,
    knn: Optional[KnnConfig] = None,
    kept: Optional[int] = None,
    sample_queries: int = 0,
    cluster_queries: int = 0,
    clustering: Optional[ClusterConfig] = None,
    avg_image_bytes: int = AVG_IMAGE_BYTES,
    search_gpu: bool = True,
    cluster_rows: bool = True,
    balanced_rows: bool = False,
    safety: bool = True,
    verify: bool = False,
) -> ScaleEstimate:
    """Engine-aware estimate of the funnel `pool` unique images -> `output` curated images.

    Stages run one after another (no overlap: an upper bound on wall time), costed as
    `curation.plan.stage_hours.funnel_stages` says: ingest, PCA hash, Hamming pairs, embedding (copy
    detection over the pool and retrieval over `retrieval_images`, both at `images_per_second` per
    GPU), the k-NN graph of the pool, components on the upper-bound graph (pool x k edges), k-means
    of the `kept` images (default: the paper's dedup ratio of `pool`), the retrieval searches of
    `sample_queries` and `cluster_queries` seed images, the output join, and the engine's
    per-image overhead over local. `workers` defaults to CPU_CORES_PER_GPU per GPU;
    `search_gpu=False` costs the exact searches on the CPU workers. K is the `cluster` stage's for the
    kept pool (`clustering.scaled_k`) (no k-means without `cluster_rows`);
    `balanced_rows` adds the `balance` stage's hierarchical k-means (`stage_hours.hierarchy_cost`,
    levels scaled to the kept pool as the stage scales them). `safety` costs the NSFW filter and
    face blurring of ingest at the measured core-seconds per image (the paper's pool is crawled
    web data, for which they are on). `verify` costs the pixel verification of the self-dedup
    candidate pairs (`dedup.verify`, on for a dedup model with a verified calibration).
    """
    from curation.retrieval.clustering import scaled_k

    if engine not in ENGINES:
        raise ScaleError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")
    if gpus < 1:
        raise ScaleError(f"the embedding runs on GPUs: give at least one, got {gpus}")
    rates = rates or load_rates()
    workers = workers or gpus * CPU_CORES_PER_GPU
    knn = knn or KnnConfig()
    clustering = clustering or ClusterConfig()
    kept = kept if kept is not None else pool * paper.POOL_AFTER_RELATIVE_DEDUP // paper.POOL_UNIQUE
    index = ivfpq_size(pool, dim, pq_code_bytes, knn)
    shards = shard_plan(index, worker_memory_gib, engine, gpus, workers, knn.batch_size, (k + 1) * knn.rerank_factor)
    edges = pool * k
    comp = components_rounds(pool, engine, workers, rates)
    ips = Rate(images_per_second, "images/s per GPU", "given", "--images-per-second") if images_per_second else Rate(
        DEFAULT_IMAGES_PER_SECOND, "images/s per GPU", "assumed",
        f"ViT-H/16 at {paper.VIT_H16_GFLOP:g} GFLOP/img, {ASSUMED_MFU:.0%} MFU of a V100 ({V100_FP16_TFLOPS:g} TFLOP/s fp16);"
        " the copy-detection pass at the same rate (conservative)")
    clusters, clusters_note = scaled_k(clustering.k, kept, clustering.k_min) if cluster_rows else (
        0, "no cluster rows: no k-means")
    work = Workload(pool=pool, kept=kept, embedded=pool + retrieval_images, edges=edges, dim=dim, clusters=clusters,
                    train_sample=min(clustering.train_sample, kept), niter=clustering.niter, sample_queries=sample_queries,
                    cluster_queries=cluster_queries, output=output, avg_image_bytes=avg_image_bytes)
    stages = funnel_stages(work, engine, gpus, workers, ips, comp.engine_rounds, rates, search_gpu=search_gpu,
                           safety=safety, verify=verify)
    if not cluster_rows:
        stages = [st for st in stages if st.name not in ("cluster_train", "cluster_assign")]
    hierarchy = None
    if balanced_rows:
        hierarchy = _hierarchy(clustering, kept, dim)
        levels = [HierarchyLevel(**lv) for lv in hierarchy["levels"]]
        at = next(i for i, st in enumerate(stages) if st.name == "retrieve")
        stages[at:at] = hierarchy_stages(levels, gpus, workers, rates, search_gpu=search_gpu)
    total = sum(s.wall_hours for s in stages)
    return ScaleEstimate(
        engine=engine, gpus=gpus, workers=workers, worker_memory_gib=worker_memory_gib, pool=pool,
        retrieval_images=retrieval_images, output=output, dim=dim, dtype_bytes=dtype_bytes,
        raw_embedding_bytes=raw_embedding_bytes(pool, dim, dtype_bytes), index=index, shards=shards, k=k,
        edges_upper_bound=edges, edges_parquet_bytes=edges * EDGE_BYTES, components=comp, kept=kept,
        clusters=clusters, clusters_note=clusters_note, sample_queries=sample_queries, cluster_queries=cluster_queries,
        driver=driver_memory(pool, rates), stages=stages, total_hours=total,
        bottleneck=max(stages, key=lambda s: s.wall_hours).name, budget_hours=budget_hours, fits=total <= budget_hours,
        rates_file=rates.path,
        not_modelled=["download (fetch)", "relative dedup k-NN (eval sets as queries)",
                      "stage overlap"] + (["hierarchical k-means on GPUs in the driver"] if balanced_rows else []),
        hierarchy=hierarchy,
    )


def _hierarchy(clustering: ClusterConfig, kept: int, dim: int) -> dict[str, Any]:
    """The `balance` stage's levels for `kept` images and their cost (`stage_hours.hierarchy_cost`)."""
    from curation.retrieval.balanced import scaled_levels

    b = clustering.balanced
    plan = scaled_levels(b, kept)
    levels = hierarchy_cost(plan.clusters, plan.splits, plan.resampling_steps, plan.sample_sizes, kept, dim,
                            b.train_sample, b.niter)
    return {"preset": b.preset, "note": plan.note, "factor": plan.factor, "dropped": plan.dropped,
            "train_sample": min(b.train_sample, kept), "levels": [asdict(lv) for lv in levels],
            "centroid_bytes": sum(lv.centroid_bytes for lv in levels),
            "sample_bytes": min(b.train_sample, kept) * dim * FLOAT32_BYTES,
            "spill_bytes": kept * dim * FLOAT16_BYTES if plan.splits[0] > 1 else 0}


def scale_json(estimate: ScaleEstimate) -> dict[str, Any]:
    """JSON-ready dict of an estimate, with the per-stage hours also keyed by stage name."""
    out = asdict(estimate)
    out["hours"] = {s.name: s.wall_hours for s in estimate.stages}
    return out
