"""Stage `components`: merge every detector's edges into `RUN/dedup/components.parquet`."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from curation.dedup import build_components, summarize, unique_images
from curation.ids import id_array
from pipelines.context import RunContext
from pipelines.rundir import RunDir, write_table
from pipelines.stages.hashing import EDGES_FILE as HASH_EDGES
from pipelines.storage import read_parquet

NEAR_EDGES = "dedup/knn_edges.parquet"
EVAL_EDGES = "dedup/eval_edges.parquet"
COMPONENTS = "dedup/components.parquet"


def pool_rows(run: RunDir) -> pa.Table:
    cols = ["image_id", "source", "orig_width", "orig_height"]
    return pa.concat_tables([read_parquet(p, columns=cols) for p in run.pool_files()])


def _indices(uids: np.ndarray, ids: pa.ChunkedArray) -> np.ndarray:
    arr = id_array(ids)
    pos = np.searchsorted(uids, arr)
    if len(arr) and (pos.max(initial=0) >= len(uids) or not np.array_equal(uids[np.minimum(pos, len(uids) - 1)], arr)):
        raise ValueError("edge refers to an image_id that is not in the pool")
    return pos.astype(np.int64)


def read_edges(run: RunDir, rel: str, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    path = run.path(rel)
    if not path.exists():
        return None
    t = read_parquet(path, columns=["src", "dst"])
    return _indices(uids, t.column("src")), _indices(uids, t.column("dst"))


def run_components(ctx: RunContext) -> dict[str, Any]:
    rows = pool_rows(ctx.run)
    uids, _, _ = unique_images(rows)
    hash_edges = read_edges(ctx.run, HASH_EDGES, uids)
    near_edges = read_edges(ctx.run, NEAR_EDGES, uids) if "embedding" in ctx.dedup_methods else None
    eval_hit = None
    if ctx.eval_sources and ctx.run.path(EVAL_EDGES).exists():
        hits = read_parquet(ctx.run.path(EVAL_EDGES), columns=["dst"]).column("dst")
        eval_hit = np.zeros(len(uids), dtype=bool)
        eval_hit[_indices(uids, hits)] = True
    table = build_components(rows, hash_edges, near_edges, eval_hit, components=ctx.engine.connected_components)
    write_table(table, ctx.run.path(COMPONENTS))
    counts = summarize(table)
    counts["rows"] = table.num_rows
    counts["kept_images"] = int(np.count_nonzero(table.column("keep").to_numpy(zero_copy_only=False)))
    return counts


def kept_ids(run: RunDir) -> np.ndarray:
    """Sorted image_ids that survive deduplication."""
    t = read_parquet(run.path(COMPONENTS), columns=["image_id", "keep"])
    return np.unique(id_array(t.filter(t.column("keep")).column("image_id")))
