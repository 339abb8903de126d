"""The curated set on disk (DESIGN §3): `RUN/output/part-NNNNN.parquet` + `RUN/output/_index.json`.

`write_output` joins the retrieved rows (schemas.OUTPUT without `image`) with their image bytes,
found by image_id in the pool and seed-pool Parquet files, and writes them sorted by
(seed_dataset, mode, query_id, image_id) into shards cut by rows AND payload bytes. The shards
are plain Parquet with schemas.OUTPUT: pyarrow, DuckDB, Hugging Face `datasets`, Ray Data and the
bundled trainer read them as they are (a directory or a `*.parquet` glob). With `webdataset`, each
shard also gets a tar twin `_webdataset/part-NNNNN.tar` (`{key}.jpg` + `{key}.json`, key = output
position + image_id).

Memory stays bounded however large the pools are, and the work spreads over an engine's workers
(`curation.output.join`): pass 1 streams every source file once, in its own task, keeps the rows
whose image_id is wanted and spills them to one piece per *bucket* (a range of output positions);
the driver, holding metadata only, cuts the shards by rows and bytes (`cut_points`); pass 2 writes
the shards of each bucket in their own task. An image_id found nowhere is counted in the index's
`missing` (its rows are left out), never fatal.

Same input -> same bytes: shards, tars (zeroed tar headers) and the index (sorted keys, no times).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import schemas
from curation.config import OutputConfig
from curation.core.rundir import write_json, write_table
from curation.output.join import row_keys, spill_source, wanted_arrays, write_shards
from curation.output.layout import WDS_DIR, file_entry, relative_path, row_payload, shard_name
from curation.core.storage import as_path, files, makedirs, parquet_file, read_parquet, remove, save_array

INDEX_FILE = "_index.json"
INDEX_FORMAT = "lvd-output/1"
SPILL_DIR = "_spill"
#: Output rows without their image: what retrieval produces (curation.retrieval.retrieve.RETRIEVAL).
METADATA = schemas.RETRIEVAL
SORT_KEYS = ("seed_dataset", "mode", "query_id", "image_id")
MAX_BUCKETS = 256  # spill buckets: at most this many pieces per source file, and pass-2 tasks
_SPILL = pa.schema([("image_id", schemas.IMAGE_ID), ("image", pa.binary())])


def sort_rows(retrieved: pa.Table) -> pa.Table:
    """The retrieved rows in output order (a stable sort: ties keep their input order)."""
    table = retrieved.select(METADATA.names).cast(METADATA)
    return table.sort_by([(key, "ascending") for key in SORT_KEYS]).combine_chunks()


# -- pass 1: find the bytes ------------------------------------------------------------------


def iter_matches(sources: Sequence[str | Path], wanted: pa.Array) -> Iterator[pa.Table]:
    """(image_id, image) rows of `sources` whose image_id is in `wanted`, each id once (first source wins).

    Reads the image column only of row groups that hold a wanted id; stops when all are found.
    """
    found: set[str] = set()
    goal = len(pc.unique(wanted))
    if goal == 0:
        return
    for path in sources:
        pf = parquet_file(path)
        for group in range(pf.metadata.num_row_groups):
            ids = pf.read_row_group(group, columns=["image_id"]).column(0)
            mask = pc.is_in(ids, value_set=wanted)
            if not pc.any(mask).as_py():
                continue
            rows = pf.read_row_group(group, columns=["image_id", "image"]).filter(mask)
            keep = []
            for i, image_id in enumerate(rows.column("image_id").to_pylist()):
                if image_id not in found:
                    found.add(image_id)
                    keep.append(i)
            if keep:
                yield rows.take(pa.array(keep, pa.int64())).cast(_SPILL)
            if len(found) == goal:
                return


def fetch_images(ids: Iterable[str], sources: Sequence[str | Path]) -> dict[str, bytes]:
    """image_id -> image bytes for the given ids (a small set: galleries, tests); absent ids are left out."""
    wanted = pa.array(sorted(set(ids)), schemas.IMAGE_ID)
    out: dict[str, bytes] = {}
    if len(wanted) == 0:
        return out
    for table in iter_matches(sources, wanted):
        out.update(zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()))
    return out


# -- pass 2: cut -------------------------------------------------------------------------------


def cut_points(payload: np.ndarray, max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of consecutive shards with at most `max_rows` rows and `max_bytes`
    payload each (`payload` per row, as `row_payload`); a row larger than `max_bytes` gets a
    shard of its own."""
    cuts, lo, size = [], 0, 0
    for i, p in enumerate(np.asarray(payload, dtype=np.int64).tolist()):
        if i > lo and (i - lo + 1 > max_rows or size + p > max_bytes):
            cuts.append((lo, i))
            lo, size = i, 0
        size += p
    if len(payload) > lo:
        cuts.append((lo, len(payload)))
    return cuts


# -- WebDataset ------------------------------------------------------------------------------------


# -- the index ---------------------------------------------------------------------------------


def recipe_counts(recipe_rows: Sequence[dict[str, Any]], got: Counter) -> list[dict[str, Any]]:
    """Per recipe row: dataset, mode, planned (the row's `planned`, if any) and rows written;
    (dataset, mode) pairs written but absent from the recipe follow, with planned None."""
    out, listed = [], set()
    for row in recipe_rows:
        key = (row.get("dataset"), row.get("mode"))
        listed.add(key)
        out.append({"dataset": key[0], "mode": key[1], "planned": row.get("planned"), "got": int(got.get(key, 0))})
    for key in sorted(set(got) - listed, key=lambda k: (str(k[0]), str(k[1]))):
        out.append({"dataset": key[0], "mode": key[1], "planned": None, "got": int(got[key])})
    return out


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete shards and tars of an earlier write that this one did not produce."""
    for path in files(out_dir, "part-*.parquet") + files(out_dir, f"{WDS_DIR}/part-*.tar"):
        if relative_path(path, out_dir) not in keep:
            remove(path)


#: map(fn, tasks) -> [fn(*task) for task in tasks], in task order: an engine's `map` or a loop.
MapFn = Callable[[Callable[..., Any], list[tuple]], list[Any]]


def _serial(fn: Callable[..., Any], tasks: list[tuple]) -> list[Any]:
    return [fn(*task) for task in tasks]


def _found_lengths(keys: np.ndarray, exact: np.ndarray, found: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Image length of every row (its `row_keys`; -1: found in no source), from pass 1's (ids, lengths)."""
    ids = np.concatenate([f[0] for f in found]) if found else np.empty(0, keys.dtype)
    lengths = np.concatenate([f[1] for f in found]) if found else np.empty(0, np.int64)
    ids, first = np.unique(ids, return_index=True)  # an id in several sources: the same bytes
    lengths = lengths[first]
    pos = np.minimum(np.searchsorted(ids, keys), max(len(ids) - 1, 0))
    hit = exact & (ids[pos] == keys) if len(ids) else np.zeros(len(keys), bool)
    return np.where(hit, lengths[pos] if len(ids) else 0, -1)


def _shard_tasks(kept: pa.Table, positions: np.ndarray, cuts: list[tuple[int, int]], bucket_rows: int, spill: Path,
                 out_dir: Path, cfg: OutputConfig) -> list[tuple]:
    """Pass 2 tasks: the shards grouped by the bucket of their first row, each task reading the
    buckets its shards' rows span."""
    by_bucket: dict[int, list[tuple[int, int, pa.Table]]] = {}
    spans: dict[int, set[int]] = {}
    for index, (lo, hi) in enumerate(cuts):
        first, last = int(positions[lo]) // bucket_rows, int(positions[hi - 1]) // bucket_rows
        by_bucket.setdefault(first, []).append((index, lo, kept.slice(lo, hi - lo)))
        spans.setdefault(first, set()).update(range(first, last + 1))
    return [(str(spill), sorted(spans[b]), shards, str(out_dir), cfg.row_group_rows, cfg.webdataset)
            for b, shards in sorted(by_bucket.items())]


def write_output(
    retrieved: pa.Table,
    image_sources: Sequence[str | Path],
    out_dir: str | Path,
    cfg: OutputConfig,
    recipe_rows: Sequence[dict[str, Any]] = (),
    map_fn: MapFn | None = None,
) -> dict[str, Any]:
    """Write the curated shards (+ tars) and `_index.json` into `out_dir`; returns the index.

    `image_sources`: Parquet files with `image_id` and `image` (the pool's and the seeds' parts).
    The join runs as `map_fn` tasks (`curation.output.join`; default: in this process): one per
    source file, then one per bucket of output positions. Shards are written atomically; the
    index is written last.
    """

    map_fn = map_fn or _serial
    out_dir = as_path(out_dir)
    spill = out_dir / SPILL_DIR
    remove(spill)
    makedirs(spill)
    rows = sort_rows(retrieved)
    bucket_rows = max(cfg.shard_rows, -(-rows.num_rows // MAX_BUCKETS), 1)
    try:
        keys, exact = row_keys(rows.column("image_id"))
        wanted, buckets = wanted_arrays(keys, exact, bucket_rows)
        save_array(spill / "wanted-ids.npy", wanted)
        save_array(spill / "wanted-buckets.npy", buckets)
        found = map_fn(spill_source, [(str(p), i, str(spill / "wanted-ids.npy"), str(spill / "wanted-buckets.npy"),
                                       str(spill)) for i, p in enumerate(image_sources)])
        lengths = _found_lengths(keys, exact, found)
        positions = np.flatnonzero(lengths >= 0)
        kept = rows.take(pa.array(positions, pa.int64()))
        missing = rows.column("image_id").filter(pa.array(lengths < 0)).to_pylist()
        cuts = cut_points(row_payload(kept) + lengths[positions], cfg.shard_rows, cfg.shard_bytes)
        entries = [e for part in map_fn(write_shards, _shard_tasks(kept, positions, cuts, bucket_rows, spill, out_dir, cfg))
                   for e in part]
    finally:
        remove(spill)
    tars = [e.pop("tar") for e in entries if "tar" in e]
    shards = entries
    if not shards:  # readers (DuckDB globs, the trainer) expect at least one file
        path = write_table(schemas.OUTPUT.empty_table(), out_dir / shard_name(0))
        shards.append({**file_entry(path, out_dir, 0), "payload_bytes": 0})
    per_pair = kept.group_by(["seed_dataset", "mode"], use_threads=False).aggregate([([], "count_all")]).to_pydict()
    got = Counter(dict(zip(zip(per_pair["seed_dataset"], per_pair["mode"]), per_pair["count_all"])))
    _remove_stale(out_dir, {s["file"] for s in shards + tars})
    by_mode: Counter = Counter()
    for (_, mode), n in got.items():
        by_mode[str(mode)] += n
    index = {
        "format": INDEX_FORMAT,
        "columns": schemas.OUTPUT.names,
        "sorted_by": list(SORT_KEYS),
        "limits": {"shard_rows": cfg.shard_rows, "shard_bytes": cfg.shard_bytes, "row_group_rows": cfg.row_group_rows},
        "shards": shards,
        "webdataset": tars,
        "recipe": recipe_counts(recipe_rows, got),
        "totals": {
            "rows": sum(s["rows"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "shards": len(shards),
            "requested_rows": rows.num_rows,
            "by_mode": dict(sorted(by_mode.items())),
        },
        "missing": len(missing),
        "missing_examples": sorted(set(missing))[:20],
    }
    write_json(index, out_dir / INDEX_FILE)
    return index


def read_index(out_dir: str | Path) -> dict[str, Any]:
    """`_index.json` of an output folder ({} when there is none)."""
    path = as_path(out_dir) / INDEX_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def output_files(out_dir: str | Path) -> list[Path]:
    """The shards of an output folder: those its index lists, else every part-*.parquet."""
    out_dir = as_path(out_dir)
    index = read_index(out_dir)
    if index.get("shards"):
        return [out_dir / s["file"] for s in index["shards"]]
    return files(out_dir, "part-*.parquet")


def read_output(out_dir: str | Path, images: bool = False) -> pa.Table:
    """The curated rows of an output folder, in output order; the image bytes only when `images`."""
    schema = schemas.OUTPUT if images else METADATA
    tables = [read_parquet(p, columns=schema.names) for p in output_files(out_dir)]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()
