"""Quality of a run against the demo world's ground truth (`truth.parquet`).

Dedup is scored pairwise over the pool's originals and their planted copies: a predicted pair is
two rows in one component, a true pair is two rows of one `dup_group`. Relative dedup is scored on
the planted copies of evaluation images. Rejects are checked against the junk's expected reasons.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _pairs(sizes: np.ndarray) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


def relative_sources(sources: list[str], root: Path) -> list[str]:
    """Sources as paths relative to the world root, to join with truth.parquet."""
    root_s = str(root.resolve())
    out = []
    for s in sources:
        p = os.path.abspath(s) if "://" not in s else s
        out.append(os.path.relpath(p, root_s) if p.startswith(root_s) else s)
    return out


def load_truth(truth_path: str | Path) -> tuple[pa.Table, Path]:
    path = Path(truth_path)
    if not path.exists():
        from curation.core.errors import UserError

        raise UserError(f"truth file not found: {path}")
    return pq.read_table(path), path.parent


def _group_sizes(*keys: np.ndarray) -> np.ndarray:
    stacked = np.rec.fromarrays(keys)
    _, counts = np.unique(stacked, return_counts=True)
    return counts


def dedup_quality(components: pa.Table, truth: pa.Table, root: Path) -> dict[str, Any]:
    """Pairwise precision / recall of duplicate detection, recall per transform, relative dedup."""
    truth_map = {r["source"]: r for r in truth.to_pylist()}
    rel = relative_sources(components.column("source").to_pylist(), root)
    comp = np.array(components.column("component").to_pylist())
    reason = np.array(components.column("reason").to_pylist())
    rows = [truth_map.get(s) for s in rel]
    kind = np.array([r["kind"] if r else "unknown" for r in rows])
    group = np.array([r["dup_group"] if r else "" for r in rows])
    transform = np.array([r["transform"] if r else "" for r in rows])

    sel = np.isin(kind, ["original", "copy"])
    predicted = _pairs(_group_sizes(comp[sel]))
    true = _pairs(_group_sizes(group[sel]))
    tp = _pairs(_group_sizes(comp[sel], group[sel]))
    out: dict[str, Any] = {
        "pairs_predicted": predicted,
        "pairs_true": true,
        "pairs_correct": tp,
        "precision": round(tp / predicted, 4) if predicted else 1.0,
        "recall": round(tp / true, 4) if true else 1.0,
    }
    # Recall per transform: is the copy in the same component as its original?
    orig_comp = {g: c for g, c, k in zip(group, comp, kind) if k == "original"}
    per: dict[str, list[int]] = {}
    for g, c, k, t in zip(group, comp, kind, transform):
        if k == "copy" and g in orig_comp:
            per.setdefault(t, []).append(int(orig_comp[g] == c))
    out["recall_by_transform"] = {t: round(float(np.mean(v)), 4) for t, v in sorted(per.items())}
    # Relative dedup.
    is_eval_copy = kind == "eval-copy"
    removed = reason == "eval-duplicate"
    out["eval_copies"] = int(is_eval_copy.sum())
    out["eval_copies_removed"] = round(float(removed[is_eval_copy].mean()), 4) if is_eval_copy.any() else None
    others = ~is_eval_copy
    out["others_removed_as_eval"] = round(float(removed[others].mean()), 4) if others.any() else 0.0
    return out


def edge_components(components: pa.Table, edges: pa.Table) -> pa.Table:
    """The run's component rows relabelled by one edge list alone (e.g. the embedding k-NN edges,
    without hash edges), to score one dedup signal with `dedup_quality`: rows sharing an image_id
    (byte-identical) stay together, nothing is marked as an evaluation duplicate."""
    from curation.dedup.graph import connected_components

    ids = components.column("image_id").to_pylist()
    node_of: dict[str, int] = {}
    node = np.array([node_of.setdefault(i, len(node_of)) for i in ids], dtype=np.int64)
    pairs = [(node_of[s], node_of[d]) for s, d in zip(edges.column("src").to_pylist(), edges.column("dst").to_pylist())
             if s in node_of and d in node_of]
    src, dst = (np.array(x, dtype=np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
    labels = connected_components(len(node_of), src, dst)
    return pa.table({"source": components.column("source"), "component": pa.array(labels[node]),
                     "reason": pa.array([""] * len(ids))})


def reject_quality(rejects: pa.Table, truth: pa.Table, root: Path) -> dict[str, Any]:
    """Every junk file rejected with its expected reason; no original or copy rejected."""
    rel = relative_sources(rejects.column("source").to_pylist(), root)
    got = dict(zip(rel, rejects.column("reason").to_pylist()))
    junk = [r for r in truth.to_pylist() if r["kind"] == "junk" and r["source"].startswith("pool/")]
    good = [r for r in truth.to_pylist() if r["kind"] in ("original", "copy", "eval-copy")]
    by_reason: dict[str, int] = {}
    for reason in got.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        "junk": len(junk),
        "junk_rejected": sum(1 for r in junk if r["source"] in got),
        "junk_reason_correct": sum(1 for r in junk if got.get(r["source"]) == r["transform"]),
        "good_rejected": sum(1 for r in good if r["source"] in got),
        "rejects_by_reason": dict(sorted(by_reason.items())),
    }


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


def retrieval_quality(retrieved: pa.Table, pool: pa.Table, seed_labels: dict[str, dict[str, str]], truth: pa.Table,
                      root: Path, seed_concepts: dict[str, list[str]]) -> dict[str, Any]:
    """Retrieval precision against the demo world's concepts, and the output's concept balance.

    `pool`: image_id + source of pool rows; `seed_labels[dataset][image_id]` = the seed image's
    concept (its ImageFolder label). A `sample` row is correct when the retrieved image's concept
    is its query's; a `cluster` row when it is one of the seed set's concepts.
    """
    concept_of_source = {r["source"]: r["concept"] for r in truth.to_pylist()}
    rel = relative_sources(pool.column("source").to_pylist(), root)
    concept = dict(zip(pool.column("image_id").to_pylist(), (concept_of_source.get(s, "") for s in rel)))
    per_mode: dict[str, list[int]] = {}
    out_concepts: list[str] = []
    balanced: list[str] = []
    for row in retrieved.to_pylist():
        mode, ds = row["mode"], row["seed_dataset"]
        if mode == "as_is":
            out_concepts.append(seed_labels.get(ds, {}).get(row["image_id"], ""))
            continue
        got = concept.get(row["image_id"], "")
        out_concepts.append(got)
        if mode == "balanced":  # seedless: no query to be right about, only its balance (below)
            balanced.append(got)
            continue
        if mode == "sample":
            ok = got == seed_labels.get(ds, {}).get(row["query_id"] or "", None)
        else:
            ok = got in seed_concepts.get(ds, [])
        per_mode.setdefault(mode, []).append(int(ok))
    hits = [v for vals in per_mode.values() for v in vals]
    pool_counts = np.unique([c for c in concept.values() if c], return_counts=True)[1]
    out_counts = np.unique([c for c in out_concepts if c], return_counts=True)[1] if out_concepts else np.zeros(0)
    out: dict[str, Any] = {}
    if balanced:  # the `balanced` rows alone: how close to uniform over the pool's concepts they come
        counts = np.unique([c for c in balanced if c], return_counts=True)[1]
        out = {"balanced_rows": len(balanced), "balanced_concept_entropy_bits": round(_entropy(counts), 3),
               "balanced_concepts": int(len(counts)),
               "balanced_evenness": round(_entropy(counts) / np.log2(max(len(pool_counts), 2)), 3),
               "balanced_max_over_median": round(float(counts.max() / np.median(counts)), 2) if len(counts) else None}
    return {
        "retrieval_precision": round(float(np.mean(hits)), 4) if hits else None,
        "precision_by_mode": {m: round(float(np.mean(v)), 4) for m, v in sorted(per_mode.items())},
        "pool_concept_entropy_bits": round(_entropy(pool_counts), 3),
        "output_concept_entropy_bits": round(_entropy(np.asarray(out_counts)), 3),
        "output_concepts": int(len(out_counts)),
        # Evenness (entropy / log2 of the number of concepts): 1.0 is perfectly balanced.
        "pool_evenness": round(_entropy(pool_counts) / np.log2(max(len(pool_counts), 2)), 3),
        "output_evenness": round(_entropy(np.asarray(out_counts)) / np.log2(max(len(out_counts), 2)), 3),
        **out,
    }
