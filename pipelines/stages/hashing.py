"""Stages `hash` (perceptual hash per pool image) and `hash_edges` (pairs within the radius)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import schemas
from curation.config import HashConfig
from curation.dedup.hamming import CHUNKS, auto_parts, hamming_pairs, popcount64, sort_chunk
from curation.dedup.hashing import PCAHasher, compute_hashes, fit_sample_indices, thumbnails
from curation.core.ids import id_array
from pipelines.context import RunContext
from pipelines.graph import config_fields
from curation.core.rundir import RunDir, write_table
from curation.core.storage import as_path, files, load_array, makedirs, read_parquet, remove, save_array

PCA_FILE = "hashes/pca.npz"
EDGES_FILE = "dedup/hash_edges.parquet"


def fit_pca(run: RunDir, cfg: HashConfig) -> PCAHasher:
    """Fit the PCA hash on a seeded sample of unique pool images (chosen by id, not by order)."""
    ids = np.unique(id_array(pa.concat_tables([read_parquet(p, columns=["image_id"]) for p in run.pool_files()])
                             .column("image_id")))
    chosen = pa.array(ids[fit_sample_indices(ids, cfg.pca_sample, cfg.seed)], pa.string())
    images: dict[str, bytes] = {}
    for path in run.pool_files():
        t = read_parquet(path, columns=["image_id", "image"])
        t = t.filter(pc.is_in(t.column("image_id"), chosen))
        images.update(zip(t.column("image_id").to_pylist(), t.column("image").to_pylist()))
    ordered = [images[i] for i in sorted(images)]
    hasher = PCAHasher.fit(thumbnails(ordered, cfg.thumb_side), cfg.bits, cfg.thumb_side)
    hasher.save(run.path(PCA_FILE))
    return hasher


def hash_shard(in_path: str, out_path: str, cfg: dict[str, Any], pca_path: str | None) -> int:
    """Hash every unique image of one pool shard."""
    hcfg = HashConfig.model_validate(cfg)
    t = read_parquet(in_path, columns=["image_id", "image", "orig_width", "orig_height"])
    _, first = np.unique(t.column("image_id").to_numpy(zero_copy_only=False).astype(str), return_index=True)
    t = t.take(pa.array(np.sort(first)))
    hasher = PCAHasher.load(pca_path) if pca_path else None
    hashes, valid = compute_hashes(t.column("image").to_pylist(), hcfg, hasher)
    pixels = pc.multiply(t.column("orig_width").cast(pa.int64()), t.column("orig_height").cast(pa.int64()))
    out = pa.table({"image_id": t.column("image_id"), "phash": pa.array(hashes, pa.uint64()),
                     "valid": pa.array(valid), "pixels": pixels}, schema=schemas.HASHES)
    write_table(out, out_path)
    return out.num_rows


def hash_key(ctx: RunContext) -> Any:
    """`hash` (reads the pool): the hash and its PCA fit; not the search radius."""
    return config_fields(ctx.cfg, *(f"hashing.{f}" for f in ("method", "bits", "thumb_side", "pca_sample", "seed")))


def run_hash(ctx: RunContext) -> dict[str, Any]:
    run, cfg = ctx.run, ctx.cfg.hashing
    pca_path = str(run.path(PCA_FILE)) if cfg.method == "pca" else None
    if cfg.method == "pca":
        fit_pca(run, cfg)
    tasks = [(str(p), str(run.path("hashes", p.name)), cfg.model_dump(mode="json"), pca_path) for p in run.pool_files()]
    counts = ctx.engine.map(hash_shard, tasks, desc="hash", total=len(tasks))
    return {"hashed": int(sum(counts)), "method": cfg.method}


def read_hashes(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique image_ids, their hashes) of the images with a valid hash, across all shards."""
    t = pa.concat_tables([read_parquet(p) for p in files(run.path("hashes"), "part-*.parquet")])
    t = t.filter(t.column("valid"))
    uids, first = np.unique(id_array(t.column("image_id")), return_index=True)
    return uids, t.column("phash").to_numpy()[first]


def _sorted_paths(work: str) -> list[tuple[str, str]]:
    return [(str(as_path(work) / f"order-{c}.npy"), str(as_path(work) / f"keys-{c}.npy")) for c in range(CHUNKS)]


def hash_edges_part(work: str, radius: int, part: int, parts: int, out_path: str) -> int:
    """One piece of the Hamming search (an engine task) over what the stage saved once in `work`:
    the hashes and each chunk's sort, all read memory-mapped (a piece touches its own buckets
    only). Pairs as indices into the hashes, saved to `out_path` (.npy, [2, m] int64); returns m."""
    chunks = [(load_array(o), load_array(k)) for o, k in _sorted_paths(work)]
    src, dst = hamming_pairs(load_array(as_path(work) / "hashes.npy"), radius, part=part, parts=parts,
                             sorted_chunks=chunks)
    save_array(out_path, np.stack([src, dst]))
    return int(len(src))


def hash_edges_key(ctx: RunContext) -> Any:
    """`hash_edges` (reads the hashes): the radius and the pieces of the search."""
    return config_fields(ctx.cfg, "hashing.radius", "hashing.edge_parts")


def run_hash_edges(ctx: RunContext) -> dict[str, Any]:
    uids, hashes = read_hashes(ctx.run)
    cfg = ctx.cfg.hashing
    parts = cfg.edge_parts or auto_parts(len(hashes))
    work = ctx.run.path("_work", "hash_edges")
    makedirs(work)
    # Saved once: every piece maps the same hashes and chunk sorts instead of re-reading the
    # shards and re-sorting all n keys.
    hashes_path = str(work / "hashes.npy")
    save_array(hashes_path, hashes)
    for c, (order_path, keys_path) in enumerate(_sorted_paths(str(work))):
        order, keys = sort_chunk(hashes, c)
        save_array(order_path, order)
        save_array(keys_path, keys)
    outs = [str(work / f"part-{p:05d}-of-{parts:05d}.npy") for p in range(parts)]
    tasks = [(str(work), cfg.radius, p, parts, outs[p]) for p in range(parts)]
    ctx.engine.map(hash_edges_part, tasks, desc="hash edges", total=parts)
    pairs = np.concatenate([load_array(o, mmap=False) for o in outs], axis=1) if outs else np.zeros((2, 0), np.int64)
    # Pieces may find one pair through different chunks: unique (sorted) pairs, as one piece would.
    codes = np.unique(pairs[0] * np.int64(max(len(uids), 1)) + pairs[1])
    src, dst = codes // max(len(uids), 1), codes % max(len(uids), 1)
    dist = popcount64(hashes[src] ^ hashes[dst])
    edges = pa.table(
        {"src": pa.array(uids[src], pa.string()), "dst": pa.array(uids[dst], pa.string()),
         "sim": pa.array(1.0 - dist / 64.0, pa.float32())},
        schema=schemas.EDGES,
    )
    write_table(edges, ctx.run.path(EDGES_FILE))
    for o in [*outs, hashes_path, *(path for pair in _sorted_paths(str(work)) for path in pair)]:
        remove(o)
    return {"hashed_images": len(uids), "hash_edges": edges.num_rows, "radius": cfg.radius, "parts": parts}
