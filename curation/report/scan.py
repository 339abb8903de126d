"""Bounded-memory scans of a run's large Parquet files for the report.

At LVD-142M scale `dedup/components.parquet` has a row per pool image (1.2B), the cluster
assignments one per kept image (744M) and the rejects one per dropped input: read whole, any of
them would outgrow the machine that renders the report. These scans read a batch of rows at a
time and keep only what the page shows: counts by a few keys (reasons, modes, clusters), and the
first rows, in a stated order, of each of a few groups.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.storage import parquet_file

#: Rows per batch read: what one scan holds besides its results.
BATCH_ROWS = 1 << 18

Transform = Callable[[pa.Table], pa.Table]


def batches(path: str | Path, columns: Sequence[str]) -> Iterator[pa.Table]:
    """The file's `columns`, `BATCH_ROWS` rows at a time, in file order."""
    for batch in parquet_file(path).iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
        yield pa.Table.from_batches([batch])


def ordered_counts(counts: Counter, keys: Sequence[str]) -> list[dict[str, Any]]:
    """`{key tuple: rows}` as rows `{key: value, ..., "count_all": rows}`, largest first, ties by key
    (nulls last)."""
    rows = [{**dict(zip(keys, key)), "count_all": n} for key, n in counts.items()]
    return sorted(rows, key=lambda r: (-r["count_all"], *[(r[k] is None, "" if r[k] is None else r[k]) for k in keys]))


def count_rows(path: str | Path, keys: Sequence[str], columns: Sequence[str] = (),
               transform: Transform | None = None) -> list[dict[str, Any]]:
    """Rows per distinct value of `keys` (few distinct values: reasons, modes, clusters), largest
    first; `transform` filters each batch (read with `keys` + `columns`) first."""
    total: Counter = Counter()
    for table in batches(path, [*keys, *[c for c in columns if c not in keys]]):
        table = transform(table) if transform is not None else table
        grouped = table.group_by(list(keys), use_threads=False).aggregate([([], "count_all")])
        for row in grouped.to_pylist():
            total[tuple(row[k] for k in keys)] += row["count_all"]
    return ordered_counts(total, keys)


def _mask(table: pa.Table, keys: Sequence[str], values: tuple) -> pa.Array:
    if not keys:  # one group: every row
        return pa.array([True] * table.num_rows, pa.bool_())
    masks = [pc.is_null(table.column(k)) if v is None else pc.fill_null(pc.equal(table.column(k), v), False)
             for k, v in zip(keys, values)]
    out = masks[0]
    for m in masks[1:]:
        out = pc.and_(out, m)
    return out


def first_rows(path: str | Path, columns: Sequence[str], keys: Sequence[str], order: Sequence[tuple[str, str]],
               limit: int, transform: Transform | None = None) -> dict[tuple, pa.Table]:
    """Per distinct value of `keys` among the rows `transform` keeps (few groups), its first
    `limit` rows in `order` (Arrow sort keys; none: file order; ties keep file order, the sort is
    stable). No keys: the file's first rows, under the key ()."""
    best: dict[tuple, pa.Table] = {}
    for table in batches(path, columns):
        table = transform(table) if transform is not None else table
        if not table.num_rows:
            continue
        for row in table.select(list(keys)).group_by(list(keys), use_threads=False).aggregate([]).to_pylist():
            key = tuple(row[k] for k in keys)
            part = table.filter(_mask(table, keys, key))
            merged = part if key not in best else pa.concat_tables([best[key], part])
            best[key] = (merged.sort_by(list(order)) if order else merged).slice(0, limit)
    return best


def smallest_values(path: str | Path, keys: Sequence[str], column: str, limit: int,
                    transform: Transform | None = None) -> dict[tuple, list[Any]]:
    """Per distinct value of `keys`, the `limit` smallest distinct non-null values of `column`."""
    best: dict[tuple, pa.Array] = {}
    for table in batches(path, [*keys, column]):
        table = transform(table) if transform is not None else table
        table = table.filter(pc.is_valid(table.column(column)))
        if not table.num_rows:
            continue
        for row in table.select(list(keys)).group_by(list(keys), use_threads=False).aggregate([]).to_pylist():
            key = tuple(row[k] for k in keys)
            values = table.filter(_mask(table, keys, key)).column(column).combine_chunks()
            if key in best:
                values = pa.concat_arrays([best[key], values.cast(best[key].type)])
            values = pc.unique(values)
            best[key] = values.take(pc.sort_indices(values)).slice(0, limit)
    return {key: values.to_pylist() for key, values in best.items()}
