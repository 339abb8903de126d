"""The run directory: atomic writes, completion markers and the manifest (DESIGN §3).

A stage is complete when `RUN/_stages/<stage>.json` exists with the same key (a hash of its
inputs and config). Outputs are written under a temporary name and renamed (on an object store:
uploaded whole), so a killed run never leaves a half-written file under a real name, and a rerun
ends with the same bytes. RUN is a local path or a URL (`curation.core.storage`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.errors import DISK_FULL, UserError, disk_full
from curation.core.storage import as_path, files, is_url, makedirs, open_atomic as _open_atomic, read_parquet, remove

PARQUET_OPTS = dict(compression="zstd", use_dictionary=False, write_statistics=True)


@contextmanager
def open_atomic(path: str | Path) -> Iterator[Any]:
    """`storage.open_atomic`, whose disk-full error names the file being written (pyarrow's and a
    flush's `OSError` carry no file name), so the CLI's one line can say what was being written."""
    try:
        with _open_atomic(path) as f:
            yield f
    except OSError as exc:
        if not exc.filename and disk_full(exc):
            code = exc.errno if exc.errno in DISK_FULL else errno.ENOSPC
            raise OSError(code, os.strerror(code), str(path)) from exc
        raise


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
    (`gs://bucket/run` on Dataflow; see `curation.core.storage`). A URL whose filesystem is not
    installed is a user error, raised here rather than half-way through a run."""
    if not is_url(root):
        return Path(root)
    try:
        path = as_path(str(root).rstrip("/"))
        _ = path.fs  # the filesystem's package is imported here, not half-way through a run
        return path
    except (ImportError, ValueError) as exc:
        raise UserError(f"run directory {str(root)!r}: {exc} (install the filesystem of this URL: gcsfs for gs:// "
                        "with `pip install lvd-builder[gcp]`, s3fs for s3:// with `pip install lvd-builder[aws]`)") from exc


#: What lvd itself puts at the top of a run directory (ARCHITECTURE.md, "The run directory"), plus
#: the demo world `lvd curate` builds in RUN/world before the run's manifest exists.
RUN_LAYOUT = frozenset({
    "manifest.json", "pool", "rejects.parquet", "hashes", "embeddings", "retrieval_embeddings", "dedup", "eval",
    "seeds", "clusters", "retrieval", "recipe.json", "output", "report.html", "fetch", "_stages", "_work", "world",
})


def _lvd_entry(name: str) -> bool:
    """A name lvd writes at the top of a run: a layout entry or the temporary name of one (a write
    cut short by a kill: `.manifest.json.tmp-PID-XXXX`)."""
    return name in RUN_LAYOUT or (name.startswith(".") and name[1:].split(".tmp-")[0] in RUN_LAYOUT)


def check_run_dir(root: str | Path, recipe: str | None = None, version: str | None = None, reuse: bool = False,
                  create: bool = True) -> "RunDir":
    """The run directory of a command that writes one, refused before anything is computed when it
    cannot be one (one line each, `UserError`):

    - a path that cannot be created or written (a file, a read-only disk, no permission);
    - a non-empty folder that is not an lvd run (no manifest, entries lvd never writes): a
      foreign folder whose files a run could clobber;
    - a run made with another recipe or another lvd version, unless `reuse` (its completed stages
      are then kept where their inputs are unchanged and recomputed where they changed);
    - a manifest that is not valid JSON.

    Returns the `RunDir`, created unless `create` is false (a check ahead of other checks). Nothing
    in an existing run is touched here.
    """
    run = RunDir(root)
    where = str(run.root)
    if not is_url(run.root):
        if run.root.exists() and not run.root.is_dir():
            raise UserError(f"--out {where} is a file, not a directory: use an empty or new directory")
        if run.root.is_dir():
            foreign = sorted(p.name for p in run.root.iterdir() if not _lvd_entry(p.name))
            if foreign and not (run.root / "manifest.json").exists() and not (run.root / "_stages").is_dir():
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise UserError(f"--out {where} is not empty and is not an lvd run directory (it holds {shown}): "
                                "use an empty or new directory")
        missing = [d for d in (run.root, *run.root.parents) if not d.exists()]
        try:
            makedirs(run.root)
            probe = run.root / f".lvd-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise UserError(f"cannot write the run directory {where} ({reason}): use --out in a folder you can write "
                            "(an empty or new directory)") from None
        finally:
            if not create:  # a check only: leave no new folder behind
                for d in missing:
                    try:
                        d.rmdir()
                    except OSError:
                        break
    try:
        manifest = run.manifest()
    except ValueError as exc:
        raise UserError(f"the manifest of {where} is not valid JSON ({exc}): use a new --out, or remove "
                        f"{run.manifest_path} to adopt the folder") from None
    if reuse or not manifest:
        return run
    made_with = (manifest.get("versions") or {}).get("lvd-builder")
    if version and made_with and made_with != version:
        raise UserError(f"run directory {where} was made by lvd {made_with}, this is lvd {version}: use a new --out, "
                        "or pass --reuse to continue in it with this version (completed stages are kept; "
                        "--force STAGE recomputes one)")
    previous = manifest.get("recipe") or _recipe_json_name(run)
    if recipe and previous and previous != recipe:
        raise UserError(f"run directory {where} was made with recipe {previous!r}, not {recipe!r}: use a new --out, "
                        f"or pass --reuse to rerun it with recipe {recipe!r} (stages the recipe changes are recomputed, "
                        "the others kept)")
    return run


def _recipe_json_name(run: "RunDir") -> str | None:
    """The recipe a run's retrieve stage recorded (runs from before the manifest named it)."""
    try:
        return json.loads(run.path("recipe.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None


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
