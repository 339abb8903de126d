"""Deduplication decisions: components of the duplicate graph, one representative each.

Inputs are the pool rows and edge lists found by the detectors (exact: same image_id; hash:
Hamming radius on perceptual hashes; near: embedding k-NN above the self threshold; eval: pool
images close to an evaluation image). Outputs are `components.parquet` rows: every pool row gets
its component (the representative's image_id), `keep` and a `reason`.

Representative rule (deterministic on every engine): the largest original image (pixels), then
the smallest image_id; among exact copies of it, the smallest source name.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import schemas
from curation.graph import connected_components
from curation.ids import id_array

KEPT, EXACT, HASH, NEAR, EVAL = "kept", "exact-duplicate", "hash-duplicate", "near-duplicate", "eval-duplicate"
REASONS = [KEPT, EXACT, HASH, NEAR, EVAL]


def unique_images(pool_rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted unique image_ids, pixels per unique id, unique index of every row)."""
    ids = id_array(pool_rows.column("image_id"))
    pixels = pc.multiply(
        pool_rows.column("orig_width").cast(pa.int64()), pool_rows.column("orig_height").cast(pa.int64())
    ).to_numpy()
    uids, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return uids, pixels[first], inverse


def representatives(labels: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """For each node, the node index of its component's representative.

    Nodes are indexed in sorted image_id order, so "smallest index" is "smallest image_id".
    """
    n = len(labels)
    # Sort by (component, -pixels, index): the first of each component is its representative.
    order = np.lexsort((np.arange(n), -pixels.astype(np.int64), labels))
    first = np.ones(n, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    rep_of_label = np.empty(n, dtype=np.int64)
    rep_of_label[labels[order][first]] = order[first]
    return rep_of_label[labels]


def build_components(
    pool_rows: pa.Table,
    hash_edges: tuple[np.ndarray, np.ndarray] | None = None,
    near_edges: tuple[np.ndarray, np.ndarray] | None = None,
    eval_hit: np.ndarray | None = None,
    components: Callable[[int, np.ndarray, np.ndarray], np.ndarray] = connected_components,
) -> pa.Table:
    """Decide keep / reason for every pool row.

    Edges are pairs of indices into the sorted unique image_ids (see `unique_images`).
    `eval_hit[u]` marks unique images directly linked to an evaluation image: their whole
    component (over all edges) is discarded, as the paper's relative deduplication does.
    `components` computes canonical labels (an engine may pass its distributed version).
    """
    uids, pixels, inverse = unique_images(pool_rows)
    n = len(uids)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    hs, hd = hash_edges if hash_edges is not None else empty
    ns, nd = near_edges if near_edges is not None else empty
    hash_labels = components(n, hs, hd)
    all_labels = components(n, np.concatenate([hs, ns]), np.concatenate([hd, nd]))
    rep = representatives(all_labels, pixels)

    rows = pool_rows.num_rows
    row_rep = rep[inverse]
    is_rep_image = row_rep == inverse
    # Among rows that are copies of the representative image, keep the smallest source (only
    # those rows' sources are read out of Arrow: the pool's paths would not fit a driver).
    keep = np.zeros(rows, dtype=bool)
    cand = np.flatnonzero(is_rep_image)
    sources = id_array(pool_rows.column("source").take(pa.array(cand, pa.int64())))
    order = cand[np.lexsort((sources, inverse[cand]))]
    first = np.ones(len(order), dtype=bool)
    first[1:] = inverse[order][1:] != inverse[order][:-1]
    keep[order[first]] = True

    reason = np.full(rows, REASONS.index(NEAR), dtype=np.int8)
    same_hash_comp = hash_labels[inverse] == hash_labels[row_rep]
    reason[same_hash_comp] = REASONS.index(HASH)
    reason[is_rep_image] = REASONS.index(EXACT)
    reason[keep] = REASONS.index(KEPT)
    if eval_hit is not None and eval_hit.any():
        bad_labels = np.unique(all_labels[np.flatnonzero(eval_hit)])
        doomed = np.isin(all_labels[inverse], bad_labels)
        keep[doomed] = False
        reason[doomed] = REASONS.index(EVAL)
    return pa.table(
        {
            "image_id": pool_rows.column("image_id"),
            "source": pool_rows.column("source"),
            "component": pa.array(uids[row_rep], type=pa.string()),
            "keep": pa.array(keep),
            "reason": pa.DictionaryArray.from_arrays(reason, REASONS).cast(pa.string()),
        },
        schema=schemas.COMPONENTS,
    ).sort_by([("component", "ascending"), ("image_id", "ascending"), ("source", "ascending")])


def summarize(components: pa.Table) -> dict[str, int]:
    """Row counts by reason (the funnel's dedup steps)."""
    counts = pc.value_counts(components.column("reason")).to_pylist()
    return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"])}
