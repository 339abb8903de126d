"""Stages `seeds` (ingest + embed the curated seed sets), `cluster` (k-means of the deduplicated
pool, for `cluster` rows) and `retrieve` (as_is / sample / cluster / balanced per recipe row; the
hierarchy balanced rows sample from is the `balance` stage's, pipelines/stages/balance.py)."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from curation.retrieval.balanced import hierarchical_sample_stats
from curation.retrieval.clustering import assign, scaled_k, train_kmeans, training_sample
from curation.core.ids import id_array
from curation.plan.planner import balanced_target, row_counts
from curation.retrieval.retrieve import merge_retrievals, retrieval_table, retrieve_as_is, retrieve_cluster, sample_table
from pipelines.context import RunContext
from pipelines.graph import config_fields
from pipelines.ingest import ingest_items
from curation.core.rundir import RunDir, write_json, write_table
from pipelines.stages.components import kept_ids
from pipelines.stages.embedding import embed_dir, model_key, read_unique
from pipelines.stages.balance import read_hierarchy
from pipelines.stages.pool_shards import PoolShards, pool_embeddings_dir, retrieval_model
from curation.core.storage import load_array, read_parquet, remove, save_array, save_npz

ASSIGNMENTS = "clusters/assignments.parquet"
CENTROIDS = "clusters/centroids.npy"
RETRIEVED = "retrieval/retrieved.parquet"


def run_seeds(ctx: RunContext) -> dict[str, Any]:
    """Ingest and embed every seed set of the recipe under RUN/seeds/<name>/."""
    counts: dict[str, Any] = {}
    model = ctx.cfg.retrieval.model or ctx.cfg.embed.model
    for seed in ctx.seeds:
        got = ingest_items(ctx.run, seed.iter_items(), ctx.cfg, ctx.engine, target=f"seeds/{seed.name}/pool")
        embed_dir(ctx, f"seeds/{seed.name}/pool", f"seeds/{seed.name}/embeddings", model)
        counts[f"{seed.name}_images"] = got["kept"]
    if retrieval_model(ctx) is not None:
        embed_dir(ctx, "pool", "retrieval_embeddings", model)
    return counts


def kept_pool(ctx: RunContext) -> PoolShards:
    """The deduplicated pool in the retrieval embedding space, file by file (vectors stay on disk)."""
    return PoolShards.plan(ctx, pool_embeddings_dir(ctx), kept_ids(ctx.run))


def run_cluster(ctx: RunContext) -> dict[str, Any]:
    """Centroids trained on a seeded sample that the workers read (the driver holds only the
    sample), then every kept vector assigned next to its embedding file. K is `clustering.k`, or
    the paper's scaled to the kept pool (`clustering.scaled_k`)."""
    c = ctx.cfg.clustering
    pool = kept_pool(ctx)
    k, k_note = scaled_k(c.k, len(pool), c.k_min)
    sample = training_sample(len(pool), c.train_sample, c.seed)
    centroids = train_kmeans(pool.gather(ctx, sample), k, c.niter, c.seed, None, use_gpu=c.use_gpu, init=c.init)
    save_array(ctx.run.path(CENTROIDS), centroids)
    labels, sims = pool.assign_all(ctx, str(ctx.run.path(CENTROIDS)), c.assign_batch, c.use_gpu)
    write_table(pa.table({"image_id": pa.array(pool.ids, pa.string()), "cluster": pa.array(labels, pa.int64()),
                          "similarity": pa.array(sims, pa.float32())}), ctx.run.path(ASSIGNMENTS))
    sizes = np.bincount(labels, minlength=len(centroids))
    return {"images": len(pool), "clusters": int(len(centroids)), "largest": int(sizes.max(initial=0)),
            "empty": int((sizes == 0).sum()), "files": len(pool.files), "k_note": k_note}


def _seed_vectors(run: RunDir, name: str) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = read_unique(run, f"seeds/{name}/embeddings")
    return np.char.decode(ids, "utf-8"), vectors  # query ids go into provenance JSON: str


def _sample_rows(ctx: RunContext, pool: PoolShards, dataset: str, ids: np.ndarray, vectors: np.ndarray, n: int,
                 slot: int) -> pa.Table:
    """`sample` retrieval over the pool's files: the queries go to the workers as a run file."""
    queries = ctx.run.path("retrieval", f"_queries-{slot}.npy")
    save_array(queries, np.asarray(vectors))
    try:
        sims, positions = pool.nearest_all(ctx, str(queries), n, ctx.cfg.retrieval.batch_size, "auto")
    finally:
        remove(queries)
    return sample_table(dataset, list(ids), pool.ids, sims, positions)


def _balanced_rows(ctx: RunContext, pool: PoolShards, target: int, slot: int) -> tuple[pa.Table, dict[str, Any]]:
    """`balanced` rows: top-down balanced sampling of the `balance` stage's hierarchy; what it did
    per level (cluster sizes before and after, caps) goes to RUN/retrieval/balanced-<slot>.npz."""
    b = ctx.cfg.clustering.balanced
    hierarchy, cos = read_hierarchy(ctx, pool)
    selected, stats = hierarchical_sample_stats(hierarchy, target, b.leaf_strategy, b.seed)
    leaf = hierarchy.levels[0].labels[selected]
    table = retrieval_table(pool.ids[selected], seed_dataset=None, mode="balanced", clusters=leaf,
                            similarities=cos[selected])
    arrays = {f"{what}_{level + 1}": values[level] for what, values in (("before", stats.before), ("after", stats.after),
                                                                        ("caps", stats.caps))
              for level in range(len(stats.before))}
    save_npz(ctx.run.path("retrieval", f"balanced-{slot}.npz"), **arrays)
    levels = [{"level": level + 1, "clusters": int(len(stats.before[level])),
               "nonempty_after": int((stats.after[level] > 0).sum()),
               "cap": int(stats.caps[level][0]) if len(stats.caps[level]) == 1 else None,
               "caps_median": float(np.median(stats.caps[level])) if len(stats.caps[level]) else None,
               "largest_before": int(stats.before[level].max(initial=0)),
               "largest_after": int(stats.after[level].max(initial=0))} for level in range(len(stats.before))]
    return table, {"levels": levels, "strategy": b.leaf_strategy}


def run_retrieve(ctx: RunContext) -> dict[str, Any]:
    pool = kept_pool(ctx)
    pool_ids = pool.ids
    rows = ctx.recipe.resolved_rows(ctx.cfg)
    centroids = pool_labels = pool_scores = None
    if any(row.mode == "cluster" for row in rows):
        assignments = read_parquet(ctx.run.path(ASSIGNMENTS))
        assigned = id_array(assignments.column("image_id"))
        order = np.argsort(assigned)
        if not np.array_equal(assigned[order], pool.ids):
            raise ValueError("clusters/assignments.parquet does not match the kept pool; rerun with --force cluster")
        pool_labels = assignments.column("cluster").to_numpy()[order]
        pool_scores = assignments.column("similarity").to_numpy()[order]
        centroids = load_array(ctx.run.path(CENTROIDS), mmap=False)
    tables, planned = [], []
    for slot, row in enumerate(rows):
        extra: dict[str, Any] = {}
        if row.mode == "balanced":  # the target is meant for the recipe's expected pool, if it names one
            target, basis = balanced_target(row.target, len(pool_ids), ctx.recipe.expected_pool)
            table, extra = _balanced_rows(ctx, pool, target, slot)
            tables.append(table)
            planned.append({"dataset": None, "mode": row.mode, "target": row.target, "seed_images": 0,
                            "planned": target, "got": int(table.num_rows), "balanced": {**extra, "target_basis": basis}})
            continue
        ids, vectors = _seed_vectors(ctx.run, row.dataset)
        if row.mode == "as_is":
            tables.append(retrieve_as_is(row.dataset, list(ids)))
        elif row.mode == "sample":
            tables.append(_sample_rows(ctx, pool, row.dataset, ids, vectors, row.n, slot))
        elif row.mode == "cluster":
            query_labels, _ = assign(vectors, centroids, ctx.cfg.clustering.assign_batch)
            tables.append(retrieve_cluster(row.dataset, query_labels, pool_ids, pool_labels, row.m, row.cap,
                                           seed=ctx.cfg.retrieval.seed, pool_scores=pool_scores,
                                           min_queries=ctx.cfg.retrieval.min_queries))
        k = len(centroids) if centroids is not None else 1  # K matters to cluster rows only
        expected = row_counts(replace(row, images=len(ids)), len(pool_ids), ctx.recipe.expected_pool,
                              k, ctx.cfg.retrieval.min_queries)[1]
        planned.append({"dataset": row.dataset, "mode": row.mode, "n": row.n, "m": row.m, "cap": row.cap,
                        "seed_images": int(len(ids)), "planned": expected, "got": int(tables[-1].num_rows)})
    merged, stats = merge_retrievals(tables, keep_multiplicity=ctx.cfg.retrieval.keep_multiplicity)
    write_table(merged, ctx.run.path(RETRIEVED))
    write_json({"name": ctx.recipe.name, "rows": planned, "collisions": stats}, ctx.run.path("recipe.json"))
    return {"retrieved_rows": int(sum(t.num_rows for t in tables)), "unique_images": merged.num_rows,
            **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}


def cluster_key(ctx: RunContext) -> Any:
    """`cluster` (reads the kept ids and the pool's vectors): the k-means settings and which
    embeddings it clusters; not `clustering.balanced` (the retrieve stage's)."""
    fields = ("k", "k_min", "niter", "train_sample", "init", "assign_batch", "use_gpu", "seed")
    return {**config_fields(ctx.cfg, *(f"clustering.{f}" for f in fields)), "vectors": pool_embeddings_dir(ctx)}


def recipe_key(ctx: RunContext) -> Any:
    """`retrieve` (reads the kept ids, clusters, the balanced hierarchy and seed and pool vectors):
    the recipe's rows (its `config:` block is in the run config), `retrieval.*`, and of `clustering`
    the balanced target rows resolve with, how balanced rows sample, and the batch the queries are
    assigned in."""
    recipe = ctx.recipe.model_dump(mode="json", exclude={"config"}) if ctx.recipe is not None else None
    return [recipe, config_fields(ctx.cfg, "retrieval", "clustering.assign_batch", "clustering.balanced.target",
                                  "clustering.balanced.leaf_strategy", "clustering.balanced.seed"),
            pool_embeddings_dir(ctx)]


def seeds_key(ctx: RunContext) -> Any:
    """`seeds` (reads the pool when it embeds it again with the retrieval model): the seed sets,
    their ingest, the retrieval model and whether the pool is embedded with it."""
    from curation.sources.inputs import fingerprint

    model = ctx.cfg.retrieval.model or ctx.cfg.embed.model
    return [[(s.name, s.location.path, s.location.format) for s in ctx.seeds],
            [fingerprint([s.location.path]) for s in ctx.seeds],
            config_fields(ctx.cfg, "decode", "shard_rows", "safety"), model_key(ctx.cfg, model),
            retrieval_model(ctx) is not None]


def summarize_recipe(run: RunDir) -> dict[str, Any]:
    path = run.path("recipe.json")
    return json.loads(path.read_text()) if path.exists() else {}
