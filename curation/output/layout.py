"""How the curated output is laid out and encoded: shard names, the bytes each row carries, the
WebDataset twin of a shard (deterministic tars) and the index's per-file entries. Shared by the
writer (`curation.output.shards`) and the join's tasks (`curation.output.join`).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.rundir import file_digest
from curation.core.storage import file_size

#: WebDataset tars go to a sub-folder whose `_` prefix hides it from directory readers
#: (pyarrow.dataset, Ray Data), which would otherwise try to read the tars as Parquet.
WDS_DIR = "_webdataset"
_FIXED_ROW_BYTES = 12  # cluster (int64) + similarity (float32)
_STRING_COLUMNS = ("image", "image_id", "seed_dataset", "mode", "query_id", "provenance")


def shard_name(index: int, ext: str = "parquet") -> str:
    return f"part-{index:05d}.{ext}"


def row_payload(table: pa.Table) -> np.ndarray:
    """Bytes each OUTPUT row carries: image + string columns + fixed-width columns (what `shard_bytes` bounds)."""
    total = np.full(table.num_rows, _FIXED_ROW_BYTES, dtype=np.int64)
    for name in _STRING_COLUMNS:
        if name in table.column_names:
            total += pc.fill_null(pc.binary_length(table.column(name)), 0).to_numpy(zero_copy_only=False)
    return total


def image_extension(data: bytes) -> str:
    """File extension of encoded image bytes, by magic number."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def sample_metadata(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON sidecar of one WebDataset sample: every OUTPUT column but the image, provenance parsed."""
    meta = {k: v for k, v in row.items() if k != "image"}
    meta["provenance"] = json.loads(meta["provenance"]) if meta.get("provenance") else []
    return meta


def tar_bytes(table: pa.Table, keys: Sequence[str]) -> bytes:
    """A deterministic WebDataset tar: `{key}.<ext>` + `{key}.json` per row, zeroed headers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, row in zip(keys, table.to_pylist()):
            meta = json.dumps(sample_metadata(row), sort_keys=True).encode()
            for name, data in ((f"{key}.{image_extension(row['image'])}", row["image"]), (f"{key}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sample_keys(first: int, ids: Sequence[str]) -> list[str]:
    """WebDataset keys `{position:09d}_{image_id}`: unique even for repeated ids, and in name order
    equal to the output order (readers that sort members by name see the Parquet order)."""
    return [f"{first + i:09d}_{image_id}" for i, image_id in enumerate(ids)]


def relative_path(path: Path, out_dir: Path) -> str:
    """`path` relative to the output directory, as the index names it."""
    return str(path)[len(str(out_dir)):].lstrip("/")


def file_entry(path: Path, out_dir: Path, rows: int) -> dict[str, Any]:
    return {"file": relative_path(path, out_dir), "rows": rows, "bytes": file_size(path), "sha256": file_digest(path)}
