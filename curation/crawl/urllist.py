"""URL lists for `lvd fetch` (img2dataset-style): .txt, .csv/.tsv, .parquet, local or fsspec, streamed.

A list is read row by row (Parquet batch by batch), never loaded whole, so a 1M-URL list costs
the same memory as a 1k one. Each URL is normalised; a caption column (`caption`, `alt`, `text`,
`title`) becomes the image's alt text in its metadata.
"""
from __future__ import annotations

import csv
from typing import Iterator, Optional

import fsspec
import pyarrow.parquet as pq

from curation.crawl.extract import ImageRef
from curation.crawl.urls import normalize_url

URL_COLUMNS = ("url", "URL", "image_url", "img_url", "src")
CAPTION_COLUMNS = ("caption", "alt", "text", "title", "TEXT")


def _pick(names: list[str], wanted: tuple[str, ...], what: str, path: str, required: bool) -> Optional[str]:
    found = next((c for c in wanted if c in names), None)
    if found is None and required:
        from curation.core.errors import UserError

        raise UserError(f"{path}: no {what} column (one of: {', '.join(wanted)}; found: {', '.join(names)[:200]})")
    return found


def iter_url_list(path: str, counts: Optional[dict] = None) -> Iterator[ImageRef]:
    """Image references of one list; rows whose URL is not http(s) are counted as `bad-url`."""
    counts = counts if counts is not None else {}
    lower = path.lower()
    if lower.endswith(".parquet"):
        rows = _parquet_rows(path)
    elif lower.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        rows = _csv_rows(path, "\t" if ".tsv" in lower else ",")
    else:
        rows = _txt_rows(path)
    for raw, caption in rows:
        url = normalize_url(raw) if raw else None
        if url is None:
            counts["bad-url"] = counts.get("bad-url", 0) + 1
            continue
        yield ImageRef(url, page_url="", alt=" ".join((caption or "").split())[:1000])


def _txt_rows(path: str) -> Iterator[tuple[str, str]]:
    with fsspec.open(path, "rt", encoding="utf-8", errors="replace", compression="infer") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line, ""


def _csv_rows(path: str, delimiter: str) -> Iterator[tuple[str, str]]:
    with fsspec.open(path, "rt", encoding="utf-8", errors="replace", newline="", compression="infer") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        names = list(reader.fieldnames or [])
        url_col = _pick(names, URL_COLUMNS, "URL", path, required=True)
        cap_col = _pick(names, CAPTION_COLUMNS, "caption", path, required=False)
        for row in reader:
            yield (row.get(url_col) or "").strip(), (row.get(cap_col) or "") if cap_col else ""


def _parquet_rows(path: str) -> Iterator[tuple[str, str]]:
    with fsspec.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        url_col = _pick(names, URL_COLUMNS, "URL", path, required=True)
        cap_col = _pick(names, CAPTION_COLUMNS, "caption", path, required=False)
        columns = [url_col] + ([cap_col] if cap_col else [])
        for batch in pf.iter_batches(batch_size=8192, columns=columns):
            urls = batch.column(0).to_pylist()
            caps = batch.column(1).to_pylist() if cap_col else [""] * len(urls)
            for url, cap in zip(urls, caps):
                yield (url or "").strip(), str(cap or "")
