"""`lvd curate`: the whole pipeline, on the demo world or on your own pool."""
from __future__ import annotations

import argparse

from pipelines.options import add_run_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="run the whole curation pipeline",
                       description="Ingest -> filter -> hash dedup -> embedding dedup -> relative dedup -> clustering -> "
                                   "retrieval -> output shards -> report. With no --pool, runs the demo world "
                                   "(built into RUN/world unless --world names an existing one).")
    p.add_argument("--recipe", default="demo", help="recipe name or YAML path (default: demo)")
    p.add_argument("--seeds", help="seed datasets: a recipe name or a comma list (e.g. imagenet22k,caltech101)")
    p.add_argument("--seeds-config", metavar="YAML", help="seeds.yaml with the seed locations (default: $LVD_SEEDS or ./seeds.yaml)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (created; rerun to resume)")
    p.add_argument("--world", metavar="DIR", help="existing demo world to use")
    p.add_argument("--world-size", choices=["small", "medium", "web"], default="small",
                   help="size of a built demo world (web: a pool dominated by off-concept images and duplicates, for lvd ablate)")
    p.add_argument("--seed", type=int, default=0, help="seed of a built demo world")
    p.add_argument("--pool", nargs="+", default=[], metavar="SRC", help="uncurated pool inputs (instead of the demo world)")
    p.add_argument("--pool-format", default=None, help="force the pool reader (see `lvd ingest --help`)")
    p.add_argument("--crawl", nargs="+", default=[], metavar="WARC", help="WARC / WAT files whose <img> URLs feed the pool (downloaded politely; NSFW filter and face blurring on)")
    p.add_argument("--eval", dest="eval_sources", nargs="+", default=[], metavar="SRC", help="evaluation sets for relative dedup")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.curate import curate
    from curation.core.rundir import run_path

    return curate(args, run_path(args.out))
