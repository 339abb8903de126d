"""Reading inputs: folders, tar / WebDataset shards, Parquet, plain-text lists, local or fsspec.

Every reader yields `SourceItem`s (source name, raw bytes, metadata) in a deterministic order, so
the same inputs always give the same pool. Unreadable inputs yield an item with `error` set: the
decode stage turns that into a reject row instead of crashing the run.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
import pyarrow.parquet as pq

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"}
#: Parquet columns that may hold image bytes or a path, in order of preference.
BYTES_COLUMNS = ("image", "jpg", "jpeg", "png", "bytes", "image_bytes")
PATH_COLUMNS = ("path", "file", "filename", "image_path", "url")
FORMATS = ("auto", "imagefolder", "folder", "tar", "webdataset", "tar-per-class", "parquet", "filelist")


@dataclass
class SourceItem:
    """One input image (or one unreadable input): `source` names it for rejects and provenance."""

    source: str
    data: bytes | None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _ext(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _full(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local")) else path


def detect_format(uri: str) -> str:
    """Guess the reader from the path: a directory, an archive, a Parquet file or a list."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        from curation.core.errors import UserError

        raise UserError(f"input not found: {uri}")
    if fs.isdir(path):
        return "folder"
    ext = _ext(path)
    if ext == ".tar":
        return "tar"
    if ext == ".parquet":
        return "parquet"
    if ext in (".txt", ".lst", ".list"):
        return "filelist"
    if ext in IMAGE_EXTENSIONS:
        return "file"
    return "file"


def iter_source(uri: str, fmt: str | None = None) -> Iterator[SourceItem]:
    """Yield every image of one input, whatever its format (see FORMATS)."""
    fmt = (fmt or "auto").lower()
    if fmt == "auto":
        fmt = detect_format(uri)
    if fmt in ("folder", "imagefolder"):
        yield from _iter_folder(uri, label_from_parent=fmt == "imagefolder")
    elif fmt in ("tar", "webdataset"):
        yield from _iter_tar(uri)
    elif fmt == "tar-per-class":
        yield from _iter_tar_per_class(uri)
    elif fmt == "parquet":
        yield from _iter_parquet(uri)
    elif fmt == "filelist":
        yield from _iter_filelist(uri)
    elif fmt == "file":
        yield _read_file(uri)
    else:
        from curation.core.errors import UserError

        raise UserError(f"unknown input format {fmt!r} for {uri} (one of: {', '.join(FORMATS)})")


def iter_sources(uris: list[str], fmt: str | None = None) -> Iterator[SourceItem]:
    for uri in uris:
        yield from iter_source(uri, fmt)


def _read_file(uri: str, meta: dict[str, Any] | None = None) -> SourceItem:
    try:
        with fsspec.open(uri, "rb") as f:
            return SourceItem(uri, f.read(), meta or {})
    except OSError as exc:
        return SourceItem(uri, None, meta or {}, error=f"unreadable: {exc}")


def _iter_folder(uri: str, label_from_parent: bool) -> Iterator[SourceItem]:
    fs, root = _fs(uri)
    root = root.rstrip("/")
    for path in sorted(fs.find(root)):
        name = path.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        ext = _ext(name)
        full = _full(fs, path)
        rel = path[len(root) + 1 :]
        meta: dict[str, Any] = {}
        if label_from_parent and "/" in rel:
            meta["label"] = rel.split("/")[0]
        if ext == ".tar":
            yield from _iter_tar(full, extra_meta=meta)
        elif ext == ".parquet":
            yield from _iter_parquet(full)
        elif ext in (".json", ".txt", ".csv", ".md", ".yaml"):
            continue  # sidecar metadata, not images
        else:
            # Files with unknown extensions are still offered to the decoder: a PNG named .dat is
            # a good image, and a text file named .jpg must become a reject row, not vanish.
            yield _read_file(full, dict(meta))


def _iter_tar(uri: str, extra_meta: dict[str, Any] | None = None) -> Iterator[SourceItem]:
    """Plain tars and WebDataset shards: members grouped by key; sidecar .json/.cls become meta."""
    try:
        with fsspec.open(uri, "rb") as raw:
            data = raw.read()
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    except (OSError, tarfile.TarError, EOFError) as exc:
        yield SourceItem(uri, None, dict(extra_meta or {}), error=f"bad-archive: {exc}")
        return
    sidecars: dict[str, dict[str, Any]] = {}
    for m in members:
        key, ext = m.name.rsplit(".", 1) if "." in m.name else (m.name, "")
        if ext in ("json", "cls", "txt"):
            try:
                raw_bytes = tar.extractfile(m).read()  # type: ignore[union-attr]
                sidecars.setdefault(key, {})
                if ext == "json":
                    sidecars[key].update(json.loads(raw_bytes))
                elif ext == "cls":
                    sidecars[key]["label"] = raw_bytes.decode().strip()
                else:
                    sidecars[key]["caption"] = raw_bytes.decode(errors="replace")
            except (ValueError, OSError):
                pass
    for m in members:
        key, _, ext = m.name.rpartition(".")
        if ext in ("json", "cls", "txt"):
            continue
        meta = {**(extra_meta or {}), **sidecars.get(key or m.name, {})}
        source = f"{uri}::{m.name}"
        try:
            yield SourceItem(source, tar.extractfile(m).read(), meta)  # type: ignore[union-attr]
        except (OSError, tarfile.TarError) as exc:
            yield SourceItem(source, None, meta, error=f"bad-archive: {exc}")


def _iter_tar_per_class(uri: str) -> Iterator[SourceItem]:
    """ImageNet-22k layout: a folder of `<class>.tar` files; the class is the tar's stem."""
    fs, root = _fs(uri)
    for path in sorted(fs.glob(root.rstrip("/") + "/*.tar")):
        label = path.rsplit("/", 1)[-1][: -len(".tar")]
        yield from _iter_tar(_full(fs, path), extra_meta={"label": label})


def _iter_parquet(uri: str) -> Iterator[SourceItem]:
    with fsspec.open(uri, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        bytes_col = next((c for c in BYTES_COLUMNS if c in names), None)
        path_col = next((c for c in PATH_COLUMNS if c in names), None)
        if bytes_col is None and path_col is None:
            from curation.core.errors import UserError

            raise UserError(f"{uri}: no image-bytes column ({', '.join(BYTES_COLUMNS)}) or path column ({', '.join(PATH_COLUMNS)})")
        meta_cols = [c for c in names if c not in (bytes_col,) and c in ("label", "caption", "url", "image_id", "source", "concept")]
        row = 0
        for batch in pf.iter_batches(batch_size=256):
            cols = batch.to_pydict()
            for i in range(batch.num_rows):
                meta = {c: cols[c][i] for c in meta_cols if cols[c][i] is not None}
                source = f"{uri}#{row}"
                row += 1
                if bytes_col is not None and cols[bytes_col][i] is not None:
                    value = cols[bytes_col][i]
                    if isinstance(value, dict):  # HF `datasets` Image feature: {"bytes", "path"}
                        value = value.get("bytes")
                    yield SourceItem(str(meta.pop("source", source)), value, meta)
                elif path_col is not None and cols[path_col][i]:
                    yield _read_file(cols[path_col][i], meta)
                else:
                    yield SourceItem(source, None, meta, error="empty: no bytes and no path in row")


def _iter_filelist(uri: str) -> Iterator[SourceItem]:
    with fsspec.open(uri, "rt") as f:
        for line in f:
            path = line.strip()
            if path and not path.startswith("#"):
                yield _read_file(path)


def fingerprint(uris: list[str]) -> str:
    """A cheap content key of the inputs (names, sizes, modification times), so a run notices
    when its inputs changed and re-ingests instead of resuming over stale shards."""
    import hashlib

    h = hashlib.sha256()
    for uri in uris:
        fs, path = _fs(uri)
        entries = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
        for name in sorted(entries):
            info = entries[name]
            h.update(f"{name}\0{info.get('size')}\0{info.get('mtime') or info.get('LastModified') or info.get('updated')}\n".encode())
    return h.hexdigest()[:16]
