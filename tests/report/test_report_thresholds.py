"""The report's `thresholds` section (`curation.report.thresholds`): the score histogram with the
threshold line where the threshold is, and the borderline pairs either side of it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from report_fixtures import EVIL, EVIL_SOURCE, build_run, parse_page

from curation.core import schemas
from curation.dedup.decisions import LARGEST_KEY
from curation.dedup.knn_scores import HISTOGRAM_KEY
from curation.report.write import render_report

THRESHOLD = 0.6
#: Scores 0.40 .. 0.99 in bins of 0.01 (bin 40 to 99).
HISTOGRAM = {"bin_width": 0.01, "first_bin": 40, "counts": [1] * 60}


def _pairs(pairs: list[tuple[str, str, float, float]]) -> pa.Table:
    src, dst, sim, score = zip(*pairs)
    return pa.table({"src": src, "dst": dst, "sim": pa.array(sim, pa.float32()), "score": pa.array(score, pa.float32())},
                    schema=schemas.SCORED_EDGES)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The synthetic run up to components, with a scored self graph; its evaluation edges are
    from before scores were recorded."""
    synthetic = build_run(tmp_path_factory.mktemp("run") / "RUN", upto="components")
    root, p = synthetic.root, synthetic.pool
    edges = [(p[2], p[3], 0.95, 0.9), (p[4], p[5], 0.9, 0.65), (p[0], p[2], 0.8, 0.61), (p[8], p[9], 0.85, 0.7),
             (p[10], p[11], 0.99, 0.61), (p[12], p[13], 0.9, 0.8)]
    near = [(p[14], p[15], 0.7, 0.59), (p[16], p[17], 0.7, 0.52), (p[1], p[18], 0.75, 0.55), (p[3], p[19], 0.66, 0.6),
            (p[6], p[7], 0.6, 0.51)]
    pq.write_table(_pairs(edges), root / "dedup" / "knn_edges.parquet")
    pq.write_table(_pairs(near), root / "dedup" / "knn_near_misses.parquet")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stages"]["knn_edges"] = {"counts": {"threshold": THRESHOLD, "edges": 6, HISTOGRAM_KEY: HISTOGRAM}}
    manifest["stages"]["eval_edges"] = {"counts": {"threshold": 0.45, "eval_edges": 3}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, p


def test_threshold_line_sits_at_the_threshold(run) -> None:
    page = render_report(run[0])
    section = re.search(r'<section id="thresholds">.*?</section>', page).group(0)
    x = [float(v) for v in re.findall(r'<line class="mark" x1="([0-9.]+)"', section)]
    # The axis spans scores 0.40 .. 1.00 over x 44 .. 630: 0.6 is a third of the way.
    assert x == [pytest.approx(44 + 586 * (THRESHOLD - 0.4) / 0.6, abs=0.06)]
    assert len(re.findall(r"<rect ", section)) == 60
    assert "60 pairs the graph scored" in section


def test_threshold_outside_the_scores_widens_the_axis() -> None:
    from curation.report.thresholds import score_svg

    svg = score_svg({"bin_width": 0.01, "first_bin": 70, "counts": [3, 2]}, 0.605, "x")
    assert len(re.findall(r"<rect ", svg)) == 12  # bins 60 .. 71: scores 0.60 .. 0.72
    assert float(re.search(r'class="mark" x1="([0-9.]+)"', svg).group(1)) == pytest.approx(44 + 586 * 0.005 / 0.12, abs=0.06)


def test_borderline_pairs_either_side(run) -> None:
    root, p = run
    sec = parse_page(render_report(root)).sections["thresholds"]
    text = "".join(sec["text"])
    heads = re.findall(r"(edge|near miss) · score ([0-9.]+) · cosine ([0-9.]+)", text)
    # The 4 lowest-scoring edges (ties by ids), then the 4 best near misses (0.51 is fifth: left out).
    low_edges = sorted([(0.61, p[0], p[2]), (0.61, p[10], p[11]), (0.65, p[4], p[5]), (0.7, p[8], p[9])])
    assert [(k, float(s)) for k, s, _ in heads] == [("edge", s) for s, _, _ in low_edges] + [
        ("near miss", 0.6), ("near miss", 0.59), ("near miss", 0.55), ("near miss", 0.52)]
    assert len(sec["imgs"]) == 16  # two thumbnails a pair
    titles, source = sec["titles"], {image: f"/data/pool/img{i:02d}.jpg" for i, image in enumerate(p)}
    assert titles[:2] == [source[low_edges[0][1]], source[low_edges[0][2]]]  # lowest edge: by score, then ids
    assert EVIL_SOURCE in titles  # the near miss at 0.6 shows p[3], whose source is hostile: escaped
    assert "Relative dedup: threshold 0.45" in text and "--force eval_edges" in text


def test_page_escapes_and_stage_table_leaves_the_histogram_out(run) -> None:
    page = render_report(run[0])
    assert EVIL not in page
    stages = parse_page(page).sections["stages"]["rows"]
    knn = next(r for r in stages if r[0] == "knn_edges")
    assert "threshold=0.6" in knn[3] and HISTOGRAM_KEY not in knn[3]
    components = next(r for r in stages if r[0] == "components")  # its largest components are the gallery's
    assert "kept=" in components[3] and LARGEST_KEY not in components[3]
    assert '<a href="#thresholds">' in page


def test_runs_without_graphs_say_so(tmp_path: Path) -> None:
    root = build_run(tmp_path / "RUN", upto="ingest").root
    text = "".join(parse_page(render_report(root)).sections["thresholds"]["text"])
    assert "no k-NN graph has run" in text
