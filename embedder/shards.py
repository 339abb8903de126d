"""The embed stage on one pool shard, resumable: the unit the stage graph and `lvd embed` schedule.

An output file is current when its footer carries the same completion key: a hash of the input
shard's bytes and the model's identity (weights file + preprocessing). Batch size and worker
count are left out on purpose: they change speed, not which model embedded which images.

An image that cannot be decoded (issue 14: per-item isolation) is left out of the embedding file:
without a vector it is never retrieved, so it is not in the output. Given a `rejects_path`, the
shard writes those images' reject rows there (`_work/rejects/...`, gathered into
`RUN/rejects.parquet` by `pipelines.ingest.finalize_rejects`); without one (`lvd embed` alone)
it raises, as before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.config import EmbedConfig
from embedder import store
from embedder.inference import ERROR_COLUMN, embed_checked, embed_shared
from embedder.models import LoadedModel
from curation.core.rundir import file_digest, key_of, write_table
from curation.core.storage import as_path, parquet_rows, read_parquet

META_KEY = "lvd.embed.key"
META_MODEL = "lvd.embed.model"


def shard_key(in_path: str | Path, model: LoadedModel) -> str:
    """Completion key of embedding `in_path` with `model`."""
    return key_of("embed", file_digest(in_path), model.key)


def is_current(out_path: str | Path, key: str) -> bool:
    """Whether `out_path` exists and was written for this key (footer read only)."""
    path = as_path(out_path)
    if not path.is_file():
        return False
    try:
        return store.file_metadata(path).get(META_KEY) == key
    except Exception:  # an unreadable file is as good as absent: it is rewritten
        return False


def reject_rows(in_path: str | Path, failed: dict[str, str], stage: str) -> pa.Table:
    """REJECTS rows of the pool images (by image_id) that could not be embedded, named by their
    source (read back from the pool shard, only when there are failures)."""
    from curation.sources.images import Reject, rejects_table

    if not failed:
        return rejects_table([], stage)
    pool = read_parquet(in_path, columns=["image_id", "source"])
    sources = dict(zip(pool.column("image_id").to_pylist(), pool.column("source").to_pylist()))
    return rejects_table([Reject(sources.get(i, i), "decoder-error", error) for i, error in failed.items()], stage)


def split_failed(rows: pa.Table) -> tuple[pa.Table, dict[str, str]]:
    """An `embed_table_checked` result -> (EMBEDDINGS rows of the embedded images, {image_id:
    error} of the others)."""
    if ERROR_COLUMN not in rows.column_names:
        return rows, {}
    errors = rows.column(ERROR_COLUMN)
    bad = pc.is_valid(errors)
    failed = dict(zip(rows.column("image_id").filter(bad).to_pylist(), errors.filter(bad).to_pylist()))
    return rows.filter(pc.invert(bad)).drop_columns([ERROR_COLUMN]), failed


def embed_pool_shard(
    in_path: str | Path, out_path: str | Path, model: LoadedModel, cfg: EmbedConfig,
    rejects_path: str | Path | None = None, stage: str = "embed",
) -> dict[str, Any]:
    """Embed one pool shard into `out_path` unless it is already current.

    Returns `{"rows", "skipped", "seconds", "rejected"}`; rows are those of the output file.
    Images that cannot be decoded are left out and get reject rows (stage `stage`, reason
    `decoder-error`) in `rejects_path`, written for every shard embedded (empty when none failed,
    so a rerun replaces an earlier part); without `rejects_path` they raise.
    """
    return embed_pool_shard_shared(in_path, [ShardTarget(out_path, model, rejects_path, stage)], cfg)[0]


@dataclass(frozen=True)
class ShardTarget:
    """One model's output of a pool shard: its embeddings file and where its reject rows go."""

    out_path: str | Path
    model: LoadedModel
    rejects_path: str | Path | None = None
    stage: str = "embed"


def embed_pool_shard_shared(in_path: str | Path, targets: Sequence[ShardTarget], cfg: EmbedConfig
                            ) -> list[dict[str, Any]]:
    """`embed_pool_shard` for several models in one pass over the shard (issue 17): each image is
    decoded once for all the targets not yet current (`embedder.inference.embed_shared`); each
    file equals the one `embed_pool_shard` writes for its model alone. One stats dict per target."""
    start = time.perf_counter()
    keys = [shard_key(in_path, t.model) for t in targets]
    todo = [i for i, (t, key) in enumerate(zip(targets, keys)) if not is_current(t.out_path, key)]
    stats: list[dict[str, Any]] = [{} for _ in targets]
    for i, target in enumerate(targets):
        if i not in todo:
            stats[i] = {"rows": parquet_rows(target.out_path), "skipped": True, "rejected": 0}
    if todo:
        pool = read_parquet(in_path, columns=["image_id", "image"])
        images = pool.column("image").to_pylist()
        models = [targets[i].model for i in todo]
        if len(models) == 1:
            embs, failed = embed_checked(models[0], images, cfg.batch_size, cfg.num_workers)
            embs = [embs]
        else:
            embs, failed = embed_shared(models, images, cfg.batch_size, cfg.num_workers)
        for i, emb in zip(todo, embs):
            stats[i] = _write_shard(in_path, pool, emb, failed, targets[i], keys[i])
    seconds = time.perf_counter() - start
    return [{**s, "seconds": seconds} for s in stats]


def _write_shard(in_path: str | Path, pool: pa.Table, emb: np.ndarray, failed: dict[int, str],
                 target: ShardTarget, key: str) -> dict[str, Any]:
    """Write one model's embeddings of a shard (the images that decoded) and their reject rows."""
    if failed and target.rejects_path is None:
        row = min(failed)
        raise ValueError(f"{in_path}: image {row} cannot be decoded: {failed[row]}")
    ids = pool.column("image_id")
    if failed:
        keep = np.ones(pool.num_rows, dtype=bool)
        keep[list(failed)] = False
        ids, emb = ids.filter(pa.array(keep)), emb[keep]
    if target.rejects_path is not None:
        names = pool.column("image_id").to_pylist()
        write_table(reject_rows(in_path, {names[i]: e for i, e in failed.items()}, target.stage), target.rejects_path)
    store.write_embeddings(target.out_path, ids, emb, {META_KEY: key, META_MODEL: target.model.name})
    return {"rows": len(ids), "skipped": False, "rejected": len(failed)}
