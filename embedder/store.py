"""Embeddings <-> Arrow / Parquet as an (ids, float16 matrix) pair, without per-row Python.

On disk an embedding file has the EMBEDDINGS schema (image_id, embedding list<float16>); its
Parquet metadata records the embedding width, the model and a completion key, so an empty file
still knows its width and a rerun knows whether a file is current (see `embedder.shards`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.schemas import EMBEDDINGS
from curation.core.rundir import write_table
from curation.core.storage import parquet_schema, read_parquet

META_DIM = "lvd.embed.dim"


def embeddings_table(
    ids: pa.Array | pa.ChunkedArray | np.ndarray | list[str],
    emb: np.ndarray,
    metadata: Mapping[str, str] | None = None,
) -> pa.Table:
    """(ids [n], float16 [n, D]) -> EMBEDDINGS table; `metadata` goes into the schema metadata."""
    emb = np.ascontiguousarray(emb, dtype=np.float16)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"need {len(ids)} embedding rows as a 2-D array, got shape {emb.shape}")
    n, dim = emb.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    lists = pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1), type=pa.float16()))
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    table = pa.Table.from_arrays([pa.array(ids, type=pa.string()), lists], schema=EMBEDDINGS)
    return table.replace_schema_metadata({META_DIM: str(dim), **(metadata or {})})


def table_embeddings(table: pa.Table, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """EMBEDDINGS table -> (ids: object array of str [n], float16 [n, D]).

    `dim` is the width to use when the table is empty (otherwise read from the data).
    """
    ids = table.column("image_id").to_numpy()
    column = table.column("embedding")
    lists = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(lists)
    if n == 0:
        return ids, np.empty((0, dim or 0), dtype=np.float16)
    lengths = pc.list_value_length(lists)
    bounds = pc.min_max(lengths)
    if bounds["min"].as_py() != bounds["max"].as_py() or lists.null_count:
        raise ValueError("embeddings have differing lengths or nulls; expected one fixed width")
    width = bounds["min"].as_py()
    values = lists.flatten().to_numpy(zero_copy_only=False)  # flatten honours slice offsets
    return ids, values.astype(np.float16, copy=False).reshape(n, width)


def write_embeddings(
    path: str | Path,
    ids: pa.Array | pa.ChunkedArray | np.ndarray | list[str],
    emb: np.ndarray,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write one embedding file atomically (temporary name, then rename)."""
    return write_table(embeddings_table(ids, emb, metadata), path)


def file_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of an embedding file, read from its footer only."""
    raw = parquet_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW:")}


def read_embeddings(paths: str | Path | Iterable[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read embedding files (in sorted path order) -> (ids [n], float16 [n, D])."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = sorted(map(str, paths))
    if not files:
        raise FileNotFoundError("no embedding files to read")
    tables = [read_parquet(p, columns=["image_id", "embedding"]) for p in files]
    dims = {file_metadata(p).get(META_DIM) for p in files} - {None}
    dim = int(dims.pop()) if len(dims) == 1 else None
    return table_embeddings(pa.concat_tables(tables), dim=dim)
