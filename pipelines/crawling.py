"""Crawled data into a run: image references -> downloader -> decode/safety stage -> `RUN/pool/`.

`download_into_run` streams image references through the downloader (`curation.crawl.fetch`),
hands each shard of downloads to the engine's decode task (`pipelines.ingest.decode_shard`, with
the NSFW filter and face blurring on for crawled data) and writes one status row per URL under
`RUN/fetch/`. A rerun skips URLs that already have a status row. Used by `lvd fetch`, `lvd crawl`
and `lvd curate --crawl`.
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

FETCH_DIR = "fetch"


def decode_fetched_shard(
    index: int, items: list, decode_cfg: dict[str, Any], root: str, key: str, status_rows: list[dict]
) -> dict[str, int]:
    """Engine task: decode one shard of downloads (pool part, reject part, marker), then its status rows.

    The status part is written last: it is what marks the shard's URLs done for a rerun.
    """
    from pipelines.ingest import decode_shard

    counts = decode_shard(index, items, decode_cfg, root, key, "pool")
    _write_status(index, root, status_rows)
    return counts


def _write_status(index: int, root: str, status_rows: list[dict]) -> None:
    import pyarrow as pa

    from curation.crawl.status import FETCH
    from pipelines.ingest import shard_name
    from curation.core.rundir import RunDir, write_table

    write_table(pa.Table.from_pylist(status_rows, schema=FETCH), RunDir(root).path(FETCH_DIR, shard_name(index)))


# -- item-by-item retry of a shard of downloads whose worker died or hung --------------------------
def _split_fetched(task: tuple) -> tuple[tuple, list]:
    index, items, decode_cfg, root, key, status_rows = task
    return (index, decode_cfg, root, key, "pool", status_rows), items


def _join_fetched(head: tuple, parts: list) -> dict[str, int]:
    from pipelines.ingest import join_parts, write_shard

    pool, rejects = join_parts(parts)
    counts = write_shard(head[:5], pool.num_rows + rejects.num_rows, pool, rejects)
    _write_status(head[0], head[2], head[5])
    return counts


def fetch_isolation() -> Any:
    """The `Isolation` of `decode_fetched_shard` tasks (the ingest one, plus the status rows)."""
    from pipelines.engines.isolation import Isolation
    from pipelines.ingest import decode_part, item_seconds, lost_item

    return Isolation(split=_split_fetched, part=decode_part, failed=lost_item, join=_join_fetched,
                     item_seconds=item_seconds)


def _first_free_shard(run: Any) -> int:
    """Shard index after every pool or status part already in the run (reruns never overwrite)."""
    from curation.core.storage import files

    names = [p.name for d in (run.pool, run.path(FETCH_DIR)) for p in files(d, "part-*.parquet")]
    indices = [int(n[5:-8]) for n in names if n[5:-8].isdigit()]
    return max(indices, default=-1) + 1


def download_into_run(
    run: Any,
    refs: Iterable[Any],
    cfg: Any,
    engine: Any = None,
    progress: bool = True,
    trace_configs: Sequence[Any] = (),
) -> dict[str, Any]:
    """Download `ImageRef`s into `RUN/pool/` through the decode stage; status rows in `RUN/fetch/`.

    Downloads are cut into shards of `cfg.shard_rows` in completion order; each shard is decoded
    by the engine (`pipelines.ingest.decode_shard`: pool part, reject part, marker) and then gets
    its status part, so a killed run never marks a URL done whose image is not in the pool (at
    worst it downloads the unfinished shards again). Shard indices continue after the parts
    already in the run. URLs with a status row are skipped. Returns counts for the manifest.
    """
    from tqdm import tqdm

    from curation.crawl.fetch import fetch_stream
    from curation.crawl.status import FetchStats, done_urls
    from curation.crawl.urls import UrlFilter
    from curation.sources.inputs import SourceItem
    from pipelines.ingest import finalize_rejects
    from curation.core.rundir import key_of

    done = done_urls(run.path(FETCH_DIR))
    skipped = 0

    def todo() -> Iterator[tuple[str, dict[str, Any]]]:
        nonlocal skipped
        for ref in refs:
            if ref.url in done:
                skipped += 1
                continue
            yield ref.url, ref.meta()

    stats = FetchStats()
    bar = tqdm(unit="url", desc="fetch", disable=not progress, dynamic_ncols=True, mininterval=0.5)
    from pipelines.ingest import shard_config

    decode_cfg = shard_config(cfg, crawled=True)
    key = key_of(decode_cfg, "fetch")
    stream = fetch_stream(todo(), cfg.crawl, UrlFilter.from_config(cfg.crawl), trace_configs)

    def tasks() -> Iterator[tuple]:
        for index in itertools.count(_first_free_shard(run)):
            chunk = list(itertools.islice(stream, cfg.shard_rows))
            if not chunk:
                return
            items, rows = [], []
            for result, meta in chunk:
                stats.add(result)
                if result.ok:
                    meta = {**meta, "final_url": result.final_url, "content_type": result.content_type}
                    items.append(SourceItem(result.url, result.data, meta))
                else:  # a URL that gave no image is an input not kept: it gets a reject row too
                    items.append(SourceItem(result.url, None, meta, error=f"fetch-{result.error}: {result.message}"))
                result.data = None
                rows.append(result.row())
            bar.update(len(chunk))
            bar.set_postfix_str(stats.postfix(), refresh=False)
            yield (index, items, decode_cfg, str(run.root), key, rows)

    own_engine = engine is None
    if own_engine:
        from pipelines.engines.local import LocalEngine

        engine = LocalEngine(cfg.workers, progress=False)
    decode = {"inputs": 0, "kept": 0, "rejected": 0}
    try:
        for counts in engine.map(decode_fetched_shard, tasks(), desc="decode", isolation=fetch_isolation()):
            for k in decode:
                decode[k] += int(counts[k])
    finally:
        stream.close()
        bar.close()
        if own_engine:
            engine.close()
    finalize_rejects(run)
    return {**stats.summary(), "skipped_done": skipped, "decode": decode}


def _dedup(refs: Iterable[Any], counts: dict[str, int]) -> Iterator[Any]:
    from curation.crawl.urls import UrlSet

    seen = UrlSet()
    for ref in refs:
        if seen.add(ref.url):
            yield ref
        else:
            counts["duplicate"] = counts.get("duplicate", 0) + 1


def fetch_lists_into_run(run: Any, lists: Sequence[str], cfg: Any, engine: Any = None, progress: bool = True) -> dict[str, Any]:
    """`lvd fetch`: every URL of the lists (deduplicated, in order) into the run's pool."""
    from curation.crawl.urllist import iter_url_list

    counts: dict[str, int] = {}
    refs = _dedup(itertools.chain.from_iterable(iter_url_list(p, counts) for p in lists), counts)
    summary = download_into_run(run, refs, cfg, engine, progress)
    return {**summary, "list": counts}


def crawl_into_run(run: Any, archives: Sequence[str], cfg: Any, engine: Any = None, progress: bool = True) -> dict[str, Any]:
    """Extract image URLs from WARC/WAT files (filtered, deduplicated) and download them into `run`.

    `run` is a `curation.core.rundir.RunDir`, `cfg` a `RunConfig` (its `crawl` section drives both
    extraction filters and download), `engine` the engine that decodes (None: a local process pool
    of `cfg.workers`). Returns counts for the manifest: `extract` (found, kept,
    duplicate, drop reasons) and the download summary.
    """
    from curation.crawl.extract import iter_image_refs
    from curation.crawl.urls import UrlFilter

    counts: Counter = Counter()
    refs = iter_image_refs(archives, UrlFilter.from_config(cfg.crawl), counts)
    summary = download_into_run(run, refs, cfg, engine, progress)
    return {**summary, "extract": dict(sorted(counts.items()))}
