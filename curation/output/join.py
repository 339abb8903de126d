"""The join of the curated rows with their image bytes, as a shuffle any engine can run.

A curated set of 142M images is terabytes of bytes, so `curation.output.shards.write_output` hands the
work to a `map(fn, tasks)` (an engine's, or a plain loop) in two passes of independent tasks:

1. `spill_source`, one task per source file (the pool's and the seeds' Parquet parts): the rows
   whose image_id is wanted, found by binary search in a sorted, memory-mapped array of the wanted
   ids (`wanted_arrays`), are written to one spill piece per *bucket* (a range of output
   positions) that needs them: `SPILL/b-<bucket>/s-<source>.parquet`. The task returns the image
   lengths of what it found, so the driver can cut shards by bytes without holding any bytes.
2. `write_shards`, one task per bucket: every shard that starts in the bucket, its rows joined with
   the bytes of the bucket's pieces (and the next bucket's, for a shard that runs over), written
   whole (Parquet, and the WebDataset tar twin when asked); it returns the index entries.

Between them the driver holds metadata only: the rows, the found lengths, the shard cuts
(`curation.output.shards.cut_points`). image_ids are content hashes, so every source holding an id holds
the same bytes: which source a row's bytes come from never changes the output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import schemas
from curation.core.storage import as_path, files, load_array, parquet_file, read_parquet
from curation.output.layout import WDS_DIR, file_entry, row_payload, sample_keys, shard_name, tar_bytes

_SPILL = pa.schema([("image_id", schemas.IMAGE_ID), ("image", pa.binary())])


def fixed_ids(ids: pa.Array | pa.ChunkedArray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(`S<width>` byte strings, mask of the ids at most `width` UTF-8 bytes long): the form the
    wanted ids are searched in (longer ids can never match: masked out, not truncated)."""
    binary = pc.cast(ids, pa.binary())
    exact = pc.less_equal(pc.fill_null(pc.binary_length(binary), width + 1), width).to_numpy(zero_copy_only=False)
    values = np.asarray(binary.to_numpy(zero_copy_only=False), dtype=object)
    return np.array([v if ok else b"" for v, ok in zip(values, exact)], dtype=f"S{max(width, 1)}"), exact


def row_keys(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """`fixed_ids` of the output rows' ids at the width of the longest (the mask drops nulls only)."""
    width = int(pc.max(pc.binary_length(pc.cast(ids, pa.binary()))).as_py() or 0) if len(ids) else 0
    return fixed_ids(ids, width)


def wanted_arrays(keys: np.ndarray, exact: np.ndarray, bucket_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(wanted ids sorted, bucket of each): one entry per distinct (image_id, bucket) of the rows
    in output order, from their `row_keys`."""
    buckets = (np.arange(len(keys)) // bucket_rows).astype(np.int64)
    keys, buckets = keys[exact], buckets[exact]
    order = np.lexsort((buckets, keys))
    keys, buckets = keys[order], buckets[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]) | (buckets[1:] != buckets[:-1])
    return keys[first], buckets[first]


def bucket_dir(spill: str | Path, bucket: int) -> Path:
    """Where the sources' spill pieces of one bucket go (`s-<source>.parquet` each)."""
    return as_path(spill) / f"b-{bucket:05d}"


def spill_source(path: str, source: int, ids_path: str, buckets_path: str, spill: str) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1 on one source file: its wanted rows into the spill pieces of their buckets.
    Returns (ids found, as the wanted array's byte strings; their image lengths)."""
    from curation.core.rundir import write_table

    wanted = load_array(ids_path)
    buckets = load_array(buckets_path)
    width = wanted.dtype.itemsize
    found: dict[bytes, int] = {}  # id -> image length, first occurrence in this file
    per_bucket: dict[int, list[pa.Table]] = {}
    pf = parquet_file(path)
    for group in range(pf.metadata.num_row_groups):
        keys, exact = fixed_ids(pf.read_row_group(group, columns=["image_id"]).column(0), width)
        lo, hi = np.searchsorted(wanted, keys, "left"), np.searchsorted(wanted, keys, "right")
        hit = []
        for i in np.flatnonzero(exact & (hi > lo)):
            if keys[i] not in found:  # an id repeated in the file: its first row serves
                found[keys[i]] = -1
                hit.append(i)
        if not hit:
            continue
        rows = pf.read_row_group(group, columns=["image_id", "image"]).take(pa.array(hit, pa.int64())).cast(_SPILL)
        lengths = pc.binary_length(rows.column("image")).to_numpy(zero_copy_only=False)
        rows_of: dict[int, list[int]] = {}
        for row, i in enumerate(hit):
            found[keys[i]] = int(lengths[row])
            for bucket in buckets[lo[i]:hi[i]]:
                rows_of.setdefault(int(bucket), []).append(row)
        for bucket, taken in rows_of.items():
            per_bucket.setdefault(bucket, []).append(rows.take(pa.array(taken, pa.int64())))
    for bucket, parts in per_bucket.items():
        write_table(pa.concat_tables(parts).combine_chunks(), bucket_dir(spill, bucket) / f"s-{source:05d}.parquet")
    ids = np.array(list(found), dtype=wanted.dtype) if found else np.empty(0, wanted.dtype)
    return ids, np.fromiter(found.values(), dtype=np.int64, count=len(found))


def bucket_images(spill: str | Path, buckets: Sequence[int]) -> dict[str, bytes]:
    """image_id -> bytes from every spill piece of the given buckets."""
    images: dict[str, bytes] = {}
    for bucket in buckets:
        for piece in files(bucket_dir(spill, bucket), "s-*.parquet"):
            t = read_parquet(piece)
            images.update(zip(t.column("image_id").to_pylist(), t.column("image").to_pylist()))
    return images


def joined(rows: pa.Table, images: dict[str, bytes]) -> pa.Table:
    """OUTPUT rows: the metadata rows with their image bytes (every id must be in `images`)."""
    column = pa.array([images[i] for i in rows.column("image_id").to_pylist()], pa.binary())
    return rows.append_column("image", column).select(schemas.OUTPUT.names).cast(schemas.OUTPUT)


def write_shards(spill: str, buckets: Sequence[int], shards: list[tuple[int, int, pa.Table]], out_dir: str,
                 row_group_rows: int, webdataset: bool) -> list[dict[str, Any]]:
    """Pass 2 on one bucket: each (index, first output row, metadata rows) shard joined and
    written; returns per shard its Parquet index entry (+ `tar` entry with webdataset)."""
    from curation.core.rundir import write_bytes, write_table

    images = bucket_images(spill, buckets)
    out = as_path(out_dir)
    entries = []
    for index, first, rows in shards:
        shard = joined(rows, images).combine_chunks()
        path = write_table(shard, out / shard_name(index), row_group_size=row_group_rows)
        entry = {**file_entry(path, out, shard.num_rows), "payload_bytes": int(row_payload(shard).sum())}
        if webdataset:
            keys = sample_keys(first, shard.column("image_id").to_pylist())
            tar = write_bytes(tar_bytes(shard, keys), out / WDS_DIR / shard_name(index, "tar"))
            entry["tar"] = file_entry(tar, out, shard.num_rows)
        entries.append(entry)
    return entries
