"""Stage `components`: merge every detector's edges into `RUN/dedup/components.parquet`.

The driver holds per-image arrays only (ids, pixels, the graph's decisions: ~70 B per unique
image), never the pool's rows: the rows are labelled by `engine.map` tasks, one pool file each,
against those arrays saved in `RUN/_work/components` (a side input every worker maps), and the
labelled files are joined into the one output file a file at a time. Two passes over the files:
the first returns the sources of the few rows that are one of several copies of a kept image
(which copy is kept depends on every file), the second writes the labelled rows.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import schemas
from curation.dedup.footprints import conflicts, split_mask
from curation.dedup.graph import pairs_in
from curation.dedup.linkage import split_labels
from curation.dedup.decisions import (
    LARGEST_KEY,
    Edges,
    Decisions,
    copy_candidates,
    decide,
    graph_components,
    label_rows,
    largest_components,
    pick_copies,
    row_pixels,
    summarize,
)
from curation.core.ids import first_occurrences, id_array, positions
from pipelines.context import RunContext
from pipelines.graph import config_fields
from curation.core.rundir import RunDir, write_parts, write_table
from pipelines.stages.embedding import verify_enabled
from pipelines.stages.hashing import EDGES_FILE as HASH_EDGES
from curation.core.storage import (
    as_path,
    load_array,
    makedirs,
    read_parquet,
    remove,
    save_array,
)

NEAR_EDGES = "dedup/knn_edges.parquet"
EVAL_EDGES = "dedup/eval_edges.parquet"
#: The pairs the `verify` stage checked (`pipelines.stages.verify`): used instead of the k-NN edges.
VERIFIED = "dedup/verified.parquet"
COMPONENTS = "dedup/components.parquet"
#: Largest components recorded in the stage's counts (`curation.dedup.decisions.LARGEST_KEY`).
LARGEST_RECORDED = 16
#: Settings of `dedup.verify` that this stage reads (and the `verify` stage does not).
VERIFY_FIELDS_OF_COMPONENTS = ("min_overlap", "min_linkage")


def pool_rows(run: RunDir) -> pa.Table:
    """The pool's rows as one table (tests and small pools; the stage reads file by file)."""
    cols = ["image_id", "source", "orig_width", "orig_height"]
    return pa.concat_tables([read_parquet(p, columns=cols) for p in run.pool_files()])


def pool_images(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sorted unique image_ids, pixels of each one's first row, rows per id, each file's first
    global row) from the pool files' id and size columns."""
    ids, pixels = [], []
    for p in paths:
        t = read_parquet(p, columns=["image_id", "orig_width", "orig_height"])
        ids.append(id_array(t.column("image_id")))
        pixels.append(row_pixels(t))
    offsets = np.cumsum([0] + [len(i) for i in ids[:-1]]).astype(np.int64)
    all_ids = np.concatenate(ids) if ids else np.empty(0, "S1")
    del ids
    uids, first, counts = first_occurrences(all_ids, counts=True)
    del all_ids
    return uids, np.concatenate(pixels)[first] if pixels else np.empty(0, np.int64), counts, offsets


def _indices(uids: np.ndarray, ids: pa.ChunkedArray, what: str = "edge") -> np.ndarray:
    return positions(id_array(ids), uids, what)


def read_edges(run: RunDir, rel: str, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    path = run.path(rel)
    if not path.exists():
        return None
    t = read_parquet(path, columns=["src", "dst"])
    return _indices(uids, t.column("src")), _indices(uids, t.column("dst"))


def _save(work: str, uids: np.ndarray, dec: Decisions) -> None:
    """The driver's per-image arrays, for the tasks (`_load`)."""
    save_array(as_path(work) / "uids.npy", uids)
    for field in fields(Decisions):
        save_array(as_path(work) / f"{field.name}.npy", getattr(dec, field.name))


def _load(work: str) -> tuple[np.ndarray, Decisions]:
    """The driver's arrays, memory-mapped on a worker."""
    arrays = {field.name: load_array(as_path(work) / f"{field.name}.npy") for field in fields(Decisions)}
    return load_array(as_path(work) / "uids.npy"), Decisions(**arrays)


def _file_rows(path: str, work: str) -> tuple[pa.Table, np.ndarray, Decisions, np.ndarray]:
    """A pool file's ids and sources, the driver's arrays, and each row's unique index."""
    uids, dec = _load(work)
    t = read_parquet(path, columns=["image_id", "source"])
    return t, uids, dec, _indices(uids, t.column("image_id"), "a pool row")


def file_candidates(path: str, offset: int, work: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 (a task per pool file): (global rows, unique index, source) of the rows that are one
    of several copies of a representative image."""
    t, _, dec, inverse = _file_rows(path, work)
    cand = np.flatnonzero(copy_candidates(inverse, dec))
    return cand + offset, inverse[cand], id_array(t.column("source").take(pa.array(cand, pa.int64())))


def label_file(path: str, offset: int, work: str, out_path: str) -> dict[str, int]:
    """Pass 2 (a task per pool file): the file's labelled rows, written to `out_path`; their
    counts by reason."""
    t, uids, dec, inverse = _file_rows(path, work)
    rows = np.arange(offset, offset + t.num_rows, dtype=np.int64)
    table = label_rows(t.column("image_id"), t.column("source"), inverse, rows, uids, dec,
                       load_array(as_path(work) / "kept_copies.npy"))
    write_table(table, out_path)
    return summarize(table)


def checked_pairs(ctx: RunContext) -> pa.Table:
    """The pairs the `verify` stage checked: graph (`hash`, `self` or `eval`), src, dst, score,
    footprints and whether each verified (read once per stage run)."""
    return read_parquet(ctx.run.path(VERIFIED), columns=["graph", "src", "dst", "score", "src_box", "dst_box", "verified"])


def of_graph(checked: pa.Table, graph: str, verified: bool = True) -> pa.Table:
    """The rows of checked pairs (`checked_pairs`, or fewer columns) of one graph (`hash`, `self` or
    `eval`) that verified, or (`verified=False`) that failed."""
    outcome = checked.column("verified")
    return checked.filter(pc.and_(pc.equal(checked.column("graph"), graph), outcome if verified else pc.invert(outcome)))


def verified_pairs(run: RunDir, graph: str) -> pa.Table:
    """The pairs of one graph the `verify` stage verified: src, dst, score."""
    t = read_parquet(run.path(VERIFIED), columns=["graph", "src", "dst", "score", "verified"])
    return of_graph(t, graph).select(["src", "dst", "score"])


def _without_failed_hashes(uids: np.ndarray, hash_edges: Edges, checked: pa.Table) -> Edges:
    """The hash edges less the pairs `verify` checked as hash pairs (the k-NN graph does not hold
    them) and found no copy in the pixels."""
    failed = of_graph(checked, "hash", verified=False)
    if failed.num_rows == 0:
        return hash_edges
    keep = ~pairs_in(hash_edges, (_indices(uids, failed.column("src")), _indices(uids, failed.column("dst"))))
    return hash_edges[0][keep], hash_edges[1][keep]


def _boxes(column: pa.ChunkedArray) -> np.ndarray:
    """A `*_box` column of verified pairs as an [n, 4] float array."""
    flat = pc.list_flatten(column.combine_chunks()) if len(column) else pa.array([], pa.float32())
    return np.asarray(flat.to_numpy(zero_copy_only=False), np.float64).reshape(-1, 4)


def _split(ctx: RunContext, pairs: pa.Table, edges: Edges, failed: Edges, hash_edges: Edges | None, n: int) -> dict[str, Any]:
    """The components over all edges, which verified self pairs the self components use, and the
    counts: pairs of images that conflict (different parts of one image,
    `curation.dedup.footprints`), verified pairs left out for them, and verified pairs left out
    between clusters whose other pairs failed (`curation.dedup.linkage`, over the pairs the
    footprints kept and the `failed` self pairs)."""
    vcfg = ctx.cfg.dedup.verify
    labels = graph_components(n, hash_edges, edges, ctx.engine.connected_components)
    conflict = conflicts(*edges, _boxes(pairs.column("src_box")), _boxes(pairs.column("dst_box")), vcfg.min_overlap)
    mask = split_mask(labels, *edges, pairs.column("score").to_numpy(), conflict, hash_edges)
    outcome = np.r_[np.ones(int(mask.sum()), bool), np.zeros(len(failed[0]), bool)]
    clusters = split_labels(n, np.r_[edges[0][mask], failed[0]], np.r_[edges[1][mask], failed[1]], outcome,
                            hash_edges, vcfg.min_linkage)
    linked = clusters[edges[0]] == clusters[edges[1]]
    return {"all_labels": labels, "self_mask": mask & linked,
            "counts": {"part_conflicts": len(conflict[0]), "parts_apart": int((~mask).sum()),
                       "linkage_apart": int((mask & ~linked).sum())}}


def _graph_edges(ctx: RunContext, uids: np.ndarray, hash_edges: Edges | None, checked: pa.Table | None
                 ) -> tuple[Edges | None, np.ndarray | None, dict[str, Any]]:
    """(self edges, pool images hit by an evaluation image, the `_split` of the self edges or {}):
    the k-NN graphs' edges, or their verified pairs when the `verify` stage ran (`checked`)."""
    if "embedding" not in ctx.dedup_methods:
        return None, None, {}

    def pairs(graph: str, rel: str) -> pa.Table | None:
        if checked is not None:
            return of_graph(checked, graph)
        return read_parquet(ctx.run.path(rel), columns=["src", "dst"]) if ctx.run.path(rel).exists() else None

    near = pairs("self", NEAR_EDGES)
    hits = pairs("eval", EVAL_EDGES) if ctx.eval_sources and ctx.run.path(EVAL_EDGES).exists() else None
    eval_hit = None
    if hits is not None:
        eval_hit = np.zeros(len(uids), dtype=bool)
        eval_hit[_indices(uids, hits.column("dst"))] = True
    if near is None:
        return None, eval_hit, {}
    edges = (_indices(uids, near.column("src")), _indices(uids, near.column("dst")))
    if checked is None:
        return edges, eval_hit, {}
    failed = of_graph(checked, "self", verified=False)
    return edges, eval_hit, _split(ctx, near, edges, (_indices(uids, failed.column("src")), _indices(uids, failed.column("dst"))),
                                   hash_edges, len(uids))


def run_components(ctx: RunContext) -> dict[str, Any]:
    paths = [str(p) for p in ctx.run.pool_files()]
    uids, pixels, counts, offsets = pool_images(paths)
    hash_edges = read_edges(ctx.run, HASH_EDGES, uids)
    checked = checked_pairs(ctx) if "embedding" in ctx.dedup_methods and verify_enabled(ctx.cfg) else None
    if hash_edges is not None and checked is not None:
        hash_edges = _without_failed_hashes(uids, hash_edges, checked)
    near_edges, eval_hit, split = _graph_edges(ctx, uids, hash_edges, checked)
    dec = decide(pixels, counts, hash_edges, near_edges, eval_hit, components=ctx.engine.connected_components,
                 self_mask=split.get("self_mask"), all_labels=split.get("all_labels"))
    apart = split.get("counts", {})
    reps, sizes = largest_components(dec.rep, counts, LARGEST_RECORDED)
    largest = [{"component": uids[r].decode(), "rows": int(n)} for r, n in zip(reps, sizes)]
    del pixels, counts, hash_edges, near_edges, checked

    work = str(ctx.run.path("_work", "components"))
    makedirs(work)
    _save(work, uids, dec)
    found = ctx.engine.map(file_candidates, [(p, int(o), work) for p, o in zip(paths, offsets)],
                           desc="exact copies", total=len(paths)) if dec.multi.any() else []
    cand = [np.concatenate(c) for c in zip(*found)] if found else [np.empty(0, np.int64)] * 2 + [np.empty(0, "S1")]
    save_array(as_path(work) / "kept_copies.npy", pick_copies(cand[1], cand[2], cand[0]))
    del dec, uids, cand, found

    parts = [str(as_path(work) / f"part-{i:05d}.parquet") for i in range(len(paths))]
    tallies = ctx.engine.map(label_file, [(p, int(o), work, out) for p, o, out in zip(paths, offsets, parts)],
                             desc="label rows", total=len(paths))
    write_parts(parts, ctx.run.path(COMPONENTS), schemas.COMPONENTS)
    remove(work)
    counts_by_reason = dict(sorted(sum((Counter(t) for t in tallies), Counter()).items()))
    return {**counts_by_reason, "rows": int(sum(sum(t.values()) for t in tallies)),
            "kept_images": int(counts_by_reason.get("kept", 0)), **apart, LARGEST_KEY: largest}


def components_key(ctx: RunContext) -> Any:
    """`components` (reads the pool and every detector's edges): which detectors and evaluation
    sets, and with verified pairs the footprint settings (`decide` reads no config)."""
    key: list[Any] = [list(ctx.dedup_methods), ctx.eval_sources]
    if verify_enabled(ctx.cfg):
        key.append(config_fields(ctx.cfg, *(f"dedup.verify.{f}" for f in VERIFY_FIELDS_OF_COMPONENTS)))
    return key


def kept_ids(run: RunDir) -> np.ndarray:
    """Sorted image_ids that survive deduplication."""
    t = read_parquet(run.path(COMPONENTS), columns=["image_id", "keep"])
    return np.unique(id_array(t.filter(t.column("keep")).column("image_id")))
