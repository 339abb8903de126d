"""Fetch status rows (`RUN/fetch/part-*.parquet`), resume, and the progress line.

Every URL handed to the downloader gets exactly one row: `error` is null when the image was
downloaded (what became of it afterwards, kept or rejected by decode, is in the pool and
rejects), else a short code. A rerun reads the `url` column of these files and skips those URLs.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyarrow as pa

from curation.crawl.urls import UrlSet
from curation.core.storage import files, parquet_file

FETCH = pa.schema(
    [
        ("url", pa.string()),  # as requested (normalised)
        ("final_url", pa.string()),  # after redirects; null when no response was received
        ("status", pa.int32()),  # last HTTP status, 0 when there was none
        # null = downloaded; else robots | x-robots-tag | timeout | too-large | content-type |
        # too-many-redirects | blocked-address | dns | connection | http-<code> | bad-url | filtered-url
        ("error", pa.string()),
        ("message", pa.string()),
        ("bytes", pa.int64()),  # body bytes received
        ("elapsed", pa.float32()),  # seconds, all attempts and backoff included
        ("attempts", pa.int16()),
        ("content_type", pa.string()),
    ]
)


@dataclass
class FetchResult:
    """The outcome of one URL: its status row, and the body when it was downloaded."""

    url: str
    final_url: Optional[str] = None
    status: int = 0
    error: Optional[str] = None
    message: str = ""
    bytes: int = 0
    elapsed: float = 0.0
    attempts: int = 0
    content_type: str = ""
    data: Optional[bytes] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def row(self) -> dict:
        return {name: getattr(self, name) for name in FETCH.names}


def status_table(results: list[FetchResult]) -> pa.Table:
    return pa.Table.from_pylist([r.row() for r in results], schema=FETCH)


def status_files(fetch_dir: Path) -> list[Path]:
    return files(fetch_dir, "part-*.parquet")


def done_urls(fetch_dir: Path) -> UrlSet:
    """URLs that already have a status row (read column by column: memory ~ 8 bytes per URL)."""
    done = UrlSet()
    for path in status_files(fetch_dir):
        for batch in parquet_file(path).iter_batches(columns=["url"], batch_size=65_536):
            for url in batch.column(0).to_pylist():
                done.add(url)
    return done


class FetchStats:
    """Running counts for the progress bar and the run manifest."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.total = 0
        self.ok = 0
        self.bytes = 0
        self.errors: Counter[str] = Counter()

    def add(self, result: FetchResult) -> None:
        self.total += 1
        self.bytes += result.bytes
        if result.ok:
            self.ok += 1
        else:
            self.errors[result.error or "unknown"] += 1

    def postfix(self) -> str:
        """`ok 93.1% | timeout 12, http-404 3` — the bar's rate comes from tqdm itself."""
        ratio = self.ok / self.total if self.total else 0.0
        top = ", ".join(f"{k} {v}" for k, v in self.errors.most_common(4))
        return f"ok {ratio:.1%}" + (f" | {top}" if top else "")

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.start
        return {
            "urls": self.total,
            "downloaded": self.ok,
            "success_ratio": round(self.ok / self.total, 4) if self.total else 0.0,
            "bytes": self.bytes,
            "seconds": round(seconds, 3),
            "urls_per_s": round(self.total / seconds, 2) if seconds > 0 else 0.0,
            "errors": dict(sorted(self.errors.items())),
        }
