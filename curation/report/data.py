"""What `RUN/report.html` shows, read from a run directory: counts and small deterministic samples.

Every reader here tolerates a missing file (it returns None, and the report says the section is
empty) and reads only the columns it needs. Galleries are samples (the largest components, the
largest clusters, the first queries in id order), so the report's cost does not grow with the
number of images shown, and the same run gives the same page.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.decisions import LARGEST_KEY
from curation.report.page import Group, Tile
from curation.report.scan import (
    Transform,
    count_rows,
    first_rows,
    smallest_values,
)
from curation.core import storage
from curation.core.storage import files

COMPONENTS = "dedup/components.parquet"
EVAL_EDGES = "dedup/eval_edges.parquet"
ASSIGNMENTS = "clusters/assignments.parquet"
RETRIEVED = "retrieval/retrieved.parquet"
RECIPE = "recipe.json"
REJECTS = "rejects.parquet"
#: rejects.stage of inputs that are not the pool's: evaluation and seed sets (`eval/pool-decode`,
#: `seeds/<name>/pool-decode`, see pipelines.ingest); every other stage (decode, nsfw, ...) is the pool's.
OTHER_INPUTS = ("eval", "seeds")
#: Reject stages of pool images after ingest (`pipelines.stages.embedding.embed_rejects`).
LATER_STAGES = ("embed", "retrieval-embed")

#: Removal reasons of components.parquet, in funnel order, with their funnel labels.
DEDUP_STEPS = (
    ("exact-duplicate", "exact duplicates (same bytes)"),
    ("hash-duplicate", "hash dedup (perceptual hash)"),
    ("near-duplicate", "self-dedup (copy-detection k-NN)"),
    ("eval-duplicate", "relative dedup (evaluation sets)"),
)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parquet_rows(paths: Sequence[Path]) -> int | None:
    """Total rows of Parquet files from their footers (None when there are none)."""
    if not paths:
        return None
    return sum(storage.parquet_rows(p) for p in paths)


def image_files(root: Path) -> list[Path]:
    """Every Parquet file of the run that holds image bytes: pool, seed pools, evaluation pool."""
    return files(root / "pool", "part-*.parquet") + files(root, "seeds/*/pool/part-*.parquet") + files(
        root / "eval" / "pool", "part-*.parquet")


def scan_counts(root: Path, rel: str, keys: Sequence[str], columns: Sequence[str] = (),
                transform: Transform | None = None) -> list[dict[str, Any]] | None:
    """Rows per distinct value of `keys` in a file of the run, largest first (`scan.count_rows`),
    or None when the file is absent or unreadable."""
    path = root / rel
    if not path.exists():
        return None
    try:
        return count_rows(path, keys, columns, transform)
    except (OSError, pa.ArrowInvalid, KeyError):
        return None


def _pool_rejects(table: pa.Table) -> pa.Table:
    """Rejects of the pool's inputs at ingest (not of the evaluation or seed sets, nor the pool
    images a later stage could not embed: those are in the pool and counted there)."""
    stage = pc.fill_null(table.column("stage"), "")
    other = reduce(pc.or_, [pc.starts_with(stage, prefix) for prefix in OTHER_INPUTS])
    return table.filter(pc.invert(pc.or_(other, pc.is_in(stage, pa.array(LATER_STAGES)))))


def short(image_id: str | None) -> str:
    return (image_id or "")[:10]


# -- funnel --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    label: str
    count: int | None
    detail: str = ""
    removal: bool = False


def funnel(root: Path, manifest: dict[str, Any], index: dict[str, Any]) -> list[Step]:
    """Inputs -> rejects -> pool -> each dedup removal -> kept -> retrieved -> final."""
    stages = manifest.get("stages", {})
    ingest = stages.get("ingest", {}).get("counts", {})
    pool = parquet_rows(files(root / "pool", "part-*.parquet"))
    rejects = scan_counts(root, REJECTS, ["reason"], ["stage"], _pool_rejects)
    steps: list[Step] = []
    rejected, detail = ingest.get("rejected"), ""
    if rejects is not None:
        rejected = sum(r["count_all"] for r in rejects)
        detail = ", ".join(f"{r['reason']}: {r['count_all']:,}" for r in rejects)
    inputs = ingest.get("inputs")
    if inputs is None and pool is not None and rejected is not None:
        inputs = pool + rejected
    steps.append(Step("inputs", inputs))
    steps.append(Step("rejected at ingest", rejected, detail, removal=True))
    steps.append(Step("decoded pool", pool if pool is not None else ingest.get("kept")))
    components = scan_counts(root, COMPONENTS, ["reason", "keep"])
    reasons: Counter = Counter()
    for r in components or []:
        reasons[r["reason"]] += r["count_all"]
    for reason, label in DEDUP_STEPS:
        steps.append(Step(label, reasons.get(reason, 0) if components is not None else None, reason, removal=True))
    kept = sum(r["count_all"] for r in components if r["keep"]) if components is not None else None
    steps.append(Step("kept after dedup", kept))
    retrieved = scan_counts(root, RETRIEVED, ["mode"])
    by_mode = ", ".join(f"{r['mode']}: {r['count_all']:,}" for r in retrieved) if retrieved is not None else ""
    steps.append(Step("retrieved", sum(r["count_all"] for r in retrieved) if retrieved is not None else None, by_mode))
    totals = index.get("totals", {})
    missing = index.get("missing")
    steps.append(Step("final (output shards)", totals.get("rows"),
                      f"{totals.get('shards', 0)} shards; rows without image bytes: {missing}" if index else ""))
    return steps


# -- recipe ----------------------------------------------------------------------------------------


def recipe_rows(root: Path, index: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per recipe row: dataset, mode, parameters, seed images, planned, retrieved (the row's own
    count, before merging), merged (rows credited to it after the merge), final (output rows)."""
    recipe = read_json(root / RECIPE)
    rows = list(recipe.get("rows", []))
    final = {(r.get("dataset"), r.get("mode")): r for r in index.get("recipe", [])}
    retrieved = scan_counts(root, RETRIEVED, ["seed_dataset", "mode"])
    merged: dict[tuple, int] = {}
    if retrieved is not None:
        merged = {(r["seed_dataset"], r["mode"]): r["count_all"] for r in retrieved}
    if not rows:
        rows = list(final.values()) or [{"dataset": d, "mode": m} for d, m in merged]
    if not rows:
        return None
    listed = {(r.get("dataset"), r.get("mode")) for r in rows}
    rows += [{"dataset": d, "mode": m} for d, m in sorted(set(merged) - listed, key=lambda k: (str(k[0]), str(k[1])))]
    out = []
    for row in rows:
        key = (row.get("dataset"), row.get("mode"))
        params = ", ".join(f"{p}={row[p]}" for p in ("n", "m", "cap", "target") if row.get(p) is not None)
        planned = row.get("planned", final.get(key, {}).get("planned"))
        out.append({"dataset": key[0], "mode": key[1], "params": params, "seed_images": row.get("seed_images"),
                    "planned": planned, "retrieved": row.get("got") if "rows" in recipe else None,
                    "merged": merged.get(key) if retrieved is not None else None,
                    "final": final[key]["got"] if key in final else None})
    return out


def collisions(root: Path) -> dict[str, Any]:
    """The retrieval merge's collision counts (recipe.json `collisions`), numbers only."""
    stats = read_json(root / RECIPE).get("collisions", {})
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))} if isinstance(stats, dict) else {}


# -- galleries ----------------------------------------------------------------------------------


def largest_components(manifest: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The largest components the `components` stage recorded (component, rows), or None."""
    counts = manifest.get("stages", {}).get("components", {}).get("counts", {})
    largest = counts.get(LARGEST_KEY) if isinstance(counts, dict) else None
    ok = isinstance(largest, list) and all(isinstance(r, dict) and {"component", "rows"} <= set(r) for r in largest)
    return largest if ok else None


def duplicate_groups(root: Path, manifest: dict[str, Any], groups: int = 6, members: int = 12) -> list[Group] | None:
    """The largest duplicate components (as the stage recorded them), kept member first, each
    member with its reason; the members are found in one scan of `components.parquet`."""
    largest = largest_components(manifest)
    if largest is None or not (root / COMPONENTS).exists():
        return None
    largest = largest[:groups]
    if not largest:
        return []
    wanted = pa.array([r["component"] for r in largest], pa.string())

    def chosen(table: pa.Table) -> pa.Table:
        table = table.filter(pc.is_in(table.column("component"), value_set=wanted))
        return table.append_column("_source", pc.fill_null(table.column("source"), ""))

    order = [("keep", "descending"), ("reason", "ascending"), ("_source", "ascending")]
    found = first_rows(root / COMPONENTS, ["image_id", "source", "component", "keep", "reason"], ["component"], order,
                       members, chosen)
    out = []
    for comp in largest:
        mine = found.get((comp["component"],))
        tiles = [Tile(r["image_id"], r["reason"], r["source"]) for r in (mine.to_pylist() if mine is not None else [])]
        more = f"{comp['rows'] - members} more not shown" if comp["rows"] > members else ""
        out.append(Group(f"component {short(comp['component'])} · {comp['rows']} images", tiles, note=more))
    return out


@dataclass(frozen=True)
class Clusters:
    sizes: list[int]
    groups: list[Group]
    k: int | None


def cluster_view(root: Path, manifest: dict[str, Any], clusters: int = 6, per_cluster: int = 8) -> Clusters | None:
    """Cluster sizes (for the histogram) and the images closest to the centroid of the largest
    clusters, in two scans of the assignments."""
    sizes = scan_counts(root, ASSIGNMENTS, ["cluster"])
    if sizes is None:
        return None
    top = pa.array([r["cluster"] for r in sizes[:clusters]], pa.int64())
    order = [("similarity", "descending"), ("image_id", "ascending")]
    found = first_rows(root / ASSIGNMENTS, ["image_id", "cluster", "similarity"], ["cluster"], order, per_cluster,
                       lambda t: t.filter(pc.is_in(t.column("cluster"), value_set=top)))
    groups = []
    for row in sizes[:clusters]:
        mine = found[(row["cluster"],)].to_pylist()
        tiles = [Tile(r["image_id"], f"sim {r['similarity']:.3f}" if r["similarity"] is not None else "") for r in mine]
        groups.append(Group(f"cluster {row['cluster']} · {row['count_all']} images", tiles))
    k = manifest.get("stages", {}).get("cluster", {}).get("counts", {}).get("clusters")  # K scaled to the pool
    if not isinstance(k, int):
        k = manifest.get("config", {}).get("clustering", {}).get("k")
    return Clusters([r["count_all"] for r in sizes], groups, k if isinstance(k, int) else None)


def _sim(value: float | None) -> str:
    return f"sim {value:.3f}" if value is not None else ""


def _mode_is(modes: Sequence[str], keep: bool = True, where: Callable[[pa.Table], pa.Array] | None = None) -> Transform:
    """Rows whose mode is (`keep`) or is not one of `modes`, then those `where` selects."""
    def transform(table: pa.Table) -> pa.Table:
        hit = pc.fill_null(pc.is_in(table.column("mode"), value_set=pa.array(list(modes), pa.string())), False)
        table = table.filter(hit if keep else pc.invert(hit))
        return table.filter(where(table)) if where is not None else table
    return transform


def retrieval_groups(root: Path, per_key: int = 3, tiles: int = 8) -> list[Group] | None:
    """Per (dataset, mode): a few queries with their neighbours (sample), clusters (cluster) or
    images, found in a few scans of the retrieved rows."""
    keys = scan_counts(root, RETRIEVED, ["seed_dataset", "mode"])
    if keys is None:
        return None
    path, ds_mode = root / RETRIEVED, ["seed_dataset", "mode"]
    columns = ["image_id", "seed_dataset", "mode", "query_id", "cluster", "similarity"]
    best = [("similarity", "descending"), ("image_id", "ascending")]
    queries = smallest_values(path, ds_mode, "query_id", per_key,
                              _mode_is(["sample"], where=lambda t: pc.not_equal(t.column("query_id"), "")))
    chosen = pa.array(sorted({q for qs in queries.values() for q in qs}), pa.string())
    query_hits = first_rows(path, columns, [*ds_mode, "query_id"], best, tiles,
                            _mode_is(["sample"], where=lambda t: pc.is_in(t.column("query_id"), value_set=chosen)))
    top: dict[tuple, list[dict[str, Any]]] = {}  # per (dataset, mode): its largest clusters
    for c in scan_counts(root, RETRIEVED, [*ds_mode, "cluster"], transform=_mode_is(["cluster"])) or []:
        mine = top.setdefault((c["seed_dataset"], c["mode"]), [])
        if len(mine) < per_key:
            mine.append(c)
    wanted = pa.array(sorted({c["cluster"] for cs in top.values() for c in cs if c["cluster"] is not None}), pa.int64())
    cluster_hits = first_rows(path, columns, [*ds_mode, "cluster"], best, tiles,
                              _mode_is(["cluster"], where=lambda t: pc.is_in(t.column("cluster"), value_set=wanted)))
    images = first_rows(path, columns, ds_mode, [("image_id", "ascending")], tiles, _mode_is(["sample", "cluster"], keep=False))
    out: list[Group] = []
    for key in sorted(keys, key=lambda r: (str(r["seed_dataset"]), str(r["mode"]))):
        ds, mode = key["seed_dataset"], key["mode"]
        name = f"{ds or '(no seed set)'} · {mode} · {key['count_all']} rows"
        if mode == "sample":
            for q in queries.get((ds, mode), []):
                hits = query_hits[(ds, mode, q)].to_pylist()
                out.append(Group(f"{name} · query {short(q)}", [Tile(r["image_id"], _sim(r["similarity"])) for r in hits],
                                 lead=Tile(q, "query", f"query {q}")))
        elif mode == "cluster":
            for c in top.get((ds, mode), []):
                found = cluster_hits.get((ds, mode, c["cluster"]))
                hits = found.to_pylist() if found is not None else []
                out.append(Group(f"{name} · cluster {c['cluster']} ({c['count_all']} retrieved)",
                                 [Tile(r["image_id"], _sim(r["similarity"])) for r in hits]))
        else:
            hits = images[(ds, mode)].to_pylist()
            out.append(Group(name, [Tile(r["image_id"], short(r["image_id"]), r["image_id"]) for r in hits]))
    return out


# -- balanced rows ---------------------------------------------------------------------------------

BALANCED_LEVELS = "balanced/levels.json"
BALANCED_LEAVES = "balanced/level-1/assignments.parquet"


@dataclass(frozen=True)
class BalancedLevel:
    """One level of one balanced row: cluster sizes before and after sampling, and the caps."""

    level: int
    clusters: int
    before: list[int]  # points under each cluster (a deterministic subsample when there are many)
    after: list[int]  # points sampled from each cluster
    cap: int | None  # the top level's cap x (sum of min(x, size) = target)
    caps_median: float | None  # below the top: the median of the caps chosen under each parent
    largest_before: int
    largest_after: int


@dataclass(frozen=True)
class Balanced:
    note: str  # the levels chosen (the preset scaled to the pool, or as configured)
    rows: list[dict[str, Any]]  # per balanced row: target, got, strategy, its levels
    groups: list[Group]  # the largest leaves, their members closest to the centroid first


#: Cluster sizes drawn per level at most (a 10M-leaf level is subsampled for the plot).
PLOT_SIZES = 100_000


def _spread(values: Any, limit: int = PLOT_SIZES) -> list[int]:
    import numpy as np

    values = np.sort(np.asarray(values))
    if len(values) > limit:
        values = values[np.linspace(0, len(values) - 1, limit).astype(np.int64)]
    return [int(v) for v in values]


def balanced_view(root: Path, leaves: int = 6, per_leaf: int = 8) -> Balanced | None:
    """The `balance` stage's levels and what each balanced row sampled from them (recipe.json and
    RUN/retrieval/balanced-<slot>.npz), with a gallery of the largest leaf clusters."""

    info = read_json(root / BALANCED_LEVELS)
    if not info:
        return None
    rows = []
    for slot, row in enumerate(read_json(root / RECIPE).get("rows", [])):
        if row.get("mode") != "balanced" or not storage.as_path(root / "retrieval" / f"balanced-{slot}.npz").exists():
            continue
        arrays = storage.load_npz(root / "retrieval" / f"balanced-{slot}.npz")
        levels = []
        for lv in row.get("balanced", {}).get("levels", []):
            n = lv["level"]
            levels.append(BalancedLevel(n, lv["clusters"], _spread(arrays[f"before_{n}"]), _spread(arrays[f"after_{n}"]),
                                        lv.get("cap"), lv.get("caps_median"), lv["largest_before"], lv["largest_after"]))
        rows.append({"target": row.get("target"), "got": row.get("got"),
                     "strategy": row.get("balanced", {}).get("strategy"), "levels": levels})
    sizes = scan_counts(root, BALANCED_LEAVES, ["cluster"]) or []
    top = sizes[:leaves]
    kept: dict[int, int] = {}
    for r in scan_counts(root, RETRIEVED, ["cluster"], ["mode"], transform=_mode_is(["balanced"])) or []:
        kept[r["cluster"]] = r["count_all"]
    wanted = pa.array([r["cluster"] for r in top], pa.int64())
    found = first_rows(root / BALANCED_LEAVES, ["image_id", "cluster", "sqdist"], ["cluster"],
                       [("sqdist", "ascending"), ("image_id", "ascending")], per_leaf,
                       lambda t: t.filter(pc.is_in(t.column("cluster"), value_set=wanted))) if top else {}
    groups = []
    for r in top:
        members = found.get((r["cluster"],))
        tiles = [Tile(m["image_id"], f"d² {m['sqdist']:.3f}") for m in (members.to_pylist() if members is not None else [])]
        groups.append(Group(f"leaf {r['cluster']} · {r['count_all']:,} images · {kept.get(r['cluster'], 0):,} sampled", tiles))
    plan = info.get("plan", {})
    return Balanced(str(plan.get("note", "")), rows, groups)


def relative_groups(root: Path, groups: int = 4, tiles: int = 8) -> list[Group] | None:
    """Evaluation images with the most pool hits, each with the pool images it removed."""
    counts = scan_counts(root, EVAL_EDGES, ["src"])
    if counts is None:
        return None
    top = pa.array([r["src"] for r in counts[:groups]], pa.string())
    found = first_rows(root / EVAL_EDGES, ["src", "dst", "sim"], ["src"], [("sim", "descending"), ("dst", "ascending")],
                       tiles, lambda t: t.filter(pc.is_in(t.column("src"), value_set=top)))
    hits = {key[0]: rows.to_pylist() for key, rows in found.items()}
    sources = sources_by_id(root, pa.array([r["dst"] for rows in hits.values() for r in rows], pa.string()))
    return [Group(f"evaluation image {short(row['src'])} · {row['count_all']} pool images",
                  [Tile(r["dst"], _sim(r["sim"]), sources.get(r["dst"], "")) for r in hits.get(row["src"], [])],
                  lead=Tile(row["src"], "evaluation image", f"evaluation image {row['src']}"))
            for row in counts[:groups]]


def sources_by_id(root: Path, ids: pa.Array) -> dict[str, str]:
    """The pool source of each of a few image ids (its first row's), in one scan of the components."""
    if not len(ids) or not (root / COMPONENTS).exists():
        return {}
    wanted = pc.unique(ids)
    found = first_rows(root / COMPONENTS, ["image_id", "source"], ["image_id"], [], 1,
                       lambda t: t.filter(pc.is_in(t.column("image_id"), value_set=wanted)))
    return {key[0]: rows.column("source")[0].as_py() for key, rows in found.items()}


def reject_rows(root: Path, examples: int = 5) -> list[dict[str, Any]] | None:
    """Per (stage, reason): count, a few source names (sorted) and the message of the first of them."""
    counts = scan_counts(root, REJECTS, ["stage", "reason"])
    if counts is None:
        return None
    found = first_rows(root / REJECTS, ["source", "reason", "message", "stage"], ["stage", "reason"],
                       [("source", "ascending")], examples)
    out = []
    for row in counts:
        mine = found.get((row["stage"], row["reason"]))
        out.append({"stage": row["stage"], "reason": row["reason"], "count": row["count_all"],
                    "examples": mine.column("source").to_pylist() if mine is not None else [],
                    "message": mine.column("message")[0].as_py() if mine is not None and mine.num_rows else ""})
    return out


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, leaf) pairs, in key order; lists as JSON text."""
    if isinstance(data, dict):
        out = []
        for key in sorted(data, key=str):
            out += flatten(data[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(data, list):
        return [(prefix, json.dumps(data, sort_keys=True, default=str))]
    return [(prefix, data)]
