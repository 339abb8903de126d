"""The run directory: atomic writes, completion markers and the manifest (DESIGN §3).

A stage is complete when `RUN/_stages/<stage>.json` exists with the same key (a hash of its
inputs and config). Outputs are written under a temporary name and renamed (on an object store:
uploaded whole), so a killed run never leaves a half-written file under a real name, and a rerun
ends with the same bytes. RUN is a local path or a URL (`pipelines.storage`).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import as_path, files, is_url, open_atomic, read_parquet, remove

PARQUET_OPTS = dict(compression="zstd", use_dictionary=False, write_statistics=True)


def write_table(table: pa.Table, path: str | Path, row_group_size: int | None = None) -> Path:
    """Write a Parquet file atomically; deterministic bytes for the same table."""
    with open_atomic(path) as f:
        pq.write_table(table, f, row_group_size=row_group_size, **PARQUET_OPTS)
    return as_path(path)


def write_parts(parts: Iterable[str | Path], path: str | Path, schema: pa.Schema) -> Path:
    """Join Parquet files into one, atomically, a file at a time: the writer never holds more
    than one part (a pool-sized output from its per-file pieces)."""
    with open_atomic(path) as f, pq.ParquetWriter(f, schema, **PARQUET_OPTS) as writer:
        for part in parts:
            writer.write_table(read_parquet(part).cast(schema))
    return as_path(path)


def write_json(data: Any, path: str | Path) -> Path:
    return write_bytes((json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode(), path)


def write_bytes(data: bytes, path: str | Path) -> Path:
    with open_atomic(path) as f:
        f.write(data)
    return as_path(path)


def read_tables(paths: Iterable[str | Path], columns: list[str] | None = None) -> pa.Table:
    tables = [read_parquet(p, columns=columns) for p in sorted(map(str, paths))]
    if not tables:
        raise FileNotFoundError("no Parquet files to read")
    return pa.concat_tables(tables)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with as_path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_of(*parts: Any) -> str:
    """Completion key of a stage: a hash of whatever determines its output."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_path(root: str | Path) -> Path:
    """A run directory argument as a path object: local, or a URL every worker can reach
    (`gs://bucket/run` on Dataflow; see `pipelines.storage`). A URL whose filesystem is not
    installed is a user error, raised here rather than half-way through a run."""
    if not is_url(root):
        return Path(root)
    from pipelines.errors import UserError

    try:
        path = as_path(str(root).rstrip("/"))
        _ = path.fs  # the filesystem's package is imported here, not half-way through a run
        return path
    except (ImportError, ValueError) as exc:
        raise UserError(f"run directory {str(root)!r}: {exc} (install the filesystem of this URL: gcsfs for gs:// "
                        "with `pip install lvd-builder[gcp]`, s3fs for s3:// with `pip install lvd-builder[aws]`)") from exc


class RunDir:
    """Paths and bookkeeping of one run directory."""

    def __init__(self, root: str | Path):
        self.root = run_path(root)

    # -- layout --------------------------------------------------------------------------
    @property
    def pool(self) -> Path:
        return self.root / "pool"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def pool_files(self) -> list[Path]:
        return files(self.pool, "part-*.parquet")

    # -- completion markers --------------------------------------------------------------
    def _marker(self, stage: str) -> Path:
        return self.root / "_stages" / f"{stage}.json"

    def is_complete(self, stage: str, key: str) -> bool:
        marker = self._marker(stage)
        if not marker.exists():
            return False
        return json.loads(marker.read_text()).get("key") == key

    def mark_complete(self, stage: str, key: str, info: dict[str, Any]) -> None:
        write_json({"key": key, **info}, self._marker(stage))

    def invalidate(self, stage: str) -> None:
        remove(self._marker(stage))

    def stage_info(self, stage: str) -> dict[str, Any] | None:
        marker = self._marker(stage)
        return json.loads(marker.read_text()) if marker.exists() else None

    # -- manifest ------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {}

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        data = self.manifest()
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        write_json(data, self.manifest_path)
        return data

    def clear(self, *parts: str) -> None:
        remove(self.path(*parts))


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
