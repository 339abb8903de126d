"""Streaming, shuffled, exactly resumable reading of Parquet shards (local paths or any fsspec URL).

The data set is cut into *units* (row ranges of Parquet row groups) and spread over a fixed number
of *streams* `V`, independent of the world size: in epoch `e`, stream `s` owns the units at
positions s, s+V, s+2V, ... of a permutation seeded by (seed, e). A stream reads its units in
*windows* of about `buffer_size` rows, shuffles each window with a generator seeded by
(seed, e, s, window) and yields its rows; at the end of its units it moves to epoch e+1.

A stream's position is therefore three integers (epoch, window, offset): restoring it re-reads one
window, not the epoch. Streams are dealt to readers (rank x data-loader worker) round-robin, so
resuming with another world size keeps every stream's exact position: no sample is skipped or seen
twice within an epoch; with the same layout the batches are identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.errors import UserError


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of row group `row_group` of the Parquet file `path`."""

    path: str
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def list_shards(data: str) -> list[str]:
    """Parquet files of `data`: a directory (its `*.parquet`), a single file or a glob, local or fsspec."""
    import fsspec

    try:
        fs, _, paths = fsspec.get_fs_token_paths(data)
    except (ImportError, ValueError) as exc:  # e.g. gs:// without gcsfs installed
        raise UserError(f"cannot open {data}: {exc}") from exc
    root = paths[0] if paths else data
    if len(paths) == 1 and fs.isdir(root):
        found = fs.glob(root.rstrip("/") + "/*.parquet")
    elif paths and any(ch in data for ch in "*?["):
        found = [p for p in paths if p.endswith(".parquet")]
    elif len(paths) == 1 and fs.isfile(root):
        found = [root]
    else:
        found = []
    if not found:
        raise UserError(f"no Parquet shards found at {data} (expected a directory of *.parquet, a file or a glob)")
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol not in ("file", "local"):
        found = [f"{protocol}://{p}" if "://" not in p else p for p in found]
    return sorted(found)


@lru_cache(maxsize=64)
def open_parquet(path: str) -> pq.ParquetFile:
    """A cached `ParquetFile` over a local path or an fsspec URL."""
    if "://" in path and not path.startswith("file://"):
        import fsspec

        return pq.ParquetFile(fsspec.open(path, "rb").open())
    return pq.ParquetFile(path.removeprefix("file://"))


def plan_units(paths: list[str], min_units: int = 1) -> list[Unit]:
    """Units covering every row once; row groups are split so that there are at least `min_units`
    units whenever there are that many rows."""
    groups: list[tuple[str, int, int]] = []
    for path in paths:
        meta = open_parquet(path).metadata
        groups += [(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    total = sum(n for _, _, n in groups)
    if total == 0:
        raise UserError(f"the Parquet shards hold no rows ({len(paths)} files)")
    chunk = max(1, math.ceil(total / max(min_units, 1)))
    units = []
    for path, g, n in groups:
        for start in range(0, n, chunk):
            units.append(Unit(path, g, start, min(start + chunk, n)))
    return units


def plan_dataset_units(paths: list[str], dataset: str, min_units: int = 1, column: str = "seed_dataset") -> list[Unit]:
    """Units covering exactly the rows whose `column` equals `dataset` (runs of consecutive rows within
    row groups), split so that there are at least `min_units` when there are that many rows."""
    import pyarrow.compute as pc

    runs: list[tuple[str, int, int, int]] = []
    for path in paths:
        pf = open_parquet(path)
        if column not in pf.schema_arrow.names:
            raise UserError(f"{path} has no {column!r} column: homogeneous batches need the curated output's "
                            f"{column} (data.homogeneous_dataset={dataset!r})")
        for g in range(pf.metadata.num_row_groups):
            hit = pc.fill_null(pc.equal(pf.read_row_group(g, columns=[column]).column(column), dataset), False)
            flags = np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)
            if not flags.any():
                continue
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
            runs += [(path, g, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    total = sum(b - a for _, _, a, b in runs)
    if total == 0:
        raise UserError(f"no rows of seed_dataset {dataset!r} in the {len(paths)} shard files (data.homogeneous_dataset)")
    chunk = max(1, math.ceil(total / max(min_units, 1)))
    return [Unit(path, g, start, min(start + chunk, b)) for path, g, a, b in runs for start in range(a, b, chunk)]


def read_unit(unit: Unit, columns: tuple[str, ...]) -> pa.Table:
    table = open_parquet(unit.path).read_row_group(unit.row_group, columns=list(columns))
    return table.slice(unit.start, unit.rows)


@dataclass
class StreamPosition:
    epoch: int = 0
    window: int = 0
    offset: int = 0

    def as_list(self) -> list[int]:
        return [self.epoch, self.window, self.offset]


class ShardStream:
    """One of the `num_streams` deterministic sample sequences; iterate to get (row dict, position-before)."""

    def __init__(self, units: list[Unit], stream_id: int, num_streams: int, seed: int, buffer_size: int,
                 columns: tuple[str, ...] = ("image",), position: StreamPosition | None = None,
                 state_id: int | None = None) -> None:
        if len(units) < num_streams:
            raise UserError(f"{len(units)} data units cannot feed {num_streams} streams: the data set is too small "
                            "for this many ranks x workers (lower data.num_workers or data.num_streams)")
        self.units, self.stream_id, self.num_streams = units, stream_id, num_streams
        # The stream's key in saved data states (another family of streams over other units uses other keys).
        self.state_id = stream_id if state_id is None else state_id
        self.seed, self.buffer_size, self.columns = seed, max(1, buffer_size), columns
        self.position = position or StreamPosition()
        self._loaded: tuple[int, int] | None = None
        self._rows: pa.Table | None = None
        self._order: np.ndarray | None = None
        self._windows: tuple[int, list[list[Unit]]] | None = None

    def windows(self, epoch: int) -> list[list[Unit]]:
        """This stream's units for `epoch`, grouped into shuffle windows of >= buffer_size rows."""
        if self._windows is None or self._windows[0] != epoch:
            self._windows = (epoch, self._plan_windows(epoch))
        return self._windows[1]

    def _plan_windows(self, epoch: int) -> list[list[Unit]]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        mine = [self.units[i] for i in perm[self.stream_id :: self.num_streams]]
        windows, current, rows = [], [], 0
        for unit in mine:
            current.append(unit)
            rows += unit.rows
            if rows >= self.buffer_size:
                windows.append(current)
                current, rows = [], 0
        if current:
            windows.append(current)
        return windows

    def _load(self, epoch: int, window: int) -> None:
        units = self.windows(epoch)[window]
        groups: dict[tuple[str, int], pa.Table] = {}  # a row group holding many small units is read once
        for u in units:
            if (u.path, u.row_group) not in groups:
                groups[(u.path, u.row_group)] = open_parquet(u.path).read_row_group(u.row_group, columns=list(self.columns))
        self._rows = pa.concat_tables([groups[(u.path, u.row_group)].slice(u.start, u.rows) for u in units])
        rng = np.random.default_rng([self.seed, epoch, self.stream_id, window])
        self._order = rng.permutation(self._rows.num_rows)
        self._loaded = (epoch, window)

    def __iter__(self) -> Iterator[tuple[dict, StreamPosition]]:
        return self

    def __next__(self) -> tuple[dict, StreamPosition]:
        pos = self.position
        if self._loaded != (pos.epoch, pos.window):
            self._load(pos.epoch, pos.window)
        assert self._rows is not None and self._order is not None
        row_index = int(self._order[pos.offset])
        row = {c: self._rows.column(c)[row_index].as_py() for c in self.columns}
        before = StreamPosition(pos.epoch, pos.window, pos.offset)
        pos.offset += 1
        if pos.offset >= self._rows.num_rows:
            pos.window, pos.offset = pos.window + 1, 0
            if pos.window >= len(self.windows(pos.epoch)):
                pos.epoch, pos.window = pos.epoch + 1, 0
        return row, before
