"""`lvd dedup`: deduplicate a run's pool (hash, then embedding; relative to evaluation sets)."""
from __future__ import annotations

import argparse

from pipelines.options import add_run_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dedup", help="find duplicates in RUN/pool -> RUN/dedup/components.parquet",
                       description="Exact and PCA-hash (or pHash) near-duplicate detection, embedding k-NN self-dedup and "
                                   "relative dedup against evaluation sets. With no --method: hash then embedding, as the paper.")
    p.add_argument("run_dir", metavar="RUN", help="run directory with an ingested pool")
    p.add_argument("--method", choices=["hash", "embedding", "all"], default="all", help="detectors to use (default: all available)")
    p.add_argument("--hash", dest="hash_method", choices=["pca", "phash"], help="perceptual hash (default: pca)")
    p.add_argument("--radius", type=int, help="Hamming radius for hash duplicates")
    p.add_argument("--k", type=int, help="neighbours per image for embedding dedup (paper: 64)")
    p.add_argument("--threshold", type=float, help="cosine similarity above which images are duplicates")
    p.add_argument("--against", nargs="+", default=[], metavar="EVALSRC", help="evaluation sets for relative dedup")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from curation.core.errors import UserError
    from pipelines.graph import run_stages
    from pipelines.options import build_context, existing_paths
    from pipelines.pipeline import available_methods, pipeline
    from curation.core.rundir import RunDir
    from pipelines.summary import format_summary

    if not RunDir(args.run_dir).pool_files():
        raise UserError(f"{args.run_dir} has no ingested pool (run `lvd ingest SRC --out {args.run_dir}` first)")
    for flag, key in (("hash_method", "hashing.method"), ("radius", "hashing.radius"), ("k", "dedup.k")):
        if getattr(args, flag) is not None:
            args.overrides.append(f"{key}={getattr(args, flag)}")
    if args.threshold is not None:
        args.overrides.append(f"dedup.{'relative' if args.against else 'self'}_threshold={args.threshold}")
    methods = available_methods() if args.method == "all" else ("hash",) if args.method == "hash" else ("hash", "embedding")
    ctx = build_context(args, args.run_dir, dedup_methods=methods, eval_sources=existing_paths(args.against))
    previous = ctx.run.manifest().get("inputs", {})
    ctx.pool_sources, ctx.pool_format = previous.get("pool", []), previous.get("pool_format")
    try:
        report = run_stages(ctx, pipeline(), force=tuple(args.force), until="components")
    finally:
        ctx.engine.close()
    print(format_summary(f"lvd dedup {args.run_dir}", report))
    return 0
