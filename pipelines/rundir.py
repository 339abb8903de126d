"""The run directory: atomic writes, completion markers and the manifest (DESIGN §3).

A stage is complete when `RUN/_stages/<stage>.json` exists with the same key (a hash of its
inputs and config). Outputs are written under a temporary name and renamed, so a killed run never
leaves a half-written file under a real name, and a rerun ends with the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_OPTS = dict(compression="zstd", use_dictionary=False, write_statistics=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_table(table: pa.Table, path: str | Path, row_group_size: int | None = None) -> Path:
    """Write a Parquet file atomically; deterministic bytes for the same table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    pq.write_table(table, tmp, row_group_size=row_group_size, **PARQUET_OPTS)
    os.replace(tmp, path)
    return path


def write_json(data: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_bytes(data: bytes, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def read_tables(paths: Iterable[str | Path], columns: list[str] | None = None) -> pa.Table:
    tables = [pq.read_table(p, columns=columns) for p in sorted(map(str, paths))]
    if not tables:
        raise FileNotFoundError("no Parquet files to read")
    return pa.concat_tables(tables)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_of(*parts: Any) -> str:
    """Completion key of a stage: a hash of whatever determines its output."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_path(root: str | Path) -> Path:
    """A run directory argument as a Path; a URL is a user error.

    Every stage reads and writes the run directory as files (Parquet, markers, resume bookkeeping),
    from the driver and from engine workers alike: it must be a path all of them see. Object stores
    work through a POSIX mount; inputs may be URLs (fsspec)."""
    if "://" in str(root):
        from pipelines.errors import UserError

        raise UserError(f"run directory {str(root)!r} is a URL: it must be a path every worker can see (a local "
                        "disk, NFS, or a bucket mounted with Cloud Storage FUSE / s3fs, e.g. --out /mnt/gcs/lvd/run); "
                        "inputs (--pool, --seeds-config) may be URLs")
    return Path(root)


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
        return sorted(self.pool.glob("part-*.parquet"))

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
        self._marker(stage).unlink(missing_ok=True)

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
        target = self.path(*parts)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
