"""The curation stage graph, in run order (ARCHITECTURE.md describes each stage).

Each stage names the stages whose outputs it reads (`reads`); its key function (next to the stage,
in `pipelines/stages/`) names what it reads of the config and inputs, field by field. Together they
decide what a change recomputes (`pipelines.graph`). The list order is a topological order of
`reads` (checked here and on every run).
"""
from __future__ import annotations

from pipelines.context import RunContext, has_recipe, recipe_modes
from pipelines.graph import Stage, check_order
from pipelines.stages.balance import balance_key, run_balance
from pipelines.stages.components import VERIFIED, components_key, run_components
from pipelines.stages.embedding import (
    embed_key,
    eval_edges_key,
    eval_key,
    knn_key,
    run_embed,
    run_eval_edges,
    run_eval_embed,
    run_knn_edges,
    verify_enabled,
)
from pipelines.stages.hashing import hash_edges_key, hash_key, run_hash, run_hash_edges
from pipelines.stages.ingest import ingest_key, run_ingest
from pipelines.stages.output import output_key, run_output, run_report
from pipelines.stages.verify import run_verify, verify_key
from pipelines.stages.retrieval import (
    cluster_key,
    recipe_key,
    retrieval_model,
    run_cluster,
    run_retrieve,
    run_seeds,
    seeds_key,
)


def _uses_embedding(ctx: RunContext) -> bool:
    return "embedding" in ctx.dedup_methods


def _relative(ctx: RunContext) -> bool:
    return _uses_embedding(ctx) and bool(ctx.eval_sources)


def _verifies(ctx: RunContext) -> bool:
    return _uses_embedding(ctx) and verify_enabled(ctx.cfg)


def _has_cluster_rows(ctx: RunContext) -> bool:
    return has_recipe(ctx) and "cluster" in recipe_modes(ctx)


def _has_balanced_rows(ctx: RunContext) -> bool:
    return has_recipe(ctx) and "balanced" in recipe_modes(ctx)


def _pool_vectors(ctx: RunContext) -> str:
    """The stage that embeds the pool in the retrieval space: `embed` when the retrieval model is
    the dedup model, else `seeds` (which embeds the pool again into `retrieval_embeddings/`)."""
    return "embed" if retrieval_model(ctx) is None else "seeds"


def _seeds_reads(ctx: RunContext) -> tuple[str, ...]:
    return ("ingest",) if retrieval_model(ctx) is not None else ()


def _cluster_reads(ctx: RunContext) -> tuple[str, ...]:
    return ("components", _pool_vectors(ctx))


def _retrieve_reads(ctx: RunContext) -> tuple[str, ...]:
    return tuple(dict.fromkeys(("components", "cluster", "balance", "seeds", _pool_vectors(ctx))))


def pipeline() -> list[Stage]:
    """Every stage of `lvd curate`, in order."""
    stages = [
        Stage("ingest", run_ingest, ingest_key, outputs=("pool", "fetch", "_work/ingest-pool", "_work/rejects/pool"),
              description="decode, filter, resize, re-encode"),
        Stage("hash", run_hash, hash_key, reads=("ingest",), outputs=("hashes",), description="perceptual hashes"),
        Stage("hash_edges", run_hash_edges, hash_edges_key, reads=("hash",), outputs=("dedup/hash_edges.parquet",),
              description="Hamming-radius duplicate pairs"),
        Stage("embed", run_embed, embed_key, reads=("ingest",), enabled=_uses_embedding,
              outputs=("embeddings", "_work/rejects/embeddings"), description="dedup embeddings of the pool"),
        Stage("knn_edges", run_knn_edges, knn_key, reads=("embed",), enabled=_uses_embedding,
              outputs=("dedup/knn_edges.parquet", "dedup/knn_near_misses.parquet", "dedup/whitening.npz"),
              description="k-NN graph above the self-dedup threshold"),
        Stage("eval_embed", run_eval_embed, eval_key, enabled=_relative, outputs=("eval", "_work/ingest-eval/pool", "_work/rejects/eval"),
              description="ingest and embed the evaluation sets"),
        # knn_edges: the whitening it fits on the pool (dedup/whitening.npz) applies to both sides.
        Stage("eval_edges", run_eval_edges, eval_edges_key, reads=("embed", "knn_edges", "eval_embed"),
              enabled=_relative, outputs=("dedup/eval_edges.parquet", "dedup/eval_near_misses.parquet"),
              description="pool images close to an evaluation image"),
        Stage("verify", run_verify, verify_key, reads=("ingest", "hash_edges", "knn_edges", "eval_embed", "eval_edges"),
              enabled=_verifies, outputs=(VERIFIED, "_work/verify"), description="pixel verification of candidate pairs"),
        Stage("components", run_components, components_key,
              reads=("ingest", "hash_edges", "knn_edges", "eval_edges", "verify"),
              outputs=("dedup/components.parquet",), description="duplicate components, one kept each"),
        Stage("seeds", run_seeds, seeds_key, reads=_seeds_reads, enabled=has_recipe,
              outputs=("seeds", "retrieval_embeddings", "_work/ingest-seeds", "_work/rejects/seeds",
                       "_work/rejects/retrieval_embeddings"),
              description="ingest and embed the curated seed sets"),
        Stage("cluster", run_cluster, cluster_key, reads=_cluster_reads, enabled=_has_cluster_rows, outputs=("clusters",),
              description="k-means of the deduplicated pool"),
        Stage("balance", run_balance, balance_key, reads=_cluster_reads, enabled=_has_balanced_rows, outputs=("balanced", "_work/balance"),
              description="hierarchical k-means of the deduplicated pool"),
        Stage("retrieve", run_retrieve, recipe_key, reads=_retrieve_reads, enabled=has_recipe,
              outputs=("retrieval", "recipe.json"), description="as_is / sample / cluster / balanced rows of the recipe"),
        Stage("output", run_output, output_key, reads=("ingest", "seeds", "retrieve"), enabled=has_recipe,
              outputs=("output",), description="curated Parquet shards + _index.json"),
    ]
    # The report shows every stage's outputs and counts.
    stages.append(Stage("report", run_report, lambda ctx: None, reads=tuple(s.name for s in stages),
                        outputs=("report.html",), description="RUN/report.html"))
    check_order(stages)
    return stages


def stage_names() -> list[str]:
    return [s.name for s in pipeline()]


def available_methods() -> tuple[str, ...]:
    """Dedup detectors this build runs by default."""
    return ("hash", "embedding")
