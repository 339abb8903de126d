"""Retrieval of pool images for curated seed datasets (paper §3, App. A), as pure functions.

Inputs are numpy arrays (L2-normalised float16/float32 embeddings, string ids, cluster labels from
`curation.retrieval.clustering.assign`); outputs are Arrow tables with the columns of `schemas.OUTPUT` minus
`image` (the shard writer joins the bytes by image_id):

- `retrieve_as_is`: the seed images themselves;
- `retrieve_sample`: the N nearest pool images of every query image (exact inner product);
- `retrieve_cluster`: every pool cluster holding MORE than `min_queries` query images gives M of
  its images (seeded choice), and the dataset is capped;
- `merge_retrievals`: one row per image with every (dataset, mode, query) that retrieved it in
  `provenance`, and collision counts (the paper's reason for a small N).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any, Iterable, Sequence

import faiss
import numpy as np
import pyarrow as pa

from curation import paper
from curation.core import schemas
from curation.retrieval.clustering import UseGpu, as_float32, gpu_count
from curation.core.determinism import best_first, pair_dots

log = logging.getLogger(__name__)

#: What every function here returns (OUTPUT without the image bytes).
RETRIEVAL = schemas.RETRIEVAL


def _entry(dataset: str | None, mode: str, query: str | None, cluster: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"dataset": dataset, "mode": mode, "query": query}
    if cluster is not None:
        entry["cluster"] = cluster
    return entry


def retrieval_table(
    image_ids: Sequence[str],
    *,
    seed_dataset: str | None,
    mode: str,
    query_ids: Sequence[str | None] | None = None,
    clusters: Sequence[int] | np.ndarray | None = None,
    similarities: Sequence[float] | np.ndarray | None = None,
) -> pa.Table:
    """Rows of one retrieval (one dataset, one mode), each with its own one-entry provenance."""
    n = len(image_ids)
    queries = list(query_ids) if query_ids is not None else [None] * n
    cl = [int(c) for c in clusters] if clusters is not None else [None] * n
    sims = [float(s) for s in similarities] if similarities is not None else [None] * n
    prov = [json.dumps([_entry(seed_dataset, mode, q, c)]) for q, c in zip(queries, cl)]
    return pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "seed_dataset": pa.array([seed_dataset] * n, pa.string()),
            "mode": pa.array([mode] * n, pa.string()),
            "query_id": pa.array(queries, pa.string()),
            "cluster": pa.array(cl, pa.int64()),
            "similarity": pa.array(sims, pa.float32()),
            "provenance": pa.array(prov, pa.string()),
        },
        schema=RETRIEVAL,
    )


def retrieve_as_is(dataset: str, seed_ids: Sequence[str]) -> pa.Table:
    """`as_is`: every seed image is kept; it is its own query (similarity 1)."""
    return retrieval_table(seed_ids, seed_dataset=dataset, mode="as_is", query_ids=seed_ids, similarities=np.ones(len(seed_ids)))


def nearest(
    queries: np.ndarray,
    pool: np.ndarray,
    n: int,
    batch_size: int = 4_096,
    use_gpu: UseGpu = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-n inner-product neighbours in `pool` of every query: (sims, indices), best first,
    equal similarities by index. FAISS finds them; each pair is then scored on its own
    (`curation.core.determinism.pair_dots`), so a pair's similarity has the same bytes whatever the
    pool's split into files, the query batch, the thread count or the device."""
    n, d = min(n, len(pool)), pool.shape[1]
    index = faiss.IndexFlatIP(d)
    if gpu_count(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    for start in range(0, len(pool), 1 << 20):  # add in slices: float32 copies stay small
        index.add(as_float32(pool[start : start + (1 << 20)]))
    sims = np.empty((len(queries), n), dtype=np.float32)
    idx = np.empty((len(queries), n), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        stop = min(start + batch_size, len(queries))
        q = as_float32(queries[start:stop])
        idx[start:stop] = index.search(q, n)[1]
        found = idx[start:stop]
        sims[start:stop] = pair_dots(q, lambda rows: as_float32(pool[found[rows].ravel()]).reshape(*found[rows].shape, d), n)
    return best_first(sims, idx)


def retrieve_sample(
    dataset: str,
    query_ids: Sequence[str],
    query_vectors: np.ndarray,
    pool_ids: Sequence[str],
    pool_vectors: np.ndarray,
    n: int,
    *,
    batch_size: int = 4_096,
    use_gpu: UseGpu = "auto",
) -> pa.Table:
    """`sample`: the n nearest pool images of each query image, by query then rank.

    A pool image near several queries appears once per query here; `merge_retrievals` counts
    those collisions and keeps it once.
    """
    if len(query_ids) != len(query_vectors) or len(pool_ids) != len(pool_vectors):
        raise ValueError("ids and vectors must have the same length")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if len(query_ids) == 0 or len(pool_ids) == 0:
        return RETRIEVAL.empty_table()
    sims, idx = nearest(query_vectors, pool_vectors, n, batch_size, use_gpu)
    return sample_table(dataset, query_ids, pool_ids, sims, idx)


def sample_table(dataset: str, query_ids: Sequence[str], pool_ids: Sequence[str], sims: np.ndarray,
                 idx: np.ndarray) -> pa.Table:
    """`sample` rows from neighbour lists (`nearest`'s (sims, pool indices), one row per query):
    by query, then rank."""
    if len(query_ids) != len(idx):
        raise ValueError(f"{len(query_ids)} query ids for {len(idx)} neighbour lists")
    queries = np.repeat(np.asarray(query_ids, dtype=object), idx.shape[1])
    return retrieval_table(np.asarray(pool_ids)[idx.ravel()], seed_dataset=dataset, mode="sample", query_ids=queries, similarities=sims.ravel())


def qualifying_clusters(query_labels: np.ndarray, min_queries: int = paper.CLUSTER_MIN_QUERIES) -> np.ndarray:
    """Sorted ids of the clusters holding MORE than `min_queries` query images."""
    counts = np.bincount(np.asarray(query_labels, dtype=np.int64))
    return np.flatnonzero(counts > min_queries)


def cluster_counts(query_labels: np.ndarray, pool_labels: np.ndarray, m: int, cap: int, min_queries: int = paper.CLUSTER_MIN_QUERIES) -> dict[str, int]:
    """What `retrieve_cluster` yields, without choosing: qualifying clusters, retrieved (the sum of
    min(m, cluster size), Table 15's "retrieved" before the cap) and kept (after the cap)."""
    qualifying = qualifying_clusters(query_labels, min_queries)
    sizes = np.bincount(np.asarray(pool_labels, dtype=np.int64), minlength=int(qualifying.max(initial=-1)) + 1)
    retrieved = int(np.minimum(sizes[qualifying], m).sum())
    return {"clusters": int(len(qualifying)), "retrieved": retrieved, "kept": min(retrieved, cap)}


def retrieve_cluster(
    dataset: str,
    query_labels: np.ndarray,
    pool_ids: Sequence[str],
    pool_labels: np.ndarray,
    m: int,
    cap: int,
    *,
    min_queries: int = paper.CLUSTER_MIN_QUERIES,
    seed: int = 0,
    pool_scores: np.ndarray | None = None,
) -> pa.Table:
    """`cluster`: clusters with MORE than min_queries query images give min(m, size) images each.

    The choice in each cluster is seeded by (seed, cluster), so adding a qualifying cluster never
    changes another cluster's picks; the cap then keeps a seeded random `cap` of the union.
    `pool_scores` (cosine to the centroid, from `clustering.assign`) fills `similarity`.
    Rows come by cluster, then in pool order; `cluster_counts` gives the numbers for a report.
    """
    if len(pool_ids) != len(pool_labels):
        raise ValueError("pool_ids and pool_labels must have the same length")
    pool_labels = np.asarray(pool_labels, dtype=np.int64)
    qualifying = qualifying_clusters(query_labels, min_queries)
    order = np.argsort(pool_labels, kind="stable")  # pool indices grouped by cluster, pool order inside
    starts = np.searchsorted(pool_labels[order], qualifying, side="left")
    stops = np.searchsorted(pool_labels[order], qualifying, side="right")
    picked = []
    for c, lo, hi in zip(qualifying, starts, stops):
        members = order[lo:hi]
        if len(members) > m:
            rng = np.random.default_rng([seed, int(c)])
            members = np.sort(rng.choice(members, size=m, replace=False))
        picked.append(members)
    chosen = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
    retrieved = len(chosen)
    if retrieved > cap:
        rng = np.random.default_rng([seed, retrieved])
        chosen = chosen[np.sort(rng.choice(retrieved, size=cap, replace=False))]
    log.info("cluster retrieval %s: %d clusters with > %d queries, %d retrieved, %d kept (cap %d)",
             dataset, len(qualifying), min_queries, retrieved, len(chosen), cap)
    return retrieval_table(
        np.asarray(pool_ids)[chosen],  # no Python object per pool id: the pool may hold a billion
        seed_dataset=dataset,
        mode="cluster",
        clusters=pool_labels[chosen],
        similarities=None if pool_scores is None else np.asarray(pool_scores)[chosen],
    )


def merge_retrievals(tables: Iterable[pa.Table], keep_multiplicity: bool = False) -> tuple[pa.Table, dict[str, Any]]:
    """Concatenate retrievals; keep each image once (its first row) with all its provenance.

    With keep_multiplicity every row stays (each carrying the merged provenance). The collision
    report counts rows, unique images, duplicate rows, images retrieved more than once, images
    shared by several datasets, and per dataset its rows, unique images and internal collisions.
    """
    tables = [t.select(RETRIEVAL.names).cast(RETRIEVAL) for t in tables]
    table = pa.concat_tables(tables) if tables else RETRIEVAL.empty_table()
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
    datasets = [d if d is not None else "" for d in table.column("seed_dataset").to_pylist()]
    if len(ids) == 0:
        return table, {"rows": 0, "unique_images": 0, "duplicate_rows": 0, "collided_images": 0, "cross_dataset_images": 0, "per_dataset": {}}
    uniq, first, inverse, counts = np.unique(ids, return_index=True, return_inverse=True, return_counts=True)
    prov_rows = table.column("provenance").to_pylist()
    merged: list[list[Any]] = [[] for _ in uniq]
    image_sets: list[set[str]] = [set() for _ in uniq]
    for row, group in enumerate(inverse):
        merged[group].extend(json.loads(prov_rows[row]))
        image_sets[group].add(datasets[row])
    merged_json = [json.dumps(p) for p in merged]
    if keep_multiplicity:
        keep = np.arange(len(ids))
    else:
        keep = np.sort(first)
    out = table.take(pa.array(keep)).set_column(
        RETRIEVAL.get_field_index("provenance"), "provenance", pa.array([merged_json[inverse[i]] for i in keep], pa.string())
    )
    per_dataset: dict[str, dict[str, int]] = {}
    for name, rows in Counter(datasets).items():
        mask = np.fromiter((d == name for d in datasets), dtype=bool, count=len(datasets))
        unique_here = len(np.unique(inverse[mask]))
        per_dataset[name] = {"rows": rows, "unique_images": unique_here, "collisions": rows - unique_here}
    report = {
        "rows": int(len(ids)),
        "unique_images": int(len(uniq)),
        "duplicate_rows": int(len(ids) - len(uniq)),
        "collided_images": int(np.sum(counts > 1)),
        "cross_dataset_images": int(sum(len(s) > 1 for s in image_sets)),
        "per_dataset": per_dataset,
    }
    return out, report
