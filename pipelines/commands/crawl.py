"""`lvd crawl WARC_OR_WAT... --out RUN`: image URLs of crawled pages, downloaded into a run's pool.

The glue (`crawl_into_run`, also used by `lvd curate --crawl`) lives in `pipelines/crawling.py`.
"""
from __future__ import annotations

import argparse

from pipelines.commands.fetch import add_crawl_options, config_from_args, open_run, report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "crawl",
        help="download the images of crawled pages (WARC / WAT) into a run's pool",
        description="Extract <img> URLs (src, srcset, data-src) from WARC responses or WAT metadata, drop "
        "blocked and unsafe domains, download them politely and safely into RUN/pool/.",
    )
    p.add_argument("archives", nargs="+", metavar="WARC_OR_WAT", help="WARC or WAT files (.gz or not), local or fsspec URLs")
    add_crawl_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.crawling import crawl_into_run

    cfg = config_from_args(args)
    run_dir = open_run(args)
    summary = crawl_into_run(run_dir, args.archives, cfg, progress=not args.no_progress)
    run_dir.update_manifest(crawl=summary)
    print(report(summary, "crawl"))
    return 0
