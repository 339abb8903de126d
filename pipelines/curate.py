"""`lvd curate` end to end: resolve the inputs (or the demo world), run the stage graph, summarise."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.core.errors import UserError
from curation.core.storage import files, is_url, read_parquet

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("lvd")


def embedding_pairs(ctx: Any) -> pa.Table | None:
    """The self-dedup pairs the embedding proposed and the run used (src, dst): the k-NN edges, or
    those of them the `verify` stage verified when it ran (the candidates alone are meant to be
    mostly look-alikes). None without an embedding graph."""
    from pipelines.stages.components import NEAR_EDGES, VERIFIED, verified_pairs
    from pipelines.stages.embedding import verify_enabled

    if verify_enabled(ctx.cfg) and ctx.run.path(VERIFIED).exists():
        return verified_pairs(ctx.run, "self").select(["src", "dst"])
    return read_parquet(ctx.run.path(NEAR_EDGES)) if ctx.run.path(NEAR_EDGES).exists() else None


def demo_inputs(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The demo world's pool, evaluation sets and truth (building the world when needed)."""
    from curation.demo.world import EVAL_SET, build_world, world_is_built

    if args.world:
        world = Path(args.world)
        if not (world / "world.json").exists():
            raise UserError(f"{world} is not a demo world (no world.json); build one with `lvd demo-world --out DIR`")
    elif is_url(out):
        raise UserError(f"the run directory {out} is a URL: pass the demo world as --world DIR (a local folder the "
                        "workers can read; build one with `lvd demo-world --out DIR`), or the pool as --pool URL ...")
    else:
        world = out / "world"
        if not world_is_built(world, args.world_size, args.seed):
            log.info("building the %s demo world in %s", args.world_size, world)
            build_world(world, args.world_size, args.seed)
    world = world.resolve()
    return {
        "pool_sources": [str(world / "pool")],
        "eval_sources": [str(world / "eval" / EVAL_SET)],
        "truth": world / "truth.parquet",
        "seeds_config": str(world / "seeds.yaml"),
        "extra": {"world": str(world)},
    }


def recipe_for(args: argparse.Namespace) -> Any:
    """The recipe of the run: `--seeds` (a recipe name or a comma list of seeds) or `--recipe`.

    A comma list keeps those datasets' rows of the paper's recipe (imagenet22k: as_is and sample);
    custom seeds get one `cluster` row each.
    """
    from curation.retrieval.recipes import Recipe, load_recipe, recipe_names

    spec = args.seeds or args.recipe
    if "," not in spec and (spec in recipe_names() or spec.endswith((".yaml", ".yml"))):
        return load_recipe(spec)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    paper_rows = load_recipe("lvd142m").rows
    rows = [r.model_dump(exclude_none=True) for n in names for r in paper_rows if r.dataset == n]
    rows += [{"dataset": n, "mode": "cluster"} for n in names if not any(r.dataset == n for r in paper_rows)]
    return Recipe.model_validate({"name": f"seeds:{spec}", "rows": rows})


def demo_retrieval_quality(run: Any, retrieved: Any, truth: Any, root: Path) -> dict[str, Any]:
    """Retrieval precision and balance on the demo world (seed concepts from world.json)."""
    import json

    import pyarrow as pa

    from curation.quality.truth import retrieval_quality

    world = json.loads((root / "world.json").read_text())
    labels: dict[str, dict[str, str]] = {}
    for name in world["seed_sets"]:
        parts = files(run.path("seeds", name, "pool"), "part-*.parquet")
        for t in (read_parquet(p, columns=["image_id", "meta"]) for p in parts):
            for image_id, meta in zip(t.column("image_id").to_pylist(), t.column("meta").to_pylist()):
                labels.setdefault(name, {})[image_id] = json.loads(meta).get("label", "")
    pool = pa.concat_tables([read_parquet(p, columns=["image_id", "source"]) for p in run.pool_files()])
    return retrieval_quality(retrieved, pool, labels, truth, root, world["seed_sets"])


def demo_world_seeds_only(args: argparse.Namespace, recipe: Any) -> None:
    """Without --pool / --crawl the run is the demo world's, whose seeds.yaml locates only its own
    seed sets: a recipe needing others (imagenet22k, ...) is refused before the world is built."""
    from curation.demo.world import SEED_SETS

    if args.pool or args.crawl:
        return
    foreign = [d for d in recipe.datasets() if d not in SEED_SETS]
    if foreign:
        asked = f"--seeds {args.seeds}" if args.seeds else f"--recipe {args.recipe}"
        raise UserError(f"{asked} needs seeds the demo world lacks ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}): pass your pool and seed locations with "
                        "--pool SRC... --seeds-config seeds.yaml (make curate: POOL=... SEEDS_CONFIG=...)")


def curate(args: argparse.Namespace, out: Path) -> int:
    """Every check that can fail on the user's input runs before anything is built or computed:
    config keys and values, inputs, seeds, the run directory; then the demo world, then the stages."""
    from curation.quality.truth import dedup_quality, edge_components, load_truth, reject_quality
    from curation.retrieval.seeds import resolve_seeds
    from pipelines.graph import run_stages
    from pipelines.options import build_context, existing_paths, lvd_version, run_config
    from pipelines.pipeline import available_methods, pipeline
    from curation.core.rundir import check_run_dir
    from pipelines.summary import format_summary

    if args.recipe == "demo" and (args.pool or args.crawl) and not args.seeds:
        raise UserError("the demo recipe uses the demo world's seeds: with --pool/--crawl give --recipe or --seeds (and --seeds-config)")
    recipe = recipe_for(args)
    cfg = run_config(args, base_config=recipe.config)
    demo_world_seeds_only(args, recipe)
    eval_sources = existing_paths(args.eval_sources)

    def located(seeds_config: str | None) -> list[Any]:
        return resolve_seeds(",".join(recipe.datasets()), seeds_config) if recipe.datasets() else []

    own_pool = bool(args.pool or args.crawl)
    if own_pool:
        inputs: dict[str, Any] = {"pool_sources": existing_paths(args.pool), "eval_sources": eval_sources,
                                  "extra": {"crawl": existing_paths(args.crawl)}}
        seeds = located(args.seeds_config)
    if not is_url(out):  # before the demo world is built into it (a URL run is checked by build_context)
        check_run_dir(out, recipe=recipe.name, version=lvd_version(), reuse=args.reuse, create=False)
    if not own_pool:
        inputs = demo_inputs(args, out)
        if eval_sources:
            inputs["eval_sources"] = eval_sources
        seeds = located(args.seeds_config or inputs["seeds_config"])
    ctx = build_context(args, str(out), cfg=cfg, pool_format=args.pool_format,
                        dedup_methods=available_methods(), recipe=recipe, seeds=seeds,
                        **{k: v for k, v in inputs.items() if k != "seeds_config"})
    try:
        report = run_stages(ctx, pipeline(), force=tuple(args.force), until=args.until)
    finally:
        ctx.engine.close()

    extra: dict[str, Any] = {}
    if ctx.truth is not None and ctx.run.path("dedup", "components.parquet").exists():
        truth, root = load_truth(ctx.truth)
        components = read_parquet(ctx.run.path("dedup", "components.parquet"))
        extra["dedup quality"] = dedup_quality(components, truth, root)
        embedding = embedding_pairs(ctx)
        if embedding is not None:  # the embedding signal alone (no hash edges): the copy descriptor's
            q = dedup_quality(edge_components(components, embedding), truth, root)
            extra["embedding dedup quality"] = {k: q[k] for k in ("precision", "recall", "recall_by_transform")}
        extra["rejects"] = reject_quality(read_parquet(ctx.run.rejects), truth, root)
        retrieved = ctx.run.path("retrieval", "retrieved.parquet")
        if retrieved.exists():
            extra["retrieval quality"] = demo_retrieval_quality(ctx.run, read_parquet(retrieved), truth, root)
        ctx.run.update_manifest(quality=extra)
        from curation.report.write import write_report

        write_report(ctx.run.root)  # again, now with the quality section
    notes = [f"report: {ctx.run.path('report.html')}"] if ctx.run.path("report.html").exists() else []
    if ctx.run.path("output", "_index.json").exists():
        notes.insert(0, f"curated set: {ctx.run.path('output')} (_index.json lists shards and per-row counts)")
    print(format_summary(f"lvd curate -> {out}", report, extra, notes))
    return 0
