"""Stages of embedding dedup: `embed` (pool), `knn_edges` (self-dedup graph), `eval_embed` and
`eval_edges` (relative dedup against evaluation sets)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curation.core import schemas
from curation.config import EmbedConfig, KnnConfig, RunConfig
from curation.core.ids import as_ids
from curation.dedup.knn_scores import HISTOGRAM_KEY, KnnGraph, Pairs
from curation.sources.inputs import fingerprint, iter_sources
from pipelines.context import RunContext, has_recipe
from pipelines.graph import config_fields
from pipelines.ingest import ingest_items
from curation.core.rundir import RunDir, write_table
from pipelines.stages.pool_shards import PoolShards, read_rows
from curation.core.storage import create_array, files, parquet_rows, publish_array

KNN_EDGES = "dedup/knn_edges.parquet"
EVAL_EDGES = "dedup/eval_edges.parquet"
KNN_NEAR = "dedup/knn_near_misses.parquet"
EVAL_NEAR = "dedup/eval_near_misses.parquet"
WHITENING = "dedup/whitening.npz"
VECTORS = "_work/knn"  # the k-NN steps' input vectors, memory-mapped (one .npy per folder)


def embed_task(in_path: str, out_path: str, cfg: dict[str, Any], rejects_path: str | None = None,
               stage: str = "embed") -> dict[str, Any]:
    """Embed one shard (the model is loaded once per process and cached); images that cannot be
    decoded get reject rows in `rejects_path`."""
    from embedder.models import load_from_config
    from embedder.shards import embed_pool_shard

    ecfg = EmbedConfig.model_validate(cfg)
    return embed_pool_shard(in_path, out_path, load_from_config(ecfg), ecfg, rejects_path, stage)


def embed_rejects(ctx: RunContext, pool_dir: str, out_dir: str, name: str) -> tuple[str, str]:
    """(reject part of one embedded shard, its stage name): `_work/rejects/<out_dir>/<name>`, stage
    `embed` for the pool's dedup embeddings, `<pool_dir>-embed` for other inputs (as ingest names
    `<target>-decode`), `retrieval-embed` for the pool's retrieval embeddings."""
    from pipelines.ingest import REJECTS_DIR

    stage = ("embed" if out_dir == "embeddings" else "retrieval-embed") if pool_dir == "pool" else f"{pool_dir}-embed"
    return str(ctx.run.path(REJECTS_DIR, out_dir, name)), stage


def embed_batch_fn(cfg: dict[str, Any]) -> Callable[[pa.Table], pa.Table]:
    """Built once per worker of an engine's file pipeline: loads the model, then maps a shard's
    (image_id, image) rows to EMBEDDINGS rows in the same order."""
    from embedder.inference import embed_table_checked
    from embedder.models import load_from_config

    ecfg = EmbedConfig.model_validate(cfg)
    model = load_from_config(ecfg)
    return lambda rows: embed_table_checked(rows, model, ecfg.batch_size, ecfg.num_workers)


@dataclass(frozen=True)
class EmbeddingWriter:
    """Writes one shard's embeddings with the completion key `embed_pool_shard` writes, so the
    files equal the per-shard path's and resume the same way."""

    keys: dict[str, str]  # out_path -> shard key
    model_name: str
    dim: int
    rejects: dict[str, tuple[str, str]]  # out_path -> (reject part, stage) (`embed_rejects`)

    def __call__(self, in_path: str, out_path: str, rows: pa.Table | None) -> dict[str, Any]:
        from embedder.shards import META_KEY, META_MODEL, reject_rows, split_failed
        from embedder.store import table_embeddings, write_embeddings

        rows, failed = split_failed(rows) if rows is not None else (None, {})
        ids = rows.column("image_id") if rows is not None else pa.array([], pa.string())
        emb = table_embeddings(rows, self.dim)[1] if rows is not None else np.empty((0, self.dim), np.float16)
        rejects_path, stage = self.rejects[out_path]
        write_table(reject_rows(in_path, failed, stage), rejects_path)
        write_embeddings(out_path, ids, emb, {META_KEY: self.keys[out_path], META_MODEL: self.model_name})
        return {"rows": len(ids), "skipped": False, "rejected": len(failed)}


def _embed_files(ctx: RunContext, ecfg: EmbedConfig, shards: list[Any], pool_dir: str, out_dir: str
                 ) -> list[dict[str, Any]]:
    """The embed stage through an engine's `map_parquet` (Ray Data actor pool, Beam RunInference)."""
    from embedder.models import load_from_config
    from embedder.shards import is_current, shard_key

    model = load_from_config(ecfg)  # its key and width; the workers load their own copies
    keys = {str(ctx.run.path(out_dir, p.name)): shard_key(p, model) for p in shards}
    jobs = [(str(p), out) for p, (out, key) in zip(shards, keys.items()) if not is_current(out, key)]
    rejects = {str(ctx.run.path(out_dir, p.name)): embed_rejects(ctx, pool_dir, out_dir, p.name) for p in shards}
    writer = EmbeddingWriter(keys, model.name, model.embed_dim, rejects)
    ctx.engine.map_parquet(jobs, ["image_id", "image"], partial(embed_batch_fn, ecfg.model_dump(mode="json")), writer,
                           desc=f"embed {out_dir}")
    return [{"rows": parquet_rows(out)} for out in keys]


def embed_dir(ctx: RunContext, pool_dir: str, out_dir: str, model: str | None = None) -> dict[str, Any]:
    ecfg = ctx.cfg.embed if model is None else ctx.cfg.embed.model_copy(update={"model": model})
    shards = files(ctx.run.path(pool_dir), "part-*.parquet")
    if hasattr(ctx.engine, "map_parquet"):  # engine model path (Ray Data actor pool, Beam RunInference)
        stats = _embed_files(ctx, ecfg, shards, pool_dir, out_dir)
    else:
        tasks = [(str(p), str(ctx.run.path(out_dir, p.name)), ecfg.model_dump(mode="json"),
                  *embed_rejects(ctx, pool_dir, out_dir, p.name)) for p in shards]
        stats = ctx.engine.map(embed_task, tasks, desc=f"embed {pool_dir}", total=len(tasks), model_bound=True)
    return {"embedded": int(sum(s["rows"] for s in stats)), "model": ecfg.model, **_gather_rejects(ctx, out_dir)}


def _gather_rejects(ctx: RunContext, out_dir: str) -> dict[str, Any]:
    """Images that could not be decoded: their reject rows join RUN/rejects.parquet (counted from
    the parts' footers, so a resumed stage whose shards were all done still gathers them)."""
    from pipelines.ingest import REJECTS_DIR, finalize_rejects

    rejected = sum(parquet_rows(p) for p in files(ctx.run.path(REJECTS_DIR, out_dir), "part-*.parquet"))
    if rejected:
        finalize_rejects(ctx.run)
    return {"embed_rejected": int(rejected)} if rejected else {}


def shared_retrieval_model(ctx: RunContext) -> str | None:
    """The retrieval model that the `embed` stage runs on the pool in the same pass as the dedup
    model (issue 17: one decode for both), or None. Only when the `seeds` stage will want the pool
    in the retrieval space (a different model, a recipe) and the engine runs model tasks through
    `map` (the Ray / Beam file pipelines embed one model per pass)."""
    wanted = ctx.cfg.retrieval.model or ctx.cfg.embed.model
    if not ctx.cfg.embed.shared_decode or wanted == ctx.cfg.dedup_model() or not has_recipe(ctx) or hasattr(ctx.engine, "map_parquet"):
        return None
    return wanted


def embed_shared_task(in_path: str, targets: list[tuple[str, dict[str, Any], str, str]]) -> list[dict[str, Any]]:
    """Embed one shard with several models in one pass; `targets`: (out_path, EmbedConfig as
    JSON, reject part, stage) per model. The first config's batch size and workers are used."""
    from embedder.models import load_from_config
    from embedder.shards import ShardTarget, embed_pool_shard_shared

    cfgs = [EmbedConfig.model_validate(cfg) for _, cfg, _, _ in targets]
    return embed_pool_shard_shared(in_path, [ShardTarget(out, load_from_config(c), rej, stage)
                                             for (out, _, rej, stage), c in zip(targets, cfgs)], cfgs[0])


def embed_pool_shared(ctx: RunContext, outputs: list[tuple[str, str]]) -> dict[str, Any]:
    """Embed the pool once per shard for every (model, out_dir) of `outputs`; each out_dir's files
    (and resume keys, and reject parts) are those `embed_dir` would write for its model alone, so
    a later `embed_dir` of the same model finds them current and skips them."""
    shards = files(ctx.run.path("pool"), "part-*.parquet")
    cfgs = {model: ctx.cfg.embed.model_copy(update={"model": model}).model_dump(mode="json") for model, _ in outputs}
    tasks = [(str(p), [(str(ctx.run.path(out_dir, p.name)), cfgs[model], *embed_rejects(ctx, "pool", out_dir, p.name))
                       for model, out_dir in outputs]) for p in shards]
    stats = ctx.engine.map(embed_shared_task, tasks, desc="embed pool (shared decode)", total=len(tasks), model_bound=True)
    counts: dict[str, Any] = {}
    for j, (model, out_dir) in enumerate(outputs):
        prefix = "" if j == 0 else f"{out_dir}_"
        counts.update({f"{prefix}embedded": int(sum(s[j]["rows"] for s in stats)), f"{prefix}model": model,
                       **{f"{prefix}{k}": v for k, v in _gather_rejects(ctx, out_dir).items()}})
    return counts


def read_unique(run: RunDir, out_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique image_ids as byte strings (`curation.core.ids`), float16 L2-normalised embeddings)
    of one embeddings folder."""
    from embedder.store import read_embeddings

    ids, emb = read_embeddings(files(run.path(out_dir), "part-*.parquet"))
    uids, first = np.unique(as_ids(ids), return_index=True)
    return uids, emb[first]


def verify_enabled(cfg: RunConfig) -> bool:
    """Whether the `verify` stage checks the dedup graphs' pairs: `dedup.verify.enabled`, else
    whether the dedup model has a verified calibration."""
    from embedder.models import calibration

    flag = cfg.dedup.verify.enabled
    return bool(flag) if flag is not None else calibration(cfg.dedup_model()).verified_self is not None


def thresholds(cfg: RunConfig) -> tuple[float, float, int]:
    """(self, relative) thresholds and whitening dim: the config's, else the dedup model's calibration
    (its candidate thresholds when the pairs are verified, where it has them)."""
    from embedder.models import calibration

    cal, d = calibration(cfg.dedup_model()), cfg.dedup
    self_t, rel_t = cal.self_threshold, cal.relative_threshold
    if verify_enabled(cfg) and cal.verified_self is not None:
        self_t, rel_t = cal.verified_self, cal.verified_relative
    return (d.self_threshold if d.self_threshold is not None else self_t,
            d.relative_threshold if d.relative_threshold is not None else rel_t,
            d.whiten_dim if d.whiten_dim is not None else cal.whiten_dim)


def dedup_knn_config(cfg: RunConfig) -> KnnConfig:
    """The k-NN settings of the dedup graphs: `knn.*` with the score normalisation of `dedup.*`,
    else of the dedup model's calibration."""
    from embedder.models import calibration

    cal, d = calibration(cfg.dedup_model()), cfg.dedup
    return cfg.knn.model_copy(update={
        "background_rank": d.background_rank if d.background_rank is not None else cal.background_rank,
        "background_weight": d.background_weight if d.background_weight is not None else cal.background_weight})


def dedup_vectors(ctx: RunContext, folder: str, fit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, vectors) ready for the k-NN graph: whitened when calibrated so (fitted
    on a seeded sample of the pool when `fit`), as a read-only memmap under `_work/knn/`. The
    embedding files' rows are copied one file at a time into a memmap in sorted-id order; whitening
    then runs over that whole memmap in the fixed row blocks of `Whitening.apply` (a product's
    rounding depends on its shape, so never per file: the bytes do not depend on the file split).
    The driver never holds the pool's vectors; the k-NN paths read the memmap in batches and
    distributed engines hand workers its path, not its bytes."""
    from curation.dedup.whitening import Whitening, fit_rows

    pool = PoolShards.plan(ctx, folder)
    dim = thresholds(ctx.cfg)[2]
    whitening = None
    if dim > 0:
        path = ctx.run.path(WHITENING)
        if fit:
            sample = pool.gather(ctx, fit_rows(len(pool), seed=ctx.cfg.seed))
            Whitening.fit(sample, dim, ctx.cfg.dedup.whiten_eps, seed=ctx.cfg.seed).save(path)
        whitening = Whitening.load(path)
    name = folder.replace("/", "-")
    out = ctx.run.path(VECTORS, name + ".npy")
    # the embeddings as stored, in sorted-id order: the k-NN input itself, or whitening's input
    raw = None
    for f in tqdm(pool.files, desc=f"vectors {folder}", unit="file", disable=not ctx.progress, leave=False):
        part = read_rows(f.path, f.rows)
        if raw is None:  # the first file fixes width and dtype (an empty file still has both)
            raw = create_array(out if whitening is None else ctx.run.path(VECTORS, name + ".raw.npy"),
                               part.dtype, (len(pool), part.shape[1]))
        raw[f.positions] = part
    if raw is None:
        raise FileNotFoundError(f"no embedding files under {ctx.run.path(folder)}")
    if whitening is None:
        return pool.ids, publish_array(out, raw)
    vectors = whitening.apply(raw, out=create_array(out, np.float32, (len(pool), whitening.projection.shape[1])))
    local_raw = Path(raw.filename)  # never published: a local file (the run directory's or the cache's)
    del raw
    local_raw.unlink()
    return pool.ids, publish_array(out, vectors)


def _pairs_table(src_ids: np.ndarray, dst_ids: np.ndarray, pairs: Pairs) -> pa.Table:
    """SCORED_EDGES rows of a graph's pairs, rows named by the ids of their two sides."""
    return pa.table({"src": pa.array(src_ids[pairs.src], pa.string()), "dst": pa.array(dst_ids[pairs.dst], pa.string()),
                     "sim": pa.array(pairs.sim, pa.float32()), "score": pa.array(pairs.score, pa.float32())},
                    schema=schemas.SCORED_EDGES)


def _write_graph(ctx: RunContext, graph: KnnGraph, src_ids: np.ndarray, dst_ids: np.ndarray, edges: str,
                 near: str) -> dict[str, Any]:
    """The graph's edges and near misses written; its score histogram, for the stage's counts."""
    write_table(_pairs_table(src_ids, dst_ids, graph.edges), ctx.run.path(edges))
    write_table(_pairs_table(src_ids, dst_ids, graph.near), ctx.run.path(near))
    return {"near_misses": len(graph.near), HISTOGRAM_KEY: graph.histogram}


def run_embed(ctx: RunContext) -> dict[str, Any]:
    """The pool's dedup embeddings; also its retrieval embeddings in the same pass when the recipe
    will need them (`shared_retrieval_model`): the `seeds` stage then finds them current."""
    also = shared_retrieval_model(ctx)
    if also is None:
        return embed_dir(ctx, "pool", "embeddings", ctx.cfg.dedup_model())
    return embed_pool_shared(ctx, [(ctx.cfg.dedup_model(), "embeddings"), (also, "retrieval_embeddings")])


def run_knn_edges(ctx: RunContext) -> dict[str, Any]:
    try:
        uids, emb = dedup_vectors(ctx, "embeddings", fit=True)
        self_t = thresholds(ctx.cfg)[0]
        graph = ctx.engine.knn_graph(emb, ctx.cfg.dedup.k, self_t, dedup_knn_config(ctx.cfg))
    finally:
        ctx.run.clear(VECTORS)
    return {"images": len(uids), "threshold": self_t,
            **{k: v for k, v in graph.info.items() if not isinstance(v, (dict, list))},
            **_write_graph(ctx, graph, uids, uids, KNN_EDGES, KNN_NEAR)}


def run_eval_embed(ctx: RunContext) -> dict[str, Any]:
    counts = ingest_items(ctx.run, iter_sources(ctx.eval_sources), ctx.cfg, ctx.engine, target="eval/pool")
    return {**{f"eval_{k}": v for k, v in counts.items()}, **embed_dir(ctx, "eval/pool", "eval/embeddings", ctx.cfg.dedup_model())}


def run_eval_edges(ctx: RunContext) -> dict[str, Any]:
    try:
        pool_ids, pool_emb = dedup_vectors(ctx, "embeddings")
        eval_ids, eval_emb = dedup_vectors(ctx, "eval/embeddings")
        rel_t = thresholds(ctx.cfg)[1]
        graph = ctx.engine.cross_graph(pool_emb, eval_emb, ctx.cfg.dedup.k, rel_t, dedup_knn_config(ctx.cfg))
    finally:
        ctx.run.clear(VECTORS)
    return {"eval_images": len(eval_ids), "threshold": rel_t, "eval_edges": len(graph.edges),
            "pool_images_hit": int(len(np.unique(graph.edges.dst))),
            **_write_graph(ctx, graph, eval_ids, pool_ids, EVAL_EDGES, EVAL_NEAR)}


def model_key(cfg: RunConfig, model: str) -> dict[str, Any]:
    """What of the config decides the vectors `model` gives: its name, device, compilation, weight
    files, input size and runtime (onnxruntime and torch differ in the last bits), and its file and
    preprocessing when it names an `embed.models` entry (only then: other runs keep their keys).
    Batch size, DataLoader workers and threads change speed only (as in `embedder.shards.shard_key`): left out."""
    described = cfg.embed.models.get(model)
    return {"model": model, **config_fields(cfg, "embed.device", "embed.compile", "embed.weights", "embed.image_size",
                                            "embed.runtime"),
            **({"model_file": described.model_dump(mode="json")} if described is not None else {})}


def embed_key(ctx: RunContext) -> Any:
    """`embed` (reads the pool): the dedup model only, none of the dedup thresholds."""
    return model_key(ctx.cfg, ctx.cfg.dedup_model())


def _graph_fields(cfg: RunConfig) -> dict[str, Any]:
    """k and the k-NN settings of both dedup graphs (score normalisation resolved)."""
    return {**config_fields(cfg, "dedup.k"), "knn": dedup_knn_config(cfg).model_dump(mode="json")}


def knn_key(ctx: RunContext) -> Any:
    """`knn_edges` (reads the embeddings): the graph, the self threshold and the whitening it fits
    (dim, eps, seed), resolved against the dedup model's calibration."""
    self_t, _, dim = thresholds(ctx.cfg)
    return {**_graph_fields(ctx.cfg), "self_threshold": self_t, "whiten_dim": dim,
            **config_fields(ctx.cfg, "dedup.whiten_eps", "seed")}


def eval_key(ctx: RunContext) -> Any:
    """`eval_embed` (reads no stage): the evaluation sets, their ingest and the dedup model."""
    return [ctx.eval_sources, fingerprint(ctx.eval_sources) if ctx.eval_sources else None,
            config_fields(ctx.cfg, "decode", "shard_rows", "safety"), model_key(ctx.cfg, ctx.cfg.dedup_model())]


def eval_edges_key(ctx: RunContext) -> Any:
    """`eval_edges` (reads both embeddings and `knn_edges`' whitening): the graph and the relative
    threshold."""
    _, rel_t, dim = thresholds(ctx.cfg)
    return {**_graph_fields(ctx.cfg), "relative_threshold": rel_t, "whiten_dim": dim}
