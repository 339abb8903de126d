"""Engine-agnostic halves of the distributed global steps (shared by the Ray and Beam engines).

Engines only move data: they fan shards out to workers and bring results back. Everything that
decides an answer lives in `curation.dedup.graph` / `curation.dedup.knn`; this module only strings those
functions together the way a sharded run needs them, so both distributed engines give exactly
what the local engine gives:

- sharding: `shard_bounds` cuts row ranges, `edge_chunks` cuts an edge list;
- Parquet file jobs (`map_parquet` of the Ray and Beam engines): `run_file_job` runs one whole
  file through a batch function built once per worker (the model), then the stage's writer;
- sharded k-NN: the driver trains the index on the same seeded sample as `curation.dedup.knn.build_index`
  (`trained_index`); workers each add one base shard to a copy (`fill_shard`) and search queries
  against it (`search_filled`); the driver merges shard results in shard order and finishes exactly
  like the one-machine path (IVF nprobe calibration on the same sample, re-rank for IVF-PQ, self
  matches dropped, threshold, recall measured on the same sample): `sharded_graph`.

An engine supplies `open_shards(index_bytes, bounds) -> ShardedIndex`: base shards filled on its
workers, searchable for a batch of queries at several nprobe values at once (the calibration
ladder in one pass), results merged over shards with `curation.dedup.knn.merge_results`.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa

from curation.dedup import knn
from curation.config import KnnConfig
from curation.dedup.knn_scores import Collector, KnnGraph
from curation.dedup.knn_index import iter_batches
from curation.core.storage import load_array, origin, read_parquet

#: Arrow table of a file's rows -> one output row per input row, in order (built once per worker).
BatchFn = Callable[[pa.Table], pa.Table]
#: (input path, output path, outputs of all its rows in order or None for an empty file) -> JSON-able result
WriteFn = Callable[[str, str, "pa.Table | None"], Any]


def run_file_job(fn: BatchFn, write_fn: WriteFn, in_path: str, out_path: str, columns: list[str]) -> Any:
    """One `map_parquet` job on a worker: the file's rows, in order, through `fn`, then `write_fn`.

    A whole file per call keeps the batches the model sees inside a file those of the local
    engine's per-shard task, whatever the engine (models can round differently by batch size).
    """
    rows = read_parquet(in_path, columns=columns)
    out = fn(rows) if rows.num_rows else None
    if out is not None and out.num_rows != rows.num_rows:
        raise ValueError(f"{in_path}: the batch function returned {out.num_rows} rows for {rows.num_rows}")
    return write_fn(in_path, out_path, out)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous, near-equal row ranges covering 0..n (fewer when n is small)."""
    shards = max(1, min(int(shards), n)) if n else 1
    cuts = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:])]


def edge_chunks(src: np.ndarray, dst: np.ndarray, shards: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The edge list cut into `shards` contiguous chunks (int64; an empty list gives one empty chunk)."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    return [(src[lo:hi], dst[lo:hi]) for lo, hi in shard_bounds(len(src), shards)]


def memmap_file(array: np.ndarray) -> str | None:
    """The .npy file that `array` maps whole (workers then open the file themselves instead of
    receiving its bytes; `storage.load_array` opens either form), else None: not a memmap, or a
    view of part of one. A local copy of a run file on an object store is named by its URL."""
    path = getattr(array, "filename", None)
    if not isinstance(array, np.memmap) or path is None or not array.flags.c_contiguous:
        return None
    try:
        whole = load_array(path)
    except (OSError, ValueError):
        return None
    if whole.shape != array.shape or whole.dtype != array.dtype:
        return None
    return origin(str(path)) or str(path)


class ShardedIndex(Protocol):
    """A trained index whose base shards are filled on an engine's workers. An optional
    `query_block` attribute bounds the queries per search (the driver then holds one block's
    candidates at a time); without it every query goes in one search."""

    def search(self, queries: np.ndarray, fetch: int, nprobes: Sequence[int | None]
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-`fetch` (sims, ids) of every query over all shards, one pair per nprobe (None: as trained)."""
        ...

    def close(self) -> None: ...


#: (serialized trained index, [(lo, hi) base row ranges]) -> the filled, searchable shards
OpenShards = Callable[[np.ndarray, list[tuple[int, int]]], ShardedIndex]


def trained_index(base: np.ndarray, cfg: KnnConfig) -> tuple[knn.IndexSpec, np.ndarray]:
    """(spec, serialized empty index trained on the seeded sample) for `base`; runs in the driver."""
    n, d = base.shape
    return knn.choose_index(n, d, cfg), knn.serialize_index(knn.train_index(base[knn.training_rows(n, d, cfg)], d, n, cfg))


def fill_shard(index_bytes: np.ndarray, base_rows: np.ndarray, cfg: KnnConfig) -> Any:
    """On a worker: a copy of the trained index holding one base shard (GPU when present)."""
    index = knn.deserialize_index(index_bytes, cfg)
    knn.add_shard(index, base_rows, cfg.batch_size)
    return index


def search_filled(index: Any, queries: np.ndarray, fetch: int, nprobes: Sequence[int | None], id_offset: int,
                  cfg: KnnConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """On a worker: one filled shard searched at each nprobe; ids are global (+ `id_offset`)."""
    out = []
    for nprobe in nprobes:
        if nprobe is not None:
            knn.set_nprobe(index, nprobe)
        out.append(knn.search_shard(index, queries, fetch, cfg.batch_size, id_offset))
    return out


def merge_in_order(parts: list[tuple[np.ndarray, np.ndarray]], fetch: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`fetch` over per-shard results given in shard order (ties keep the lower shard)."""
    return parts[0] if len(parts) == 1 else knn.merge_results(parts, fetch)


class _Search:
    """`curation.dedup.knn._top_k` over sharded indexes: fetch (more for IVF-PQ), re-rank, drop self."""

    def __init__(self, shards: ShardedIndex, spec: knn.IndexSpec, base: np.ndarray, want: int, k: int, cfg: KnnConfig):
        self.shards, self.spec, self.base, self.k = shards, spec, base, k
        self.fetch = min(want * cfg.rerank_factor, len(base)) if spec.kind == "ivf_pq" else want

    def top_k(self, queries: np.ndarray, own: np.ndarray | None, nprobes: Sequence[int | None]
              ) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for sims, ids in self.shards.search(queries, self.fetch, nprobes):
            if self.spec.kind == "ivf_pq":
                sims, ids = knn.rerank(self.base, queries, ids)
            out.append(knn.drop_self(sims, ids, own, self.k))
        return out


def sharded_graph(base: np.ndarray, queries: np.ndarray, k: int, threshold: float, self_query: bool,
                  cfg: KnnConfig, open_shards: OpenShards, shards: int) -> KnnGraph:
    """The graph of every query's top-k pairs (edges, near misses, score histogram), the base sharded.

    The same answer as `curation.dedup.knn._graph`: the same trained index, the same nprobe calibration
    (every rung of the ladder searched in one pass, then `calibrate_nprobe` picks as it would),
    the same candidates per query (an IVF search visits the same lists in every shard that one
    index would visit), the same re-rank, self-match and threshold rules, the same recall sample.
    """
    n, d = base.shape
    if queries.ndim != 2 or queries.shape[1] != d:
        raise ValueError(f"queries have shape {queries.shape}, base dimension is {d}")
    spec, index_bytes = trained_index(base, cfg)
    k_eff = max(0, min(k, n - int(self_query)))
    bounds = shard_bounds(n, shards)
    info: dict = {"index": asdict(spec), "n_base": n, "n_query": len(queries), "k": k, "threshold": threshold,
                  "shards": len(bounds)}
    measure = spec.kind != "flat" and cfg.recall_sample > 0 and len(queries) > 0 and k_eff > 0

    def sample(seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        rows = knn.sample_rows(len(queries), cfg.recall_sample, seed)
        return rows, (rows if self_query else None)

    collect = Collector(threshold, cfg)
    if not len(queries) or not k_eff:
        info.update(recall_at_k=1.0 if spec.kind == "flat" else None, recall_sample=0)
        return collect.graph(info, self_query)
    searcher = open_shards(index_bytes, bounds)
    try:
        search = _Search(searcher, spec, base, k_eff + int(self_query), k_eff, cfg)
        nprobe = None
        if measure and spec.nlist and cfg.nprobe is None and cfg.target_recall is not None:
            rows, own = sample(cfg.seed + 2)
            top = min(spec.nlist, 8 * spec.nprobe)
            ladder = knn.nprobe_ladder(top)
            found = dict(zip(ladder, (ids for _, ids in search.top_k(queries[rows], own, ladder))))
            truth = knn.exact_top_k(base, queries[rows], k_eff, own, cfg.batch_size)
            nprobe, tried = knn.calibrate_nprobe(found.__getitem__, truth, cfg.target_recall, top)
            info["index"]["nprobe"] = nprobe
            info["nprobe_calibration"] = tried
        for block in iter_batches(len(queries), getattr(searcher, "query_block", None) or len(queries)):
            own = np.arange(block.start, block.stop) if self_query else None
            (sims, ids), = search.top_k(queries[block], own, [nprobe])
            collect.add(block.start, sims, ids)
        if spec.kind == "flat":
            info.update(recall_at_k=1.0, recall_sample=0)
        elif measure:  # an independent sample from the calibration one, searched again as locally
            rows, own = sample(cfg.seed + 1)
            truth = knn.exact_top_k(base, queries[rows], k_eff, own, cfg.batch_size)
            info.update(knn.recall_of(truth, search.top_k(queries[rows], own, [nprobe])[0][1], threshold, cfg))
            info["recall_sample"] = int(rows.size)
        else:
            info.update(recall_at_k=None, recall_sample=0)
    finally:
        searcher.close()
    return collect.graph(info, self_query)


def sharded_knn_graph(vectors: np.ndarray, k: int, threshold: float, cfg: KnnConfig | None,
                      open_shards: OpenShards, shards: int) -> KnnGraph:
    """`curation.dedup.knn.knn_graph` with the base sharded over workers (the same graph)."""
    return sharded_graph(vectors, vectors, k, threshold, True, cfg or KnnConfig(), open_shards, shards)


def sharded_cross_graph(base: np.ndarray, queries: np.ndarray, k: int, threshold: float, cfg: KnnConfig | None,
                        open_shards: OpenShards, shards: int) -> KnnGraph:
    """`curation.dedup.knn.cross_graph` with the base sharded over workers (the same graph, same order)."""
    return sharded_graph(base, queries, k, threshold, False, cfg or KnnConfig(), open_shards, shards)


def labels_from_pairs(n: int, nodes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Component label of every node 0..n-1 from (node, label) pairs; absent nodes are their own."""
    out = np.arange(n, dtype=np.int64)
    out[np.asarray(nodes, dtype=np.int64)] = np.asarray(labels, dtype=np.int64)
    return out
