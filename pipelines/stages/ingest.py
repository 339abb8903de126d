"""Stage `ingest`: the run's pool sources -> `RUN/pool/` and reject rows."""
from __future__ import annotations

from typing import Any

from curation.sources.inputs import fingerprint, iter_sources
from pipelines.context import RunContext
from curation.core.errors import UserError
from pipelines.ingest import ingest_items


def run_ingest(ctx: RunContext) -> dict[str, Any]:
    """Local / fsspec sources first, then crawled archives (their shards continue the numbering)."""
    archives = ctx.extra.get("crawl", [])
    if not ctx.pool_sources and not archives:
        raise UserError("no pool sources given (--pool SRC... or --crawl WARC...)")
    ctx.run.update_manifest(inputs={"pool": ctx.pool_sources, "pool_format": ctx.pool_format, "crawl": archives})
    counts: dict[str, Any] = {}
    if ctx.pool_sources:
        counts = ingest_items(ctx.run, iter_sources(ctx.pool_sources, ctx.pool_format), ctx.cfg, ctx.engine)
    if archives:
        from pipelines.crawling import crawl_into_run

        crawled = crawl_into_run(ctx.run, archives, ctx.cfg, ctx.engine, ctx.progress)
        decode = crawled.get("decode", {})
        for k in ("inputs", "kept", "rejected"):
            counts[k] = counts.get(k, 0) + int(decode.get(k, 0))
        counts["crawled_urls"] = int(crawled.get("attempted", crawled.get("urls", 0)) or 0)
    return counts


def ingest_key(ctx: RunContext) -> Any:
    archives = ctx.extra.get("crawl", [])
    return [ctx.pool_sources, ctx.pool_format, ctx.cfg.decode.model_dump(mode="json"), ctx.cfg.shard_rows,
            ctx.cfg.safety.model_dump(mode="json"), fingerprint(ctx.pool_sources) if ctx.pool_sources else None,
            archives, fingerprint(archives) if archives else None, ctx.cfg.fingerprint("crawl") if archives else None]
