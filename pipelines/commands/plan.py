"""`lvd plan`: expected counts per recipe row (Table 15's arithmetic), a cost estimate, and the
engine-aware scale estimate of the whole funnel (`curation.plan.scale_model`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from curation.plan.scale_model import (
    CPU_CORES_PER_GPU,
    DEFAULT_WORKER_MEMORY_GIB,
    ENGINES,
    PQ_CODE_BYTES,
    SHARD_MEMORY_FRACTION,
    VIT_H_DIM,
    ScaleError,
)


def _positive_int(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="print what a recipe will produce and what it will cost",
        description="Expected retrieved and final counts per recipe row, the total, a cost estimate "
        "(embedding GPU-hours, index memory, disk, fit within the paper's GPU budget), and an engine-aware "
        "scale estimate of the whole funnel (unique pool -> curated set): raw embedding and IVF-PQ index "
        "bytes, index shards per worker memory, k-NN graph size, rounds of connected components, and hours "
        "per stage from the rates measured in bench/results.json (rates it lacks are assumed and labelled so).",
    )
    p.add_argument("--recipe", default="lvd142m", help="shipped recipe name or path to a recipe YAML (default: lvd142m)")
    p.add_argument("--pool-size", type=_positive_int, help="images in the deduplicated pool (default: the recipe's expected pool); the scale "
                   "estimate traces it back to the unique images entering dedup by the paper's funnel (744M -> 1.2B)")
    p.add_argument("--images-per-second", type=_positive_float, help="embedding rate per GPU (default: ViT-H/16 at the stated MFU of a V100)")
    p.add_argument("--gpus", type=_positive_int, help="GPUs available (default: the paper's 160)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="engine the scale estimate assumes: how it shards the k-NN index and runs connected "
                   "components, and its per-image overhead over local (default: local)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help=f"CPU cores across the cluster for the CPU stages (default: {CPU_CORES_PER_GPU} per GPU, a DGX-1's "
                   "40 cores per 8 V100)")
    p.add_argument("--worker-memory-gib", type=_positive_float, default=DEFAULT_WORKER_MEMORY_GIB, metavar="G",
                   help=f"memory of a worker holding one index shard, GiB; a shard may use {SHARD_MEMORY_FRACTION * 100:.0f}%% "
                   f"of it (default: {DEFAULT_WORKER_MEMORY_GIB:g}, a V100-32GB)")
    p.add_argument("--dim", type=_positive_int, default=VIT_H_DIM, metavar="D",
                   help=f"embedding dimension for index and disk sizes; must be a multiple of the {PQ_CODE_BYTES}-byte "
                   f"PQ code (default: {VIT_H_DIM}, ViT-H; 1024 gives the issue's 1.2B x 1024-d float16 = 2.46 TB raw)")
    p.add_argument("--rates", type=Path, metavar="FILE",
                   help="benchmark results to take measured rates from (default: bench/results.json of this checkout)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from curation.plan.planner import build_plan, format_plan
    from curation.retrieval.recipes import load_recipe
    from curation.core.errors import UserError

    from pipelines.stages.embedding import verify_enabled

    recipe = load_recipe(args.recipe)
    try:
        plan = build_plan(recipe, pool_size=args.pool_size, images_per_second=args.images_per_second, gpus=args.gpus,
                          engine=args.engine, workers=args.workers, worker_memory_gib=args.worker_memory_gib,
                          dim=args.dim, rates_path=args.rates, verify=verify_enabled(recipe.run_config()))
    except ScaleError as exc:  # a worker memory or dim the index cannot use
        raise UserError(str(exc)) from None
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0
