"""Scores of a run's dedup against the real-photo copy benchmark's truth (`curation.quality.copy_bench`).

Pairs are labelled from the truth: a copy pair shares an original (`dup_group`); an ambiguous pair
comes from two different regions of one photo that overlap (a tile and its whole photo, or their
copies) and is left out of every count; every other pair is distinct. Self-dedup: pairwise
precision / recall over the pool's rows (a predicted pair is two rows in one component), recall per
transform (a copy in its original's component), and the false pairs by kind (adjacent tiles of one
photo, other photos of one scene, the rest). Relative dedup: the share of evaluation copies removed
as `eval-duplicate`, and the collateral, the share of the other rows removed so (rows ambiguous with
an evaluation original left out). `threshold_curve` re-scores both over edge-similarity thresholds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.quality.truth import edge_components, relative_sources

COPY, DISTINCT, AMBIGUOUS = 1, 0, -1


def is_copy_bench(truth: pa.Table) -> bool:
    """Whether a truth table is the real-photo benchmark's (it has regions of photos)."""
    return {"photo", "x0", "y1"} <= set(truth.column_names)


class Labeller:
    """Pool rows of a run joined with the truth: per row its group, photo, scene, region, kind."""

    def __init__(self, sources: list[str], truth: pa.Table, root: Path):
        t = {r["source"]: r for r in truth.to_pylist()}
        rows = [t.get(s) for s in relative_sources(sources, root)]
        self.known = np.array([r is not None for r in rows])
        get = lambda k, d: np.array([r[k] if r else d for r in rows])  # noqa: E731
        self.group, self.photo, self.scene = get("dup_group", ""), get("photo", ""), get("scene", "")
        self.kind, self.transform = get("kind", "unknown"), get("transform", "")
        self.box = np.stack([get(k, 0) for k in ("x0", "y0", "x1", "y1")], axis=1) if rows else np.zeros((0, 4), int)
        evals = [r for r in truth.to_pylist() if r["kind"] == "eval-original"]
        self.eval_boxes = [(r["photo"], (r["x0"], r["y0"], r["x1"], r["y1"])) for r in evals]

    def label(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """COPY / DISTINCT / AMBIGUOUS for row pairs (i, j)."""
        same = self.group[i] == self.group[j]
        a, b = self.box[i], self.box[j]
        over = (np.minimum(a[:, 2], b[:, 2]) > np.maximum(a[:, 0], b[:, 0])) & (np.minimum(a[:, 3], b[:, 3]) > np.maximum(a[:, 1], b[:, 1]))
        amb = ~same & (self.photo[i] == self.photo[j]) & over
        return np.where(same, COPY, np.where(amb, AMBIGUOUS, DISTINCT))

    def near_eval(self) -> np.ndarray:
        """Rows that are not evaluation copies but overlap an evaluation original's region (ambiguous)."""
        out = np.zeros(len(self.group), bool)
        for photo, (x0, y0, x1, y1) in self.eval_boxes:
            b = self.box
            out |= (self.photo == photo) & (np.minimum(b[:, 2], x1) > np.maximum(b[:, 0], x0)) & (np.minimum(b[:, 3], y1) > np.maximum(b[:, 1], y0))
        return out & (self.kind != "eval-copy")


def _pairs_within(labels: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of `rows` sharing a label."""
    order = rows[np.argsort(labels[rows], kind="stable")]
    lab = labels[order]
    cuts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1], True])
    ii, jj = [], []
    for s, e in zip(cuts[:-1], cuts[1:]):
        if e - s > 1:
            a, b = np.triu_indices(e - s, 1)
            ii.append(order[s:e][a])
            jj.append(order[s:e][b])
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(ii), np.concatenate(jj)
    return np.minimum(i, j), np.maximum(i, j)


def self_scores(comp: np.ndarray, lab: Labeller) -> dict[str, Any]:
    """Pairwise precision / recall of components `comp` (one label per row), ambiguous pairs left out."""
    rows = np.flatnonzero(lab.known)
    pi, pj = _pairs_within(comp, rows)
    pl = lab.label(pi, pj)
    ti, tj = _pairs_within(lab.group, rows)
    predicted, correct, true = int((pl != AMBIGUOUS).sum()), int((pl == COPY).sum()), len(ti)
    wrong = pl == DISTINCT
    fi, fj = pi[wrong], pj[wrong]
    same_photo = lab.photo[fi] == lab.photo[fj]
    same_scene = ~same_photo & (lab.scene[fi] == lab.scene[fj])
    out: dict[str, Any] = {
        "pairs_predicted": predicted, "pairs_true": true, "pairs_correct": correct,
        "pairs_ambiguous_ignored": int((pl == AMBIGUOUS).sum()),
        "precision": round(correct / predicted, 4) if predicted else 1.0,
        "recall": round(correct / true, 4) if true else 1.0,
        "false_pairs": {"adjacent_tiles": int(same_photo.sum()), "same_scene": int(same_scene.sum()),
                        "other": int((~same_photo & ~same_scene).sum())},
    }
    orig_comp = {g: c for g, c, k, ok in zip(lab.group, comp, lab.kind, lab.known) if ok and k == "original"}
    per: dict[str, list[int]] = {}
    for g, c, k, t in zip(lab.group, comp, lab.kind, lab.transform):
        if k == "copy" and g in orig_comp:
            per.setdefault(str(t), []).append(int(orig_comp[g] == c))
    out["recall_by_transform"] = {t: f"{sum(v)}/{len(v)}" for t, v in sorted(per.items())}
    return out


def relative_scores(removed: np.ndarray, lab: Labeller) -> dict[str, Any]:
    """Evaluation copies removed, and collateral: other rows removed (ambiguous rows left out)."""
    ev = lab.known & (lab.kind == "eval-copy")
    others = lab.known & ~ev & ~lab.near_eval()
    return {"eval_copies": int(ev.sum()),
            "eval_copies_removed": round(float(removed[ev].mean()), 4) if ev.any() else None,
            "others": int(others.sum()), "others_removed": int(removed[others].sum()),
            "collateral": round(float(removed[others].mean()), 4) if others.any() else 0.0}


def copy_bench_quality(components: pa.Table, truth: pa.Table, root: Path) -> dict[str, Any]:
    """Self- and relative-dedup scores of a run's `dedup/components.parquet`."""
    lab = Labeller(components.column("source").to_pylist(), truth, root)
    comp = np.array(components.column("component").to_pylist())
    removed = np.array([r == "eval-duplicate" for r in components.column("reason").to_pylist()], bool)
    out = self_scores(comp, lab)
    out["relative"] = relative_scores(removed, lab)
    out["unknown_rows"] = int((~lab.known).sum())
    return out


def split_quality(components: pa.Table, truth: pa.Table, root: Path) -> dict[str, dict[str, Any]]:
    """`copy_bench_quality` per split of the benchmark's photos (`curation.quality.copy_bench.photo_split`):
    the rows of each split's photos only, so pairs across splits count in neither (they are distinct
    by construction). `held-out` is what a descriptor trained on `tune` photos reports."""
    from curation.quality.copy_bench import photo_split

    photo = {r["source"]: r["photo"] for r in truth.select(["source", "photo"]).to_pylist()}
    rel = relative_sources(components.column("source").to_pylist(), root)
    split = np.array([photo_split(photo[s]) if s in photo else "" for s in rel])
    out = {}
    for name in ("tune", "held-out"):
        rows = np.flatnonzero(split == name)
        out[name] = copy_bench_quality(components.take(pa.array(rows)), truth, root)
    return out


def compared(edges: pa.Table) -> str:
    """The column a k-NN graph's threshold was compared with: `score` (the normalised cosine);
    `sim` in runs from before graphs recorded it (equal when the graph does not normalise)."""
    return "score" if "score" in edges.column_names else "sim"


def threshold_curve(components: pa.Table, truth: pa.Table, root: Path, near_edges: pa.Table | None,
                    hash_edges: pa.Table | None = None, eval_edges: pa.Table | None = None,
                    thresholds: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Precision / recall (and relative dedup) over thresholds on the edges' score (`compared`): the
    components the hash edges and the k-NN edges with `score > t` make; relative dedup removes the
    components of pool images with an evaluation edge `score > t` (the same t on both). Only the pairs
    the run kept can be swept: its edges, and with them its near misses (`dedup/*_near_misses.parquet`,
    down to the threshold minus `knn.near_band`, the `knn.near_max` best) to go below its threshold."""
    lab = Labeller(components.column("source").to_pylist(), truth, root)
    ids = np.array(components.column("image_id").to_pylist())
    graphs = [e for e in (near_edges, eval_edges) if e is not None and e.num_rows]
    if thresholds is None:
        lo = min((float(pc.min(e.column(compared(e))).as_py()) for e in graphs), default=0.0)
        thresholds = np.round(np.arange(np.floor(lo * 40) / 40, 1.0, 0.025), 3)

    def above(edges: pa.Table, t: float) -> pa.Table:
        return edges.filter(pc.greater(edges.column(compared(edges)), pa.scalar(t, pa.float32())))

    curve = []
    for t in thresholds:
        parts = [e for e in (hash_edges,) if e is not None]
        if near_edges is not None:
            parts.append(above(near_edges, float(t)))
        edges = pa.concat_tables([p.select(["src", "dst", "sim"]).cast(parts[0].select(["src", "dst", "sim"]).schema) for p in parts]) if parts \
            else pa.table({"src": pa.array([], pa.string()), "dst": pa.array([], pa.string()), "sim": pa.array([], pa.float32())})
        comp = np.array(edge_components(components, edges).column("component").to_pylist())
        s = self_scores(comp, lab)
        row: dict[str, Any] = {"threshold": float(t), "precision": s["precision"], "recall": s["recall"]}
        if eval_edges is not None:
            hit = above(eval_edges, float(t))
            # As the pipeline does: a hit's whole component (over all edges) goes.
            removed = np.isin(comp, comp[np.isin(ids, np.array(hit.column("dst").to_pylist(), dtype=ids.dtype))])
            r = relative_scores(removed, lab)
            row.update(eval_copies_removed=r["eval_copies_removed"], collateral=r["collateral"])
        curve.append(row)
    return curve


def components_from_pairs(sources: list[str], pairs: list[tuple[int, int]]) -> pa.Table:
    """A components-like table (source, component, reason) from duplicate pairs of row indices, to
    score another tool's output (e.g. imagededup's) with `copy_bench_quality`."""
    from curation.dedup.graph import connected_components

    src, dst = (np.array(x, np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
    labels = connected_components(len(sources), src, dst)
    return pa.table({"source": sources, "component": pa.array(labels.astype(np.int64)), "reason": [""] * len(sources)})
