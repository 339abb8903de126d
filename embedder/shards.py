"""The embed stage on one pool shard, resumable: the unit the stage graph and `lvd embed` schedule.

An output file is current when its footer carries the same completion key: a hash of the input
shard's bytes and the model's identity (weights file + preprocessing). Batch size and worker
count are left out on purpose: they change speed, not which model embedded which images.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from curation.config import EmbedConfig
from embedder import store
from embedder.inference import embed_bytes
from embedder.models import LoadedModel
from pipelines.rundir import file_digest, key_of
from pipelines.storage import as_path, parquet_rows, read_parquet

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


def embed_pool_shard(
    in_path: str | Path, out_path: str | Path, model: LoadedModel, cfg: EmbedConfig
) -> dict[str, Any]:
    """Embed one pool shard into `out_path` unless it is already current.

    Returns `{"rows", "skipped", "seconds"}`; rows are those of the output file.
    """
    start = time.perf_counter()
    key = shard_key(in_path, model)
    if is_current(out_path, key):
        rows = parquet_rows(out_path)
        return {"rows": rows, "skipped": True, "seconds": time.perf_counter() - start}
    pool = read_parquet(in_path, columns=["image_id", "image"])
    emb = embed_bytes(model, pool.column("image").to_pylist(), cfg.batch_size, cfg.num_workers)
    store.write_embeddings(out_path, pool.column("image_id"), emb, {META_KEY: key, META_MODEL: model.name})
    return {"rows": pool.num_rows, "skipped": False, "seconds": time.perf_counter() - start}
