"""The report's `thresholds` section: where each k-NN graph's threshold falls among its scores.

For the self graph (`knn_edges`) and the relative one (`eval_edges`): the histogram of the score of
every pair the graph scored (the stage's counts, `curation.dedup.knn_scores.HISTOGRAM_KEY`) with the
threshold drawn on it, and the borderline pairs: the edges that scored lowest above the threshold
(from the edges file) and the near misses that scored highest under it (from the near-miss file),
each pair's two thumbnails side by side. That is where a user sees whether the threshold suits
their data. The scores drawn are the ones compared with the threshold (normalised by each query's
background when the dedup model is calibrated so), never the stored cosine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa

from curation.dedup.knn_scores import HISTOGRAM_KEY, bin_of
from curation.report.data import sources_by_id, short
from curation.report.page import Group, Mark, Tile, bars_svg, esc, fmt_count, gallery, section
from curation.report.scan import first_rows
from curation.core.storage import parquet_file

#: (stage, title, edges file, near-miss file) of each graph.
GRAPHS = (
    ("knn_edges", "Self dedup", "dedup/knn_edges.parquet", "dedup/knn_near_misses.parquet"),
    ("eval_edges", "Relative dedup", "dedup/eval_edges.parquet", "dedup/eval_near_misses.parquet"),
)
COLUMNS = ["src", "dst", "sim", "score"]


@dataclass(frozen=True)
class GraphView:
    """One graph's threshold, score histogram (as stored) and borderline pairs."""

    stage: str
    title: str
    threshold: float
    histogram: dict[str, Any] | None
    above: list[Group]  # edges, lowest score first
    below: list[Group]  # near misses, highest score first
    note: str = ""  # why a part is missing

    @property
    def groups(self) -> list[Group]:
        return self.above + self.below


def _has_scores(path: Path) -> bool:
    return path.exists() and "score" in parquet_file(path).schema_arrow.names


def _pairs(root: Path, rel: str, lowest: bool, pairs: int) -> list[dict[str, Any]]:
    """The `pairs` rows of a scored pair file nearest the threshold from one side (ties by ids)."""
    order = [("score", "ascending" if lowest else "descending"), ("src", "ascending"), ("dst", "ascending")]
    found = first_rows(root / rel, COLUMNS, [], order, pairs)
    return found[()].to_pylist() if found else []


def _group(row: dict[str, Any], sources: Mapping[str, str], kind: str) -> Group:
    tiles = [Tile(row[side], short(row[side]), sources.get(row[side], row[side])) for side in ("src", "dst")]
    return Group(f"{kind} · score {row['score']:.4f} · cosine {row['sim']:.4f}", tiles)


def threshold_view(root: Path, manifest: Mapping[str, Any], pairs: int = 4) -> list[GraphView] | None:
    """Per graph the run built: its threshold, score histogram and the `pairs` borderline pairs on
    each side of the threshold; None when no graph ran."""
    stages = manifest.get("stages", {})
    out = []
    for stage, title, edges, near in GRAPHS:
        counts = stages.get(stage, {}).get("counts", {}) if isinstance(stages.get(stage), dict) else {}
        threshold = counts.get("threshold")
        if not isinstance(threshold, (int, float)) or not (root / edges).exists():
            continue
        histogram = counts.get(HISTOGRAM_KEY) if isinstance(counts.get(HISTOGRAM_KEY), dict) else None
        if histogram is None or not _has_scores(root / edges) or not _has_scores(root / near):
            out.append(GraphView(stage, title, float(threshold), None, [], [],
                                 f"This run's {stage} stage is from before scores were recorded: rerun it "
                                 f"(`--force {stage}`) to see its score distribution and borderline pairs."))
            continue
        above, below = _pairs(root, edges, True, pairs), _pairs(root, near, False, pairs)
        sources = sources_by_id(root, pa.array([r[side] for r in above + below for side in ("src", "dst")], pa.string()))
        out.append(GraphView(stage, title, float(threshold), histogram, [_group(r, sources, "edge") for r in above],
                             [_group(r, sources, "near miss") for r in below]))
    return out or None


def score_svg(histogram: Mapping[str, Any], threshold: float, label: str) -> str:
    """The stored score histogram as bars (log heights), its range widened to hold the threshold,
    with the threshold as a vertical line."""
    width = float(histogram["bin_width"])
    counts = [int(c) for c in histogram["counts"]]
    at = bin_of(threshold, width)
    first = int(histogram["first_bin"]) if counts else at
    lo, hi = min(first, at), max(first + len(counts), at + 1)
    counts = [0] * (first - lo) + counts + [0] * (hi - first - len(counts))
    titles = [f"scores {(lo + i) * width:.3f} to {(lo + i + 1) * width:.3f}: {c:,} pairs" for i, c in enumerate(counts)]
    mark = Mark((threshold - lo * width) / ((hi - lo) * width), f"threshold {threshold:g}")
    return bars_svg(counts, titles, f"{lo * width:.2f}", f"{hi * width:.2f}", label, [mark], log=True)


def thresholds_section(views: list[GraphView] | None, thumbs: Mapping[str, str]) -> str:
    """The section: per graph, the score histogram with its threshold, then the borderline pairs."""
    if views is None:
        return section("thresholds", "Thresholds", "", empty="Nothing to show: no k-NN graph has run "
                       "(stages `knn_edges`, `eval_edges`).")
    body = ""
    for v in views:
        body += f"<h3>{esc(v.title)}: threshold {esc(f'{v.threshold:g}')}</h3>"
        if v.histogram is None:
            body += f'<p class="note">{esc(v.note)}</p>'
            continue
        total = sum(int(c) for c in v.histogram["counts"])
        body += (f'<p class="note">The score of each of the {fmt_count(total)} pairs the graph scored (every image\'s k '
                 "nearest neighbours; the score is what the threshold is compared with). Bar heights are logarithmic.</p>")
        body += score_svg(v.histogram, v.threshold, f"{v.title.lower()}: score of every scored pair")
        body += '<p class="note">Borderline pairs: the lowest-scoring edges, then the best near misses.</p>'
        body += gallery(v.groups, thumbs) if v.groups else '<p class="note">No pair near the threshold.</p>'
    return section("thresholds", "Thresholds: score distributions and borderline pairs", body)
