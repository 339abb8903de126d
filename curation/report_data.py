"""What `RUN/report.html` shows, read from a run directory: counts and small deterministic samples.

Every reader here tolerates a missing file (it returns None, and the report says the section is
empty) and reads only the columns it needs. Galleries are samples (the largest components, the
largest clusters, the first queries in id order), so the report's cost does not grow with the
number of images shown, and the same run gives the same page.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curation.report_html import Group, Tile
from pipelines import storage
from pipelines.storage import files, read_parquet

COMPONENTS = "dedup/components.parquet"
EVAL_EDGES = "dedup/eval_edges.parquet"
ASSIGNMENTS = "clusters/assignments.parquet"
RETRIEVED = "retrieval/retrieved.parquet"
RECIPE = "recipe.json"
REJECTS = "rejects.parquet"
#: rejects.stage of inputs that are not the pool's: evaluation and seed sets (`eval/pool-decode`,
#: `seeds/<name>/pool-decode`, see pipelines.ingest); every other stage (decode, nsfw, ...) is the pool's.
OTHER_INPUTS = ("eval", "seeds")

#: Removal reasons of components.parquet, in funnel order, with their funnel labels.
DEDUP_STEPS = (
    ("exact-duplicate", "exact duplicates (same bytes)"),
    ("hash-duplicate", "hash dedup (perceptual hash)"),
    ("near-duplicate", "self-dedup (copy-detection k-NN)"),
    ("eval-duplicate", "relative dedup (evaluation sets)"),
)


def read_optional(root: Path, rel: str, columns: Sequence[str] | None = None) -> pa.Table | None:
    """A Parquet file of the run, or None when it is absent or unreadable."""
    path = root / rel
    if not path.exists():
        return None
    try:
        return read_parquet(path, columns=columns)
    except (OSError, pa.ArrowInvalid, KeyError):
        return None


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


def counts_by(table: pa.Table, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Rows per distinct key tuple, largest first, ties by key (nulls as '')."""
    grouped = table.group_by(list(keys), use_threads=False).aggregate([([], "count_all")]).to_pylist()
    return sorted(grouped, key=lambda r: (-r["count_all"], *[(r[k] is None, "" if r[k] is None else r[k]) for k in keys]))


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
    rejects = read_optional(root, REJECTS, ["reason", "stage"])
    steps: list[Step] = []
    rejected, detail = ingest.get("rejected"), ""
    if rejects is not None:
        stage = pc.fill_null(rejects.column("stage"), "")
        other = reduce(pc.or_, [pc.starts_with(stage, prefix) for prefix in OTHER_INPUTS])
        pool_rejects = rejects.filter(pc.invert(other))
        rejected = pool_rejects.num_rows
        detail = ", ".join(f"{r['reason']}: {r['count_all']:,}" for r in counts_by(pool_rejects, ["reason"]))
    inputs = ingest.get("inputs")
    if inputs is None and pool is not None and rejected is not None:
        inputs = pool + rejected
    steps.append(Step("inputs", inputs))
    steps.append(Step("rejected at ingest", rejected, detail, removal=True))
    steps.append(Step("decoded pool", pool if pool is not None else ingest.get("kept")))
    components = read_optional(root, COMPONENTS, ["reason", "keep"])
    reasons = {r["reason"]: r["count_all"] for r in counts_by(components, ["reason"])} if components is not None else {}
    for reason, label in DEDUP_STEPS:
        steps.append(Step(label, reasons.get(reason, 0) if components is not None else None, reason, removal=True))
    kept = int(pc.sum(components.column("keep")).as_py() or 0) if components is not None else None
    steps.append(Step("kept after dedup", kept))
    retrieved = read_optional(root, RETRIEVED, ["mode"])
    by_mode = ", ".join(f"{r['mode']}: {r['count_all']:,}" for r in counts_by(retrieved, ["mode"])) if retrieved is not None else ""
    steps.append(Step("retrieved", retrieved.num_rows if retrieved is not None else None, by_mode))
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
    retrieved = read_optional(root, RETRIEVED, ["seed_dataset", "mode"])
    merged: dict[tuple, int] = {}
    if retrieved is not None:
        merged = {(r["seed_dataset"], r["mode"]): r["count_all"] for r in counts_by(retrieved, ["seed_dataset", "mode"])}
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


def duplicate_groups(root: Path, groups: int = 6, members: int = 12) -> list[Group] | None:
    """The largest duplicate components, kept member first, each member with its reason."""
    table = read_optional(root, COMPONENTS, ["image_id", "source", "component", "keep", "reason"])
    if table is None:
        return None
    largest = [r for r in counts_by(table, ["component"]) if r["count_all"] > 1][:groups]
    if not largest:
        return []
    chosen = table.filter(pc.is_in(table.column("component"), value_set=pa.array([r["component"] for r in largest])))
    rows = sorted(chosen.to_pylist(), key=lambda r: (not r["keep"], r["reason"], r["source"] or ""))
    out = []
    for comp in largest:
        mine = [r for r in rows if r["component"] == comp["component"]]
        tiles = [Tile(r["image_id"], r["reason"], r["source"]) for r in mine[:members]]
        more = f"{len(mine) - members} more not shown" if len(mine) > members else ""
        out.append(Group(f"component {short(comp['component'])} · {comp['count_all']} images", tiles, note=more))
    return out


@dataclass(frozen=True)
class Clusters:
    sizes: list[int]
    groups: list[Group]
    k: int | None


def cluster_view(root: Path, manifest: dict[str, Any], clusters: int = 6, per_cluster: int = 8) -> Clusters | None:
    """Cluster sizes (for the histogram) and the images closest to the centroid of the largest clusters."""
    table = read_optional(root, ASSIGNMENTS, ["image_id", "cluster", "similarity"])
    if table is None:
        return None
    sizes = counts_by(table, ["cluster"])
    groups = []
    for row in sizes[:clusters]:
        mine = table.filter(pc.equal(table.column("cluster"), row["cluster"]))
        mine = mine.sort_by([("similarity", "descending"), ("image_id", "ascending")]).slice(0, per_cluster).to_pylist()
        tiles = [Tile(r["image_id"], f"sim {r['similarity']:.3f}" if r["similarity"] is not None else "") for r in mine]
        groups.append(Group(f"cluster {row['cluster']} · {row['count_all']} images", tiles))
    k = manifest.get("config", {}).get("clustering", {}).get("k")
    return Clusters([r["count_all"] for r in sizes], groups, k if isinstance(k, int) else None)


def _sim(value: float | None) -> str:
    return f"sim {value:.3f}" if value is not None else ""


def retrieval_groups(root: Path, per_key: int = 3, tiles: int = 8) -> list[Group] | None:
    """Per (dataset, mode): a few queries with their neighbours (sample), clusters (cluster) or images."""
    table = read_optional(root, RETRIEVED, ["image_id", "seed_dataset", "mode", "query_id", "cluster", "similarity"])
    if table is None:
        return None
    out: list[Group] = []
    for key in sorted(counts_by(table, ["seed_dataset", "mode"]), key=lambda r: (str(r["seed_dataset"]), str(r["mode"]))):
        ds, mode = key["seed_dataset"], key["mode"]
        mask = pc.and_(pc.equal(table.column("mode"), mode),
                       pc.is_null(table.column("seed_dataset")) if ds is None else pc.equal(table.column("seed_dataset"), ds))
        rows = table.filter(mask).sort_by([("similarity", "descending"), ("image_id", "ascending")])
        name = f"{ds or '(no seed set)'} · {mode} · {key['count_all']} rows"
        if mode == "sample":
            for q in sorted(r["query_id"] for r in counts_by(rows, ["query_id"]) if r["query_id"])[:per_key]:
                hits = rows.filter(pc.equal(rows.column("query_id"), q)).slice(0, tiles).to_pylist()
                out.append(Group(f"{name} · query {short(q)}", [Tile(r["image_id"], _sim(r["similarity"])) for r in hits],
                                 lead=Tile(q, "query", f"query {q}")))
        elif mode == "cluster":
            for c in counts_by(rows, ["cluster"])[:per_key]:
                hits = rows.filter(pc.equal(rows.column("cluster"), c["cluster"])).slice(0, tiles).to_pylist()
                out.append(Group(f"{name} · cluster {c['cluster']} ({c['count_all']} retrieved)",
                                 [Tile(r["image_id"], _sim(r["similarity"])) for r in hits]))
        else:
            hits = rows.sort_by([("image_id", "ascending")]).slice(0, tiles).to_pylist()
            out.append(Group(name, [Tile(r["image_id"], short(r["image_id"]), r["image_id"]) for r in hits]))
    return out


def relative_groups(root: Path, groups: int = 4, tiles: int = 8) -> list[Group] | None:
    """Evaluation images with the most pool hits, each with the pool images it removed."""
    table = read_optional(root, EVAL_EDGES, ["src", "dst", "sim"])
    if table is None:
        return None
    sources = _sources_by_id(root, table.column("dst"))
    out = []
    for row in counts_by(table, ["src"])[:groups]:
        hits = table.filter(pc.equal(table.column("src"), row["src"]))
        hits = hits.sort_by([("sim", "descending"), ("dst", "ascending")]).slice(0, tiles).to_pylist()
        out.append(Group(f"evaluation image {short(row['src'])} · {row['count_all']} pool images",
                         [Tile(r["dst"], _sim(r["sim"]), sources.get(r["dst"], "")) for r in hits],
                         lead=Tile(row["src"], "evaluation image", f"evaluation image {row['src']}")))
    return out


def _sources_by_id(root: Path, ids: pa.ChunkedArray) -> dict[str, str]:
    components = read_optional(root, COMPONENTS, ["image_id", "source"])
    if components is None:
        return {}
    hit = components.filter(pc.is_in(components.column("image_id"), value_set=pc.unique(ids)))
    return dict(zip(hit.column("image_id").to_pylist(), hit.column("source").to_pylist()))


def reject_rows(root: Path, examples: int = 5) -> list[dict[str, Any]] | None:
    """Per (stage, reason): count, a few source names (sorted) and one message."""
    table = read_optional(root, REJECTS, ["source", "reason", "message", "stage"])
    if table is None:
        return None
    out = []
    for row in counts_by(table, ["stage", "reason"]):
        mask = pc.and_(pc.equal(table.column("stage"), row["stage"]), pc.equal(table.column("reason"), row["reason"]))
        mine = table.filter(mask).sort_by([("source", "ascending")])
        out.append({"stage": row["stage"], "reason": row["reason"], "count": row["count_all"],
                    "examples": mine.column("source").slice(0, examples).to_pylist(),
                    "message": mine.column("message")[0].as_py() if mine.num_rows else ""})
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
