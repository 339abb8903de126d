"""Stage `balance`: hierarchical k-means of the deduplicated pool for `mode: balanced` recipe rows
(Vo et al. 2024; DINOv3's clustering part), at pool scale.

- Level 1 trains its coarse clusters on a seeded sample of `clustering.balanced.train_sample` kept
  images that the workers read (`PoolShards.gather`); with splits, every kept image is then
  shuffled to the bucket of its coarse cluster (`PoolShards.spill_by_coarse`) and one engine task
  per bucket splits its clusters by k-means of all their members (`balanced.split_members`, on one
  thread: the same bytes on every engine). Every kept image is then assigned to its leaf by engine
  tasks next to its embedding file (`PoolShards.assign_leaves_all`); resampling steps, when the
  level has them, are the same passes (assign, take the `sample_size` closest per cluster, re-fit
  on those). The driver holds the sample, centroids, counts and the per-image labels it writes,
  never the pool's vectors.
- Levels 2 and up cluster the centroids of the level below, in the driver (`balanced.next_level`).
- Every level is written to `RUN/balanced/level-<l>/` with a `done.json`: a run killed midway
  resumes at the first level without one (a level-1 model already trained is reused too).

The levels are the config's scaled to the pool (`balanced.scaled_levels`). The sampling itself
(top-down, `balanced.hierarchical_sample_stats`) runs in the `retrieve` stage, per balanced row.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from curation.retrieval.balanced import (
    Hierarchy,
    LevelPlan,
    hierarchy_from_levels,
    kmeans,
    level_seed,
    lloyd,
    next_level,
    per_cluster_take,
    scaled_levels,
)
from curation.retrieval.balanced_leaves import compact_leaves, leaf_model, split_members, unsplit
from curation.retrieval.clustering import as_float32, training_sample
from curation.core.ids import id_array
from pipelines.context import RunContext
from pipelines.graph import config_fields
from curation.core.rundir import write_json, write_table
from pipelines.stages.pool_shards import PoolShards, pool_embeddings_dir
from curation.core.storage import files, load_array, load_npz, read_parquet, save_array

BALANCED = "balanced"
#: Kept images per split task, on average (its coarse clusters' members in memory: 2.6 GB at d=1280).
SPLIT_BUCKET_ROWS = 1_000_000
#: Fields of `clustering.balanced` the hierarchy depends on (the rest: how the retrieve stage samples).
HIERARCHY_FIELDS = ("preset", "clusters", "splits", "resampling_steps", "sample_sizes", "clusters_pool", "min_clusters",
                    "train_sample", "niter", "float64", "resample_strategy", "seed")


def _level_dir(ctx: RunContext, level: int) -> str:
    return str(ctx.run.path(BALANCED, f"level-{level}"))


def _done(ctx: RunContext, level: int, name: str = "done.json") -> dict[str, Any] | None:
    path = ctx.run.path(BALANCED, f"level-{level}", name)
    return json.loads(path.read_text()) if path.exists() else None


def _save_model(folder: str, model: Any) -> None:
    for name, array in model.arrays().items():
        save_array(f"{folder}/{name}.npy", array)


def _level_one(ctx: RunContext, pool: PoolShards, plan: LevelPlan) -> dict[str, Any]:
    """Train level 1 on the sample (or reuse a trained model), assign every kept image, compact."""
    b = ctx.cfg.clustering.balanced
    use_gpu = ctx.cfg.clustering.use_gpu
    folder = _level_dir(ctx, 1)
    k, parts, steps, size = plan.clusters[0], plan.splits[0], plan.resampling_steps[0], plan.sample_sizes[0]
    seed = level_seed(b.seed, 0)
    if _done(ctx, 1, "model.json") is None:
        sample = training_sample(len(pool), b.train_sample, b.seed)
        x = as_float32(pool.gather(ctx, sample))
        coarse, _, _ = kmeans(x, k, b.niter, seed, b.float64, use_gpu)
        if size > 1 and steps > 0:  # resampling passes over the whole pool (their web config skips level 1)
            for step in range(steps):
                _save_model(f"{folder}/resample", unsplit(coarse))
                labels, sqd, _ = pool.assign_leaves_all(ctx, f"{folder}/resample", ctx.cfg.clustering.assign_batch, use_gpu)
                key = sqd if b.resample_strategy == "closest" else np.random.default_rng([seed, step]).random(len(labels))
                picked = per_cluster_take(labels, key, size)
                coarse, _, _ = lloyd(as_float32(pool.gather(ctx, picked)), coarse, b.niter, b.float64, use_gpu)
            ctx.run.clear(BALANCED, "level-1", "resample")
        del x
        model = _split_pool(ctx, pool, coarse, parts, seed) if parts > 1 else unsplit(coarse)
        _save_model(folder, model)
        write_json({"coarse": int(len(model.coarse)), "leaves": int(len(model.leaves)),
                    "train_sample": int(len(pool) if sample is None else len(sample))}, f"{folder}/model.json")
    labels, sqd, cos = pool.assign_leaves_all(ctx, folder, ctx.cfg.clustering.assign_batch, use_gpu)
    leaves, labels = compact_leaves(load_array(f"{folder}/leaves.npy"), labels)
    save_array(f"{folder}/centroids.npy", leaves)
    write_table(pa.table({"image_id": pa.array(pool.ids, pa.string()), "cluster": pa.array(labels, pa.int64()),
                          "sqdist": pa.array(sqd, pa.float32()), "similarity": pa.array(cos, pa.float32())}),
                f"{folder}/assignments.parquet")
    info = {"level": 1, "items": len(pool), "clusters": int(len(leaves)), **(_done(ctx, 1, "model.json") or {})}
    write_json(info, f"{folder}/done.json")
    return info


def _split_bucket(spill_dir: str, bucket: int, parts: int, niter: int, seed: int, float64: bool) -> dict[int, np.ndarray]:
    """Engine task: the leaves of every coarse cluster of one bucket, from its spilled members."""
    spilled = [load_npz(p) for p in files(f"{spill_dir}/b{bucket:06d}", "f*.npz")]
    return split_members(np.concatenate([d["vectors"] for d in spilled]), np.concatenate([d["coarse"] for d in spilled]),
                         np.concatenate([d["positions"] for d in spilled]), parts, niter, seed, float64)


def _split_pool(ctx: RunContext, pool: PoolShards, coarse: np.ndarray, parts: int, seed: int) -> Any:
    """Level 1's splits over every kept image (as Vo et al. split each cluster's points): a shuffle
    of the vectors by coarse cluster (`PoolShards.spill_by_coarse`), then one k-means task per
    bucket of coarse clusters (`SPLIT_BUCKET_ROWS` images each on average). The driver holds the
    centroids and counts only."""
    b = ctx.cfg.clustering.balanced
    folder, spill = _level_dir(ctx, 1), str(ctx.run.path("_work", "balance", "spill"))
    _save_model(f"{folder}/coarse-only", unsplit(coarse))
    buckets = max(1, min(len(coarse), -(-len(pool) // SPLIT_BUCKET_ROWS)))
    per_bucket = -(-len(coarse) // buckets)
    counts = pool.spill_by_coarse(ctx, f"{folder}/coarse-only", spill, per_bucket, ctx.cfg.clustering.assign_batch,
                                  ctx.cfg.clustering.use_gpu)
    tasks = [(spill, bk, parts, b.niter, seed, b.float64) for bk in sorted({int(c) // per_bucket for c in np.flatnonzero(counts)})]
    leaves: dict[int, np.ndarray] = {}
    for found in ctx.engine.map(_split_bucket, tasks, desc="split coarse clusters", total=len(tasks)):
        leaves.update(found)
    ctx.run.clear("_work", "balance")
    ctx.run.clear(BALANCED, "level-1", "coarse-only")
    return leaf_model(coarse, leaves)


def read_level_one(ctx: RunContext, pool: PoolShards) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(leaf centroids, leaf of every kept image, squared distance, cosine) in the kept pool's order."""
    folder = _level_dir(ctx, 1)
    table = read_parquet(f"{folder}/assignments.parquet")
    if not np.array_equal(id_array(table.column("image_id")), pool.ids):
        raise ValueError(f"{folder}/assignments.parquet does not match the kept pool; rerun with --force balance")
    return (load_array(f"{folder}/centroids.npy"), table.column("cluster").to_numpy(),
            table.column("sqdist").to_numpy(), table.column("similarity").to_numpy())


def read_hierarchy(ctx: RunContext, pool: PoolShards) -> tuple[Hierarchy, np.ndarray]:
    """The stored hierarchy (every level the stage wrote) and every kept image's cosine to its leaf."""
    info = json.loads(ctx.run.path(BALANCED, "levels.json").read_text())
    centroids, labels, sqd, cos = read_level_one(ctx, pool)
    upper = [(load_array(f"{_level_dir(ctx, lv)}/centroids.npy"),
              load_array(f"{_level_dir(ctx, lv)}/labels.npy", mmap=False)) for lv in range(2, info["levels"] + 1)]
    return hierarchy_from_levels(centroids, labels, sqd, upper), cos


def run_balance(ctx: RunContext) -> dict[str, Any]:
    b = ctx.cfg.clustering.balanced
    pool = PoolShards.plan(ctx, pool_embeddings_dir(ctx), _kept_ids(ctx))
    plan = scaled_levels(b, len(pool))
    infos = [_done(ctx, 1) or _level_one(ctx, pool, plan)]
    centroids, labels, _, _ = read_level_one(ctx, pool)
    x, below = centroids, np.bincount(labels, minlength=len(centroids)).astype(np.int64)
    for i in range(1, len(plan.clusters)):
        level = i + 1
        folder = _level_dir(ctx, level)
        if _done(ctx, level) is None:
            lv, _ = next_level(x, below, plan.clusters[i], plan.splits[i], plan.resampling_steps[i], plan.sample_sizes[i],
                               niter=b.niter, float64=b.float64, resample_strategy=b.resample_strategy,
                               seed=level_seed(b.seed, i), use_gpu=ctx.cfg.clustering.use_gpu)
            save_array(f"{folder}/centroids.npy", lv.centroids)
            save_array(f"{folder}/labels.npy", lv.labels)
            write_json({"level": level, "items": int(len(x)), "clusters": int(len(lv.centroids))}, f"{folder}/done.json")
        infos.append(_done(ctx, level))
        x = load_array(f"{folder}/centroids.npy", mmap=False)
        below = np.bincount(load_array(f"{folder}/labels.npy", mmap=False), weights=below, minlength=len(x)).astype(np.int64)
    write_json({"levels": len(infos), "plan": {"clusters": plan.clusters, "splits": plan.splits,
                                               "resampling_steps": plan.resampling_steps, "sample_sizes": plan.sample_sizes,
                                               "factor": plan.factor, "dropped": plan.dropped, "note": plan.note},
                "per_level": infos}, ctx.run.path(BALANCED, "levels.json"))
    return {"images": len(pool), "levels": " -> ".join(f"{info['clusters']:,}" for info in infos),
            "largest_leaf": int(np.bincount(labels).max(initial=0)), "files": len(pool.files), "levels_note": plan.note}


def _kept_ids(ctx: RunContext) -> np.ndarray:
    from pipelines.stages.components import kept_ids

    return kept_ids(ctx.run)


def balance_key(ctx: RunContext) -> Any:
    """`balance` (reads the kept ids and the pool's vectors): the hierarchy's settings, the k-means
    device and batch, and which embeddings it clusters."""
    fields = [f"clustering.balanced.{f}" for f in HIERARCHY_FIELDS]
    return {**config_fields(ctx.cfg, *fields, "clustering.use_gpu", "clustering.assign_batch"),
            "vectors": pool_embeddings_dir(ctx)}
