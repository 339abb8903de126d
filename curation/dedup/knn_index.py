"""FAISS index life cycle for cosine k-NN (DESIGN §3): choose, train, fill, search, ship.

Vectors are L2-normalised per batch on the way into FAISS, so inner product is cosine
similarity whatever the input precision (float16 embeddings round their norms). Every pass over
the data runs in batches, converted to float32 one batch at a time, so a float16 memmap is never
copied whole. GPU FAISS is used when present (cfg.use_gpu == "auto").

The steps are split so a distributed engine can run them shard by shard: `training_rows` ->
`train_index` (once) -> `serialize_index` -> on each worker `deserialize_index`, `add_shard` its
base rows -> `search_shard` each query batch with the shard's global id offset ->
`merge_results` across shards. `build_index` / `search` are the same steps on one machine.
`curation.dedup.knn` builds graphs on top of these and re-exports them.

FAISS finds the neighbours; their similarities are then scored per pair (`curation.core.determinism.
pair_dots`) from the vectors the index holds, and every list is ordered by (similarity desc, id):
FAISS's own scores come from BLAS products whose rounding depends on the search's shape (query
batch, base shard) and thread count, which differ between engines. So the same neighbours get the
same similarity bytes however the base is sharded (on CPU indexes; GPU ones keep FAISS's scores).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import faiss
import numpy as np

from curation.config import KnnConfig
from curation.core.determinism import best_first, pair_dots

_GPU_RESOURCES: Optional[object] = None  # one StandardGpuResources per process, kept alive
PQ_CENTROIDS = 256  # 8-bit product-quantizer codes
_RERANK_CHUNK = 1024  # queries whose candidate vectors are gathered at once when re-ranking


@dataclass(frozen=True)
class IndexSpec:
    """What `train_index` builds; recorded in the info dict (and so in the run manifest)."""

    kind: str  # flat | ivf_flat | ivf_pq | hnsw
    d: int
    nlist: int = 0
    nprobe: int = 0
    pq_m: int = 0
    hnsw_m: int = 0
    ef_search: int = 0
    gpu: bool = False


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def iter_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive row slices of at most `batch_size` rows covering 0..n-1."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def unit_float32(batch: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, rows scaled to unit L2 norm (zero rows stay zero)."""
    out = np.array(batch, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted, seeded sample of row ids (sorted so memmapped gathers read forward)."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def choose_index(n_total: int, d: int, cfg: KnnConfig) -> IndexSpec:
    """The index for `n_total` base vectors of dimension `d` under `cfg` (a pure function)."""
    kind = cfg.index
    if kind == "auto":
        kind = "flat" if n_total < cfg.exact_below else "ivf_flat"
    use_gpu = cfg.use_gpu == "auto" and gpu_available() and kind != "hnsw"
    if kind == "flat":
        return IndexSpec("flat", d, gpu=use_gpu)
    if kind == "hnsw":
        return IndexSpec("hnsw", d, hnsw_m=cfg.hnsw_m, ef_search=cfg.ef_search)
    # 4*sqrt(n) lists (FAISS guideline), but never fewer training points per list than asked.
    nlist = cfg.nlist or int(round(4 * math.sqrt(max(n_total, 1))))
    nlist = max(1, min(nlist, n_total // cfg.train_per_list))
    # nprobe grows as sqrt(nlist): 18 of 1265 lists at 100k, 32 of 4000 at 1M (bench_knn.py).
    nprobe = cfg.nprobe or max(16, int(round(math.sqrt(nlist) / 2)))
    nprobe = min(nprobe, nlist)
    if kind == "ivf_pq":
        if d % cfg.pq_m:
            raise ValueError(f"knn.pq_m={cfg.pq_m} must divide the dimension {d}")
        return IndexSpec("ivf_pq", d, nlist=nlist, nprobe=nprobe, pq_m=cfg.pq_m, gpu=use_gpu)
    return IndexSpec("ivf_flat", d, nlist=nlist, nprobe=nprobe, gpu=use_gpu)


def _set_param(index: faiss.Index, name: str, value: int) -> None:
    space = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    space.set_index_parameter(index, name, value)


def _is_gpu(index: faiss.Index) -> bool:
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def _gpu_resources() -> object:
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """Clone a (trained) CPU index to GPU 0; IVF-PQ gets float16 lookup tables, which large
    codes require there, while flat storage stays float32."""
    options = faiss.GpuClonerOptions()
    options.useFloat16 = isinstance(index, faiss.IndexIVFPQ)
    gpu = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index, options)
    if isinstance(index, faiss.IndexIVF):
        set_nprobe(gpu, index.nprobe)
    return gpu


def _new_index(spec: IndexSpec, cfg: KnnConfig) -> faiss.Index:
    metric = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(spec.d)
    elif spec.kind == "hnsw":
        index = faiss.index_factory(spec.d, f"HNSW{spec.hnsw_m},Flat", metric)
        index.hnsw.efSearch = spec.ef_search
    else:
        codes = "Flat" if spec.kind == "ivf_flat" else f"PQ{spec.pq_m}"
        index = faiss.index_factory(spec.d, f"IVF{spec.nlist},{codes}", metric)
        index.cp.seed = cfg.seed
        index.cp.niter = cfg.train_iters
        index.cp.spherical = True  # unit centroids: assignment by cosine, like the search
        index.nprobe = spec.nprobe
        if spec.kind == "ivf_pq":
            index.do_polysemous_training = False  # Hamming-filter training we never use; minutes of annealing
            index.pq.cp.niter = cfg.train_iters
            index.pq.cp.seed = cfg.seed
    return index


def train_index(sample: np.ndarray, d: int, n_total: int, cfg: KnnConfig) -> faiss.Index:
    """An empty index for `n_total` vectors, trained on `sample` when the kind needs training.

    `sample` should be a seeded random subset of the base (cfg.train_per_list rows per list
    suffice); it is normalised here. Flat and HNSW indexes need no training and ignore it.
    """
    spec = choose_index(n_total, d, cfg)
    index = _new_index(spec, cfg)
    if not index.is_trained:
        sample = unit_float32(sample)
        if sample.shape[1] != d:
            raise ValueError(f"sample has dimension {sample.shape[1]}, index expects {d}")
        # k-means assignment on the GPU when there is one; the CPU index keeps its clustering
        # parameters. The local name keeps the GPU index alive while FAISS points at it.
        assign = faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.IndexFlatIP(d)) if spec.gpu else None
        if assign is not None:
            index.clustering_index = assign
        index.train(sample)
        if assign is not None:
            index.clustering_index = None
    return _to_gpu(index) if spec.gpu else index


def add_shard(index: faiss.Index, vectors: np.ndarray, batch_size: int) -> None:
    """Append `vectors` to `index` (ids continue from index.ntotal), one batch at a time."""
    for rows in iter_batches(len(vectors), batch_size):
        index.add(unit_float32(vectors[rows]))


def training_rows(n_total: int, d: int, cfg: KnnConfig) -> np.ndarray:
    """Sorted, seeded row ids of the base to train on (empty when the index needs no training)."""
    spec = choose_index(n_total, d, cfg)
    wanted = spec.nlist * cfg.train_per_list
    if spec.kind == "ivf_pq":
        wanted = max(wanted, PQ_CENTROIDS * cfg.train_per_list)  # each sub-quantizer is a k-means too
    return sample_rows(n_total, wanted, cfg.seed) if wanted else np.empty(0, np.int64)


def build_index(vectors: np.ndarray, cfg: KnnConfig) -> faiss.Index:
    """Train (on a seeded sample) and fill an index over all `vectors` (row i gets id i)."""
    n, d = vectors.shape
    index = train_index(vectors[training_rows(n, d, cfg)], d, n, cfg)
    add_shard(index, vectors, cfg.batch_size)
    return index


def _stored_vectors(index: faiss.Index) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """ids -> the vectors `index` holds, when it holds them exactly (flat, HNSW, IVF-flat on the
    CPU); None for product-quantized codes (re-ranked from the base instead) and GPU indexes."""
    if _is_gpu(index) or is_pq(index) or index.ntotal == 0:
        return None
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index: flat or HNSW reconstruct without a map
        ivf = None
    if ivf is not None and ivf.direct_map.no():
        ivf.make_direct_map()  # id -> (list, offset): 8 bytes a vector
    return lambda ids: index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))


def _gather(stored: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, d: int) -> Callable[[slice], np.ndarray]:
    """rows -> [rows, k, d] stored vectors of those rows' found ids (missing ones: any vector)."""
    return lambda rows: stored(np.maximum(ids[rows], 0).ravel()).reshape(*ids[rows].shape, d)


def search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product for each query: (sims [m, k] float32, ids [m, k] int64), best first,
    equal similarities by id. On an index holding exact vectors the similarities are scored per
    pair (module docstring): the same bytes whatever the batch, the shard or the thread count.

    Missing results (fewer than k reachable vectors) have id -1 and sim -inf.
    """
    m = len(queries)
    sims = np.empty((m, k), dtype=np.float32)
    ids = np.empty((m, k), dtype=np.int64)
    stored = _stored_vectors(index)
    for rows in iter_batches(m, batch_size):
        q = unit_float32(queries[rows])
        found_sims, found = index.search(q, k)
        if stored is not None:
            found_sims = pair_dots(q, _gather(stored, found, q.shape[1]), k)
        sims[rows], ids[rows] = found_sims, found
    missing = ids < 0
    sims[missing] = -np.inf  # FAISS reports -FLT_MAX for IP; -inf makes merges unambiguous
    return best_first(sims, ids) if stored is not None else (sims, ids)


def search_shard(
    index: faiss.Index, queries: np.ndarray, k: int, batch_size: int, id_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`search` against one base shard whose local id 0 is global id `id_offset`."""
    sims, ids = search(index, queries, k, batch_size)
    ids[ids >= 0] += id_offset
    return sims, ids


def merge_results(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over per-shard results for the same queries (ties keep shard order: with shards in
    id order and exactly scored lists, that is by id; IVF-PQ's approximate scores tie often, and
    this is the order one index would keep)."""
    sims = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def serialize_index(index: faiss.Index) -> np.ndarray:
    """Bytes (uint8 array) of the index, GPU indexes copied to CPU first."""
    return faiss.serialize_index(faiss.index_gpu_to_cpu(index) if _is_gpu(index) else index)


def deserialize_index(data: np.ndarray, cfg: KnnConfig) -> faiss.Index:
    """Inverse of `serialize_index`; moved to the GPU when cfg allows and one is present."""
    index = faiss.deserialize_index(np.asarray(data, dtype=np.uint8))
    if cfg.use_gpu == "auto" and gpu_available() and not isinstance(index, faiss.IndexHNSW):
        index = _to_gpu(index)
    return index


def rerank(base: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine similarities of each query's candidate ids, re-sorted (best first, equal
    similarities by id).

    Compressed indexes (IVF-PQ) return approximate similarities; thresholds must see exact ones,
    so candidates are re-scored from the base vectors (per pair: `curation.core.determinism.pair_dots`),
    a chunk of queries at a time to bound the gathered block. Missing ids (-1) get similarity -inf.
    """
    sims = np.full(ids.shape, -np.inf, dtype=np.float32)
    for rows in iter_batches(len(ids), _RERANK_CHUNK):
        chunk = ids[rows]
        valid = chunk >= 0
        uniq = np.unique(chunk[valid])  # small (<= chunk * k ids)
        if not uniq.size:
            continue
        vecs = unit_float32(base[uniq])  # sorted unique ids: a forward read of a memmap
        pos = np.searchsorted(uniq, np.where(valid, chunk, uniq[0]))
        scored = pair_dots(unit_float32(queries[rows]), lambda r: vecs[pos[r]], chunk.shape[1])
        sims[rows] = np.where(valid, scored, -np.inf)
    return best_first(sims, ids)


def is_pq(index: faiss.Index) -> bool:
    """True for product-quantized indexes, whose similarities are approximate."""
    return "PQ" in type(index).__name__  # IndexIVFPQ and GpuIndexIVFPQ


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set how many inverted lists an IVF index (CPU or GPU) scans per query."""
    _set_param(index, "nprobe", nprobe)


