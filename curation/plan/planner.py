"""`lvd plan`: what a recipe will produce and what it will cost, before anything runs.

Counts follow the paper's arithmetic (Table 15): `as_is` keeps the seed's images, `sample` gives
images x N, `cluster` gives min(retrieved, cap) where `retrieved` is the recipe's number (Table 15's
column for the paper rows, scaled linearly when the pool differs from the one the recipe assumed)
or, without one, an upper bound: every qualifying cluster holds more than `min_queries` seed
images, so at most images // (min_queries + 1) clusters (and at most K) give min(M, pool / K) each.

The cost model lives in `curation.plan.cost` (the recipe-level estimate: embedding GPU-hours,
index memory, disk) and `curation.plan.scale_model`: the engine-aware scale estimate of the whole funnel (index shards, rounds
of components, hours per stage from the rates of `curation.plan.rates`, measured in bench/results.json
or assumed). For the scale estimate the deduplicated pool is traced back through the paper's funnel
to the unique images entering deduplication: pool x POOL_UNIQUE / POOL_AFTER_RELATIVE_DEDUP
(744M -> 1.2B). This module also formats the plan as text: the table, the cost, the "Scale" section.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from curation import paper
from curation.config import RunConfig
from curation.plan.cost import cost_estimate
from curation.plan.rates import RESULTS_PATH, load_rates
from curation.retrieval.recipes import Recipe, RowSpec
from curation.plan.scale_model import (
    DEFAULT_IMAGES_PER_SECOND,
    DEFAULT_WORKER_MEMORY_GIB,
    EDGE_BYTES,
    VIT_H_DIM,
    human_bytes,
    scale_estimate,
    scale_json,
)
from curation.retrieval.seed_registry import REGISTRY


@dataclass(frozen=True)
class PlanRow:
    """One recipe row with its expected counts; None where the inputs are not known in advance."""

    task: str
    dataset: Optional[str]
    title: str
    split: str
    mode: str
    images: Optional[int]
    n: Optional[int]
    m: Optional[int]
    cap: Optional[int]
    retrieved: Optional[int]
    final: Optional[int]
    basis: str  # how `retrieved` was obtained: images | formula | table | scaled | bound | target | unknown


def row_counts(spec: RowSpec, pool_size: Optional[int], expected_pool: Optional[int], k: int, min_queries: int) -> tuple[Optional[int], Optional[int], str]:
    """(retrieved, final, basis) of one resolved row, by the paper's arithmetic."""
    if spec.mode == "as_is":
        return spec.images, spec.images, "images" if spec.images is not None else "unknown"
    if spec.mode == "sample":
        if spec.images is None:
            return None, None, "unknown"
        got = spec.images * spec.n
        return got, got, "formula"
    if spec.mode == "balanced":
        final, basis = balanced_target(spec.target, pool_size, expected_pool)
        return final, final, basis
    # cluster
    if spec.retrieved is not None:
        if pool_size is None or expected_pool is None or pool_size == expected_pool:
            retrieved, basis = spec.retrieved, "table"
        else:
            retrieved, basis = round(spec.retrieved * pool_size / expected_pool), "scaled"
    elif spec.images is not None and pool_size is not None:
        clusters = min(spec.images // (min_queries + 1), k)
        retrieved, basis = clusters * min(spec.m, -(-pool_size // k)), "bound"
    else:
        return None, None, "unknown"
    return retrieved, min(retrieved, spec.cap), basis


def plan_k(config: RunConfig, pool_size: Optional[int]) -> tuple[int, str]:
    """K the `cluster` stage will use on a deduplicated pool of `pool_size` (`clustering.scaled_k`)."""
    from curation.retrieval.clustering import scaled_k

    c = config.clustering
    if pool_size is None:
        k = c.k if c.k is not None else paper.KMEANS_CLUSTERS
        return k, f"K={k:,}" + (" as configured" if c.k is not None else " (the paper's; scaled to the pool when it is known)")
    return scaled_k(c.k, pool_size, c.k_min)


#: Which part of a DINOv3-style mix each mode makes (`lvd plan` prints the fractions).
PARTS = {"balanced": "clustering", "sample": "retrieval", "cluster": "retrieval", "as_is": "raw sets as is"}


def parts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Final images and share of the total per part (clustering, retrieval, raw sets as is)."""
    totals: dict[str, int] = {}
    for r in rows:
        totals[PARTS[r["mode"]]] = totals.get(PARTS[r["mode"]], 0) + (r["final"] or 0)
    total = sum(totals.values())
    return {name: {"images": n, "fraction": round(n / total, 4) if total else 0.0} for name, n in totals.items()}


def balanced_target(target: int, pool_size: Optional[int], expected_pool: Optional[int]) -> tuple[int, str]:
    """Images a balanced row keeps on a pool of `pool_size`: its target, meant for the recipe's
    `expected_pool` when it has one (so another pool keeps the same fraction: lvd1689m's 1,689M of
    17B is ~10 %), at most the pool. (images, basis: target | scaled)."""
    if pool_size is None:
        return target, "target"
    if expected_pool and pool_size != expected_pool:
        return min(round(target * pool_size / expected_pool), pool_size), "scaled"
    return min(target, pool_size), "target"


def plan_rows(recipe: Recipe, config: RunConfig, pool_size: Optional[int]) -> list[PlanRow]:
    """Every row of the recipe with images, retrieved and final counts."""
    rows = []
    k = plan_k(config, pool_size)[0]
    for spec in recipe.resolved_rows(config):
        info = REGISTRY.get(spec.dataset) if spec.dataset else None
        retrieved, final, basis = row_counts(spec, pool_size, recipe.expected_pool, k, config.retrieval.min_queries)
        rows.append(
            PlanRow(
                task=info.task if info else ("balanced" if spec.mode == "balanced" else "custom"),
                dataset=spec.dataset,
                title=info.title if info else (spec.dataset or "pool"),
                split=info.split if info else "-",
                mode=spec.mode,
                images=spec.images,
                n=spec.n,
                m=spec.m,
                cap=spec.cap,
                retrieved=retrieved,
                final=final,
                basis=basis,
            )
        )
    return rows


def unique_pool(pool: int) -> int:
    """Unique images entering deduplication for a deduplicated `pool`, by the paper's funnel."""
    return pool * paper.POOL_UNIQUE // paper.POOL_AFTER_RELATIVE_DEDUP


def build_plan(
    recipe: Recipe,
    pool_size: Optional[int] = None,
    images_per_second: Optional[float] = None,
    gpus: Optional[int] = None,
    config: Optional[RunConfig] = None,
    engine: str = "local",
    workers: Optional[int] = None,
    worker_memory_gib: float = DEFAULT_WORKER_MEMORY_GIB,
    dim: int = VIT_H_DIM,
    rates_path: Optional[Path] = None,
    verify: bool = False,
) -> dict[str, Any]:
    """The whole plan as JSON-ready data: rows, totals, and, when the pool is known, the cost
    model and the engine-aware scale estimate (`curation.plan.scale_model`; rates from `rates_path` by
    `curation.plan.rates.load_rates`, default bench/results.json); `verify`: the run verifies its dedup
    candidate pairs in the pixels. Raises scale_model.ScaleError for a worker memory or dim it cannot size."""
    config = config or recipe.run_config()
    pool = pool_size if pool_size is not None else recipe.expected_pool
    rows = plan_rows(recipe, config, pool)
    finals = [r.final for r in rows]
    total = sum(f for f in finals if f is not None)
    # Seed images embedded as queries: each dataset once, whatever its number of rows.
    seed_images = sum({r.dataset: r.images or 0 for r in rows if r.dataset}.values())
    modes = {r.mode for r in rows}
    k, k_note = plan_k(config, pool)
    plan: dict[str, Any] = {
        "recipe": recipe.name,
        "description": recipe.description,
        "pool_size": pool,
        "clusters_k": k,
        "clusters_note": k_note if "cluster" in modes else "no cluster rows: no k-means",
        "rows": [asdict(r) for r in rows],
        "parts": parts([asdict(r) for r in rows]),
        "total": total,
        "total_complete": all(f is not None for f in finals),
        "expected_total": recipe.expected_total if pool == recipe.expected_pool else None,
        "cost": None,
        "scale": None,
    }
    if pool is not None:
        gpus = gpus or paper.PAPER_GPUS
        cost = cost_estimate(pool, total, seed_images, images_per_second=images_per_second or DEFAULT_IMAGES_PER_SECOND,
                             gpus=gpus, dim=dim)
        queries = {mode: sum(r.images or 0 for r in rows if r.mode == mode) for mode in ("sample", "cluster")}
        scale = scale_estimate(unique_pool(pool), cost["images_to_embed"], total, engine=engine, gpus=gpus, workers=workers,
                               worker_memory_gib=worker_memory_gib, dim=dim, k=config.dedup.k,
                               images_per_second=images_per_second, rates=load_rates(rates_path), knn=config.knn,
                               kept=pool, sample_queries=queries["sample"], cluster_queries=queries["cluster"],
                               clustering=config.clustering, search_gpu=config.clustering.use_gpu != "never",
                               cluster_rows="cluster" in modes, balanced_rows="balanced" in modes, verify=verify)
        plan["cost"], plan["scale"] = cost, scale_json(scale)
    return plan


def _num(value: Optional[float]) -> str:
    return "?" if value is None else f"{value:,}"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a text table (Table 15's columns) followed by the cost estimate."""
    header = ("task", "dataset / split", "images", "retrieval", "N / M, cap", "retrieved", "final")
    lines = []
    for r in plan["rows"]:
        param = f"N={r['n']}" if r["mode"] == "sample" else f"M={r['m']:,}, cap={r['cap']:,}" if r["mode"] == "cluster" else "-"
        retrieved = "-" if r["mode"] == "as_is" else _num(r["retrieved"]) + ("*" if r["basis"] in ("scaled", "bound") else "")
        lines.append((r["task"], f"{r['title']} / {r['split']}", _num(r["images"]), r["mode"], param, retrieved, _num(r["final"])))
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).rjust(w) if i in (2, 5, 6) else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    out = [f"recipe {plan['recipe']}: {plan['description']}", f"pool: {_num(plan['pool_size'])} images; {plan['clusters_note']}",
           "", fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(row) for row in lines]
    total = f"{plan['total']:,}" + ("" if plan["total_complete"] else " (rows marked ? not counted)")
    out += [fmt(["-" * w for w in widths]), f"total final: {total}"]
    if plan["expected_total"] is not None:
        ok = "matches" if plan["total"] == plan["expected_total"] else "DIFFERS FROM"
        out.append(f"{ok} the recipe's expected total {plan['expected_total']:,}")
    if any(r["basis"] in ("scaled", "bound") for r in plan["rows"]):
        out.append("* estimate: scaled from the recipe's pool, or an upper bound (> min_queries seeds per cluster)")
    if len(plan["parts"]) > 1:
        out.append("parts: " + ", ".join(f"{name} {p['images']:,} ({p['fraction']:.1%})" for name, p in plan["parts"].items()))
    cost = plan["cost"]
    if cost is None:
        out.append("cost: give --pool-size to estimate it")
        return "\n".join(out)
    out += [
        "",
        f"embedding: {cost['images_to_embed']:,} images at {cost['images_per_second_per_gpu']:.1f} img/s/GPU"
        f" ({cost['assumptions']['rate']}) = {cost['embedding_gpu_hours']:,.1f} GPU-hours"
        f" = {cost['embedding_wall_hours']:,.1f} h on {cost['gpus']} GPUs",
        f"index ({cost['assumptions']['dim']}-d): IVF-PQ {human_bytes(cost['index']['ivfpq'])}"
        f" ({cost['index']['ivfpq_bytes_per_vector']} B/vector); flat float16 {human_bytes(cost['index']['flat_float16'])}",
        f"disk (avg {cost['disk']['avg_image_bytes']:,} B/image): pool {human_bytes(cost['disk']['pool_images'])}"
        f" + embeddings {human_bytes(cost['disk']['pool_embeddings'])}; output {human_bytes(cost['disk']['output_images'])}",
        f"embedding alone fits {cost['gpus']} GPUs x {cost['budget_hours']:g} h ({cost['budget_gpu_hours']:,.0f} GPU-hours): "
        + ("yes" if cost["fits"] else "NO"),
    ]
    out += format_scale(plan["scale"])
    return "\n".join(out)


def format_scale(s: dict[str, Any]) -> list[str]:
    """The "Scale" section of `lvd plan` (from `scale_json`)."""
    ix, sh, cc, dr = s["index"], s["shards"], s["components"], s["driver"]
    rates = s["rates_file"] or "none found: every rate assumed"
    rates = "bench/results.json" if rates == str(RESULTS_PATH) else rates
    out = [
        "",
        f"Scale: {s['pool']:,} -> {s['output']:,} images on engine {s['engine']}, {s['gpus']} GPUs,"
        f" {s['workers']:,} CPU workers, {s['worker_memory_gib']:g} GiB per worker (rates: {rates})",
        f"  raw embeddings: {s['pool']:,} x {s['dim']}-d x {s['dtype_bytes']} B = {human_bytes(s['raw_embedding_bytes'])}",
        f"  IVF-PQ index: nlist {ix['nlist']:,} (curation.dedup.knn_index.choose_index), {ix['pq_code_bytes']} B codes"
        f" {human_bytes(ix['codes'])} + ids {human_bytes(ix['ids'])} + centroids {human_bytes(ix['centroids'])}"
        f" + codebook {human_bytes(ix['codebook'])} = {human_bytes(ix['total'])}",
        f"  index shards: {sh['count']:,} of {sh['vectors_per_shard']:,} vectors at {human_bytes(sh['per_worker_bytes'])} per worker"
        f" (<= {sh['memory_fraction']:.0%} of {s['worker_memory_gib']:g} GiB, incl. {human_bytes(sh['search_buffer_bytes'])}"
        f" search buffers); engine {s['engine']} makes {sh['engine_shards']:,}:"
        f" {human_bytes(sh['engine_per_worker_bytes'])} per worker, " + ("fits" if sh["engine_fits"] else "DOES NOT FIT"),
        f"  k-NN graph: <= {s['edges_upper_bound']:,} edges (pool x k={s['k']}), <= {human_bytes(s['edges_parquet_bytes'])}"
        f" Parquet at {EDGE_BYTES} B/edge before compression",
        f"  components on {s['engine']}: {cc['engine_rounds']} round(s) ({cc['engine_basis']}); large/small-star: typical"
        f" {cc['rounds_typical']}, bound {cc['rounds_bound']} = ceil(log2 n)",
        f"  driver memory: ids {human_bytes(dr['ids_bytes'])}; peaks: kept-pool planning {human_bytes(dr['plan_bytes'])}"
        f" ({dr['plan_basis']}), components {human_bytes(dr['components_bytes'])} ({dr['components_basis']});"
        f" the head needs > {human_bytes(dr['largest_bytes'])} ({dr['largest']})",
        f"  retrieval: {s['kept']:,} kept images; {s['clusters_note']}; {s['sample_queries']:,} sample-mode"
        f" queries (exact top-N over the kept pool), {s['cluster_queries']:,} cluster-mode queries",
    ]
    out += format_hierarchy(s.get("hierarchy"))
    rows = [("stage", "work", "rate", "source", "unit-hours", "wall h")]
    for st in s["stages"]:
        units = "1 process" if st["units"] == 1 else f"{st['units']:,} {st['unit']}s"
        rows.append((st["name"], f"{st['work']:,.0f} {st['work_unit']}", st["rate"], st["source"],
                     f"{st['unit_hours']:,.1f} {st['unit']}-h / {units}", f"{st['wall_hours']:,.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out += ["  " + "  ".join(c.rjust(w) if i in (1, 4, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]
    out.append(f"  total {s['total_hours']:,.1f} h of {s['budget_hours']:g} h on {s['gpus']} GPUs: "
               + ("fits" if s["fits"] else "DOES NOT FIT") + f" (stages in sequence, no overlap; longest: {s['bottleneck']})")
    out.append("  measured = per-core rates from bench/results.json x workers; assumed = stated defaults; not modelled: "
               + ", ".join(s["not_modelled"]))
    return out


def format_hierarchy(h: Optional[dict[str, Any]]) -> list[str]:
    """The balanced rows' hierarchical k-means in the "Scale" section: levels, memory, passes."""
    if not h:
        return []
    out = [f"  hierarchical k-means (balanced rows): {h['note']}; the driver holds a {h['train_sample']:,}-image"
           f" training sample ({human_bytes(h['sample_bytes'])} float32) and {human_bytes(h['centroid_bytes'])} of centroids"
           + (f"; the splits' shuffle writes {human_bytes(h['spill_bytes'])} of vectors to RUN/_work" if h.get("spill_bytes") else "")]
    for lv in h["levels"]:
        split = (f" x {lv['splits']} splits = {lv['leaves']:,} leaves (splits: {lv['split_macs']:.3g} multiply-adds in"
                 " engine tasks)") if lv["splits"] > 1 else ""
        passes = f", {lv['pool_passes']} pass(es) over the kept pool" if lv["pool_passes"] else ""
        out.append(f"    level {lv['level']}: {lv['items']:,} items -> {lv['clusters']:,} clusters{split};"
                   f" centroids {human_bytes(lv['centroid_bytes'])}; k-means {lv['train_macs']:.3g} multiply-adds{passes}")
    return out
