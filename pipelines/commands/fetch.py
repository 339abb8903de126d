"""`lvd fetch URLLIST... --out RUN`: download the images of URL lists into a run's pool.

The run-directory glue lives in `pipelines/crawling.py`.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from pipelines.options import add_reuse_option

log = logging.getLogger(__name__)


def add_crawl_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `lvd fetch` and `lvd crawl` (each maps onto a `crawl.*` config key)."""
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (created; reruns resume)")
    p.add_argument("--config", help="YAML config or recipe; its `crawl:` section sets every option below")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. crawl.retries=3 (repeatable)")
    p.add_argument("--domains-blocklist", metavar="FILE", help="domains to skip, one per line (subdomains too)")
    p.add_argument("--unsafe-domains", metavar="FILE", help="unsafe domains added to the built-in list")
    p.add_argument("--max-per-host", type=int, help="requests in flight to one host (default 4)")
    p.add_argument("--host-delay", type=float, help="seconds between request starts to one host (default 0)")
    p.add_argument("--concurrency", type=int, help="requests in flight in total (default 64)")
    p.add_argument("--user-agent", metavar="UA", help="User-Agent header; its product token is matched in robots.txt")
    p.add_argument("--timeout", type=float, help="seconds per attempt, connect to last byte (default 60)")
    p.add_argument("--retries", type=int, help="retries after a 5xx or a timeout (default 2)")
    p.add_argument("--max-bytes", type=int, help="largest response body accepted (default 20 MiB)")
    p.add_argument("--no-robots", action="store_true", help="do not fetch or honour robots.txt")
    p.add_argument("--no-x-robots-tag", action="store_true", help="ignore X-Robots-Tag noai/noimageai/noindex")
    p.add_argument("--allow-private", action="store_true",
                   help="allow private and loopback addresses (the SSRF guard refuses them by default)")
    p.add_argument("--workers", type=int, help="decode processes (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_reuse_option(p)


_FLAGS = {
    "workers": "workers",
    "domains_blocklist": "crawl.domains_blocklist",
    "unsafe_domains": "crawl.unsafe_domains",
    "max_per_host": "crawl.max_per_host",
    "host_delay": "crawl.host_delay",
    "concurrency": "crawl.concurrency",
    "user_agent": "crawl.user_agent",
    "timeout": "crawl.total_timeout",
    "retries": "crawl.retries",
    "max_bytes": "crawl.max_bytes",
}


def config_from_args(args: argparse.Namespace) -> Any:
    """RunConfig from --config, --set and the crawl flags (flags win), every key and value checked."""
    from pipelines.options import run_config

    overrides: dict[str, Any] = {}
    for attr, key in _FLAGS.items():
        if getattr(args, attr, None) is not None:
            overrides[key] = getattr(args, attr)
    if args.no_robots:
        overrides["crawl.robots"] = False
    if args.no_x_robots_tag:
        overrides["crawl.x_robots_tag"] = False
    if args.allow_private:
        overrides["crawl.allow_private"] = True
    return run_config(args, extra=overrides)


def open_run(args: argparse.Namespace) -> Any:
    """The run directory, checked before any download (`curation.core.rundir.check_run_dir`)."""
    from pipelines.options import lvd_version
    from curation.core.rundir import check_run_dir

    return check_run_dir(args.out, version=lvd_version(), reuse=args.reuse)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch",
        help="download the images of URL lists (txt / csv / parquet) into a run's pool",
        description="Download images of URL lists (img2dataset-style) politely and safely, decode and "
        "filter them into RUN/pool/, one status row per URL in RUN/fetch/. Reruns skip done URLs.",
    )
    p.add_argument("lists", nargs="+", metavar="URLLIST", help=".txt (one URL a line), .csv/.tsv or .parquet (a `url` column)")
    add_crawl_options(p)
    p.set_defaults(func=run)


def report(summary: dict[str, Any], what: str) -> str:
    """One line for the terminal."""
    errors = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("errors", {}).items(), key=lambda kv: -kv[1])[:5])
    return (
        f"{what}: {summary['downloaded']}/{summary['urls']} downloaded ({summary['success_ratio']:.1%}), "
        f"{summary['skipped_done']} already done" + (f"; errors: {errors}" if errors else "")
    )


def run(args: argparse.Namespace) -> int:
    from pipelines.crawling import fetch_lists_into_run

    cfg = config_from_args(args)
    run_dir = open_run(args)
    summary = fetch_lists_into_run(run_dir, args.lists, cfg, progress=not args.no_progress)
    run_dir.update_manifest(fetch=summary)
    print(report(summary, "fetch"))
    return 0
