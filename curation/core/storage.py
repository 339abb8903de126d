"""Files of a run on a local disk or on an object store (`gs://`, `s3://`, any fsspec URL).

The run directory is the only state the driver and the workers share. On a laptop, an NFS mount
or a Ray cluster with a shared disk it is a path; on Dataflow (whose workers mount nothing) it is
a bucket URL. Every read and write of run files goes through these functions so that the stages
need not know which:

- paths: `as_path` gives a `pathlib.Path` for a local path and a `upath.UPath` (same API, backed
  by fsspec) for a URL; `str()` of either is what travels to workers.
- Parquet through pyarrow with the fsspec filesystem of the URL (credentials and endpoints come
  from the usual environment: `GOOGLE_APPLICATION_CREDENTIALS`, `AWS_ENDPOINT_URL`, ...).
- arrays: `.npy` files are memory-mapped where they are read. A remote one is first copied to a
  local cache shared by the processes of a host (keyed by the object's path and version, so a
  rewritten file is fetched again; `remove` of a run folder drops the copies of its files);
  `load_rows` reads one row range without a copy (a k-NN shard worker), `load_ranges` several;
  `create_array`/`publish_array` build a large array through a local memmap and upload it.

Writes to an object store need no temporary name: an object appears only when its upload
completes, which is the atomicity `rundir.write_*` get from a rename on a local disk.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("lvd")


def is_url(path: Any) -> bool:
    return "://" in str(path)


def as_path(path: Any) -> Path:
    """A local path as `pathlib.Path`; a URL as a `upath.UPath` (a Path look-alike over fsspec)."""
    if not is_url(path):
        return Path(path)
    from upath import UPath

    # No listing cache: workers in other processes add files the driver then lists or checks.
    return path if isinstance(path, UPath) else UPath(str(path), use_listings_cache=False)


def _fs_path(path: Any) -> tuple[Any, str]:
    p = as_path(path)
    return p.fs, p.path


def makedirs(path: Any) -> None:
    """A local folder and its parents; nothing on an object store (folders are name prefixes)."""
    if not is_url(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def files(folder: Any, pattern: str) -> list[Any]:
    """Files matching `pattern` under `folder`, sorted as paths sort (part by part)."""
    return sorted(as_path(folder).glob(pattern), key=lambda p: p.parts)


def file_size(path: Any) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    fs, p = _fs_path(path)
    return int(fs.size(p))


def remove(path: Any) -> None:
    """A file or a whole folder, if present; so are the local copies of its files that any process
    of this host made (`local_copy`)."""
    if is_url(path):
        fs, p = _fs_path(path)
        if not fs.exists(p):
            return
        stale = fs.find(p)  # a file's own path, or every file under a folder
        fs.rm(p, recursive=True)
        for key in stale:
            for local in cache_dir().glob(f"{_digest(key, 24)}-*.npy"):
                _drop(local)
        return
    target = Path(path)
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


@contextmanager
def open_atomic(path: str | Path) -> Iterator[Any]:
    """A binary file handle whose bytes appear under `path` only once the block ends without an
    error: a temporary name renamed on a local disk; on an object store the upload itself (an
    object appears whole when it completes, and an aborted upload leaves nothing)."""
    target = as_path(path)
    if is_url(target):
        f = target.fs.open(target.path, "wb")
        try:
            yield f
        except BaseException:
            try:  # closing would complete the upload of what was written so far: cancel it
                f.discard()
            except Exception as exc:  # an unfinished upload never becomes an object; cancelling is tidying
                log.debug("could not cancel the upload of %s: %s", path, exc)
            f.closed = True
            raise
        f.close()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# -- Parquet --------------------------------------------------------------------------------------
def read_parquet(path: Any, columns: Iterable[str] | None = None) -> pa.Table:
    cols = list(columns) if columns is not None else None
    if not is_url(path):
        return pq.read_table(path, columns=cols)
    fs, p = _fs_path(path)
    return pq.read_table(p, columns=cols, filesystem=fs)


def parquet_file(path: Any) -> pq.ParquetFile:
    if not is_url(path):
        return pq.ParquetFile(path)
    fs, p = _fs_path(path)
    return pq.ParquetFile(p, filesystem=fs)  # pyarrow owns (and closes) the file


def parquet_rows(path: Any) -> int:
    return parquet_file(path).metadata.num_rows


def parquet_schema(path: Any) -> pa.Schema:
    return parquet_file(path).schema_arrow


# -- arrays ---------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where remote arrays are copied to be memory-mapped (`LVD_CACHE_DIR`, else the temp dir)."""
    root = os.environ.get("LVD_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"lvd-cache-{os.getuid()}")
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(root)


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _cache_file(key: str, version: str) -> Path:
    """The local copy of one version of an object, named by its path in its filesystem (so that
    `remove` finds the copies of a folder's files) and its version."""
    return cache_dir() / f"{_digest(key, 24)}-{_digest(version, 8)}.npy"


def local_copy(path: Any) -> str:
    """A local file with the bytes of `path`: the path itself when local, else a copy in
    `cache_dir()` made once per object version and shared by the processes of this host."""
    if not is_url(path):
        return str(path)
    fs, p = _fs_path(path)
    local = _cache_file(p, str(fs.ukey(p)))
    if not local.exists():
        tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex}")  # threads of one worker race here
        fs.get_file(p, str(tmp))
        _install(tmp, local, str(path))
    return str(local)


def _install(tmp: str | Path, local: Path, url: str) -> None:
    """A finished copy into the cache, its origin note (the URL it copies) written first: a copy
    never lacks one (`origin`, `prune_cache`)."""
    local.with_suffix(".origin").write_text(url)
    os.replace(tmp, local)


def _drop(local: Path) -> None:
    local.unlink(missing_ok=True)
    local.with_suffix(".origin").unlink(missing_ok=True)


def origin(local: str) -> str | None:
    """The URL a cached local copy was made from (None for any other file, such as a file of a
    local run directory)."""
    path = Path(local)
    note = path.with_suffix(".origin")
    return note.read_text() if path.parent == cache_dir() and note.exists() else None


def prune_cache() -> int:
    """Delete this host's cached copies whose object is gone or was rewritten since (a worker host
    keeps copies after the driver removed a stage's scratch folder: the engine runs this on every
    host after each stage). Returns the number of copies deleted."""
    pruned = 0
    for note in sorted(cache_dir().glob("*.origin")):
        local = note.with_suffix(".npy")
        try:
            fs, p = _fs_path(note.read_text())
            current = fs.exists(p) and _cache_file(p, str(fs.ukey(p))) == local
        except Exception:  # noqa: BLE001 - an unreachable store or a vanished note: keep the copy
            continue
        if not current:
            _drop(local)
            pruned += 1
    return pruned


#: numpy parses a `.npy` header with `ast.literal_eval`, and CPython 3.11 keeps the AST builder's
#: recursion depth in state shared by the threads of a process: a garbage collection inside one
#: parse can run another thread's parse, and one of them fails with "SystemError: AST constructor
#: recursion depth mismatch" (CPython gh-106905). Beam runs a worker's tasks as
#: threads of one process, so every header this module parses is parsed under this lock.
_HEADER_LOCK = threading.Lock()


def _load(source: Any, mmap_mode: str | None = None) -> Any:
    """`np.load`, its header parsed under `_HEADER_LOCK` (a memmap reads nothing else)."""
    with _HEADER_LOCK:
        return np.load(source, mmap_mode=mmap_mode)


def load_array(path: Any, mmap: bool = True) -> np.ndarray:
    """A `.npy` file, read-only memory-mapped (a worker touches only the rows it reads), or read
    whole into memory (`mmap=False`: small arrays; a remote one is then not copied to disk)."""
    if mmap or not is_url(path):
        return _load(local_copy(path), mmap_mode="r" if mmap else None)
    fs, p = _fs_path(path)
    return _load(io.BytesIO(fs.cat_file(p)))


def save_npz(path: Any, **arrays: np.ndarray) -> None:
    """Small named arrays (a fitted model's parameters) as one `.npz`, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with open_atomic(path) as f:
        f.write(buf.getvalue())


def load_npz(path: Any) -> dict[str, np.ndarray]:
    """The arrays `save_npz` wrote, read whole."""
    return npz_arrays(as_path(path).read_bytes())


def npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` held in memory (each member's header is parsed as it is read)."""
    with _HEADER_LOCK, np.load(io.BytesIO(data)) as z:
        return {name: z[name] for name in z.files}


def load_rows(path: Any, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of a `.npy` file (C order), reading only those bytes: a shard worker of a remote
    array of a billion rows fetches its own range, not a local copy of the whole file."""
    return load_ranges(path, [(lo, hi)])[0]


def load_ranges(path: Any, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Each row range (lo, hi) of a `.npy` file (C order), the file opened once: memory-mapped
    locally, only those byte ranges fetched from object storage (a task reading its own records of
    a shared blob)."""
    if not is_url(path):
        whole = _load(path, mmap_mode="r")
        return [whole[lo:hi] for lo, hi in ranges]
    fs, p = _fs_path(path)
    with fs.open(p, "rb", block_size=1 << 16) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):  # 3.0 (utf-8 field names): not worth a range read
            whole = load_array(path)
            return [whole[lo:hi] for lo, hi in ranges]
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        with _HEADER_LOCK:
            shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        whole = load_array(path)
        return [whole[lo:hi] for lo, hi in ranges]
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    clamped = [(max(0, min(lo, shape[0])), max(0, min(hi, shape[0]))) for lo, hi in ranges]
    out: list[np.ndarray] = [np.empty((0, *shape[1:]), dtype)] * len(clamped)
    todo = [i for i, (lo, hi) in enumerate(clamped) if hi > lo]
    if todo:
        data = fs.cat_ranges([p] * len(todo), [offset + clamped[i][0] * row for i in todo],
                             [offset + clamped[i][1] * row for i in todo])
        for i, chunk in zip(todo, data):
            out[i] = np.frombuffer(chunk, dtype).reshape((clamped[i][1] - clamped[i][0], *shape[1:]))
    return out


def save_array(path: Any, array: np.ndarray) -> None:
    """`array` as a `.npy` file, atomically (written whole; for arrays too big for memory see
    `create_array`)."""
    with open_atomic(path) as f:
        np.save(f, np.ascontiguousarray(array))


def create_array(path: Any, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new `.npy` of `shape` to fill through a writable memmap; `publish_array` finishes it. A
    remote file is built in the local cache and uploaded by `publish_array`."""
    local = Path(path) if not is_url(path) else cache_dir() / f"new-{uuid.uuid4().hex}.npy"
    local.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(local, mode="w+", dtype=dtype, shape=shape)
    try:
        _reserve(local)
    except OSError:
        del array  # unmapped now: the traceback keeps this frame, and a mapping keeps its disk busy
        raise
    return array


def _reserve(local: Path) -> None:
    """Allocate a new sparse file's blocks now: a full disk is then an `OSError` naming the file
    here, not a SIGBUS (which no handler can turn into a message) when the memmap is written."""
    with open(local, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                local.unlink(missing_ok=True)
                raise OSError(exc.errno, os.strerror(exc.errno), str(local)) from None
            # a filesystem without fallocate (EOPNOTSUPP, EINVAL): the blocks come as written


def publish_array(path: Any, array: np.memmap) -> np.ndarray:
    """The array `create_array` made, flushed (and uploaded when remote), as a read-only memmap."""
    array.flush()
    local = str(array.filename)
    del array
    if not is_url(path):
        return _load(local, mmap_mode="r")
    url = str(path)
    fs, p = _fs_path(url)
    fs.put_file(local, p)
    cached = _cache_file(p, str(fs.ukey(p)))
    _install(local, cached, url)
    return _load(cached, mmap_mode="r")
