"""Deduplication decisions: components of the duplicate graph, one representative each.

Inputs are the pool rows and edge lists found by the detectors (exact: same image_id; hash:
Hamming radius on perceptual hashes; near: embedding k-NN above the self threshold; eval: pool
images close to an evaluation image). Outputs are `components.parquet` rows: every pool row gets
its component (the representative's image_id), `keep` and a `reason`.

Representative rule (deterministic on every engine): the largest original image (pixels), then
the smallest image_id; among exact copies of it, the smallest source name, then the earliest row.

Two levels, so no step needs the pool's rows in one place: `decide` works on per-image arrays
(sizes, rows per id, edges), `label_rows` labels any slice of rows from those decisions, and
`pick_copies` settles exact copies from the few candidate rows (`copy_candidates`).
`build_components` chains them over one table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import schemas
from curation.dedup.graph import connected_components
from curation.core.ids import first_occurrences, id_array, in_sorted

KEPT, EXACT, HASH, NEAR, EVAL = "kept", "exact-duplicate", "hash-duplicate", "near-duplicate", "eval-duplicate"
REASONS = [KEPT, EXACT, HASH, NEAR, EVAL]
#: Where the `components` stage's counts list its largest components ({component, rows}, largest
#: first): the report's duplicate gallery reads them rather than counting the rows per component.
LARGEST_KEY = "largest_components"

Edges = tuple[np.ndarray, np.ndarray]
Components = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def row_pixels(rows: pa.Table) -> np.ndarray:
    """Original pixels (width x height) of every row, int64."""
    return pc.multiply(rows.column("orig_width").cast(pa.int64()), rows.column("orig_height").cast(pa.int64())).to_numpy()


def unique_images(pool_rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted unique image_ids, pixels of each one's first row, rows per unique id)."""
    uids, first, counts = first_occurrences(id_array(pool_rows.column("image_id")), counts=True)
    return uids, row_pixels(pool_rows)[first], counts


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


@dataclass(frozen=True)
class Decisions:
    """What the graph decides for every unique image (index: sorted image_id order). Rows are
    labelled from these alone, file by file (`label_rows`), so the pool's rows never meet in one
    table."""

    rep: np.ndarray  # int64: its component's representative
    same_hash: np.ndarray  # bool: in the representative's hash-only component
    doomed: np.ndarray  # bool: its component touches an evaluation image
    multi: np.ndarray  # bool: more than one pool row has this image_id (exact copies)


def graph_components(n: int, hash_edges: Edges | None, near_edges: Edges | None,
                     components: Components = connected_components, near_mask: np.ndarray | None = None) -> np.ndarray:
    """Canonical component labels of nodes 0..n-1 over the hash edges and the near edges (those
    `near_mask` keeps, when given)."""
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    hs, hd = hash_edges if hash_edges is not None else empty
    ns, nd = near_edges if near_edges is not None else empty
    if near_mask is not None:
        ns, nd = ns[near_mask], nd[near_mask]
    return components(n, np.concatenate([hs, ns]), np.concatenate([hd, nd]))


def decide(pixels: np.ndarray, counts: np.ndarray, hash_edges: Edges | None = None, near_edges: Edges | None = None,
           eval_hit: np.ndarray | None = None, components: Components = connected_components,
           self_mask: np.ndarray | None = None, all_labels: np.ndarray | None = None) -> Decisions:
    """Components over all edges, their representatives and each image's fate.

    Edges are pairs of indices into the sorted unique image_ids. `self_mask` (optional, one flag per
    near edge) keeps some near edges out of the self-dedup components (`curation.dedup.footprints`:
    two different parts of one image). `eval_hit[u]` marks unique images directly linked to an
    evaluation image: their whole component over all edges, masked ones included, is discarded, as
    the paper's relative deduplication does (a part of an evaluation image must go too).
    `components` computes canonical labels (an engine may pass its distributed version);
    `all_labels`: the `graph_components` of all edges, when the caller already has them.
    """
    n = len(pixels)
    hash_labels = graph_components(n, hash_edges, None, components)
    if all_labels is None:
        all_labels = graph_components(n, hash_edges, near_edges, components)
    self_labels = all_labels
    if self_mask is not None and not self_mask.all():
        self_labels = graph_components(n, hash_edges, near_edges, components, self_mask)
    rep = representatives(self_labels, pixels)
    same_hash = hash_labels == hash_labels[rep]
    del hash_labels
    doomed = np.zeros(n, dtype=bool)
    if eval_hit is not None and eval_hit.any():
        doomed = in_sorted(all_labels, np.unique(all_labels[np.flatnonzero(eval_hit)]))
    return Decisions(rep, same_hash, doomed, counts > 1)


def largest_components(rep: np.ndarray, counts: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(representative index, pool rows) of the `top` components with the most rows (at least
    two), largest first, ties by the smaller image_id: what the report's duplicate gallery shows,
    found from per-image arrays (no pass over the rows)."""
    sizes = np.bincount(rep, weights=counts, minlength=len(rep)).astype(np.int64)
    big = np.flatnonzero(sizes > 1)
    if len(big) > top:
        cut = np.partition(sizes[big], len(big) - top)[len(big) - top]
        big = big[sizes[big] >= cut]
    big = big[np.lexsort((big, -sizes[big]))][:top]
    return big, sizes[big]


def copy_candidates(inverse: np.ndarray, dec: Decisions) -> np.ndarray:
    """Rows (as a mask) that are one of several copies of their component's representative: the
    only rows whose `source` decides which copy is kept."""
    return (dec.rep[inverse] == inverse) & dec.multi[inverse]


def pick_copies(inverse: np.ndarray, sources: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Sorted global row numbers of the kept copy of each representative image among the
    candidates (`copy_candidates`): its smallest source, then its earliest row."""
    order = np.lexsort((rows, sources, inverse))
    first = np.ones(len(order), dtype=bool)
    first[1:] = inverse[order][1:] != inverse[order][:-1]
    return np.sort(rows[order[first]])


def label_rows(image_ids: pa.ChunkedArray | pa.Array, sources: pa.ChunkedArray | pa.Array, inverse: np.ndarray,
               rows: np.ndarray, uids: np.ndarray, dec: Decisions, kept_copies: np.ndarray) -> pa.Table:
    """`components.parquet` rows for some pool rows: `inverse` (their unique index), `rows` (their
    global row numbers) and `kept_copies` (`pick_copies` over the whole pool)."""
    row_rep = dec.rep[inverse]
    is_rep_image = row_rep == inverse
    keep = (is_rep_image & ~dec.multi[inverse]) | in_sorted(rows, kept_copies)
    reason = np.full(len(inverse), REASONS.index(NEAR), dtype=np.int8)
    reason[dec.same_hash[inverse]] = REASONS.index(HASH)
    reason[is_rep_image] = REASONS.index(EXACT)
    reason[keep] = REASONS.index(KEPT)
    doomed = dec.doomed[inverse]
    keep[doomed] = False
    reason[doomed] = REASONS.index(EVAL)
    return pa.table(
        {
            "image_id": image_ids,
            "source": sources,
            "component": pa.array(uids[row_rep], type=pa.string()),
            "keep": pa.array(keep),
            "reason": pa.DictionaryArray.from_arrays(reason, REASONS).cast(pa.string()),
        },
        schema=schemas.COMPONENTS,
    )


def build_components(
    pool_rows: pa.Table,
    hash_edges: Edges | None = None,
    near_edges: Edges | None = None,
    eval_hit: np.ndarray | None = None,
    components: Components = connected_components,
) -> pa.Table:
    """Decide keep / reason for every row of one pool table, in its row order (the `components`
    stage does the same file by file: `decide` once, then `label_rows` per file)."""
    uids, pixels, counts = unique_images(pool_rows)
    dec = decide(pixels, counts, hash_edges, near_edges, eval_hit, components)
    ids = pool_rows.column("image_id")
    inverse = np.searchsorted(uids, id_array(ids)).astype(np.int64)
    rows = np.arange(len(inverse), dtype=np.int64)
    cand = np.flatnonzero(copy_candidates(inverse, dec))
    sources = id_array(pool_rows.column("source").take(pa.array(cand, pa.int64())))
    kept_copies = pick_copies(inverse[cand], sources, rows[cand])
    return label_rows(ids, pool_rows.column("source"), inverse, rows, uids, dec, kept_copies)


def summarize(components: pa.Table) -> dict[str, int]:
    """Row counts by reason (the funnel's dedup steps)."""
    counts = pc.value_counts(components.column("reason")).to_pylist()
    return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"])}
