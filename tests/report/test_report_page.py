"""RUN/report.html: sections and their numbers, escaping of data strings, self-containment,
determinism, partial runs and the `lvd report` command."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from report_fixtures import EVIL, EVIL_DATASET, EVIL_SOURCE, build_run, parse_page

from curation.report.write import render_report, write_report

SECTIONS = ("stages", "funnel", "recipe", "duplicates", "clusters", "retrievals", "relative", "rejects", "quality")
GALLERIES = ("duplicates", "clusters", "retrievals", "relative")


@pytest.fixture(scope="module")
def page(synthetic_run) -> str:
    return render_report(synthetic_run.root)


def test_funnel_and_recipe_numbers(page: str) -> None:
    sections = parse_page(page).sections
    assert set(SECTIONS) <= set(sections)
    funnel = {row[0]: row[1] for row in sections["funnel"]["rows"][1:]}
    assert funnel == {
        "inputs": "25", "rejected at ingest": "−4", "decoded pool": "21",
        "exact duplicates (same bytes)": "−1", "hash dedup (perceptual hash)": "−1",
        "self-dedup (copy-detection k-NN)": "−3", "relative dedup (evaluation sets)": "−2",
        "kept after dedup": "14", "retrieved": "13", "final (output shards)": "12",
    }
    details = {row[0]: row[3] for row in sections["funnel"]["rows"][1:]}
    assert details["rejected at ingest"] == "truncated: 2, nsfw: 1, too-small: 1"  # evaluation and seed inputs are not the pool's
    recipe = [row for row in sections["recipe"]["rows"][1:]]
    assert recipe == [["objects", "as_is", "", "3", "3", "3", "3", "3"], ["textures", "sample", "n=2", "2", "4", "6", "5", "4"],
                      [EVIL_DATASET, "cluster", "m=3, cap=10", "7", "6", "5", "5", "5"]]
    assert "Merge: duplicate rows 1, rows 14, unique images 13." in "".join(sections["recipe"]["text"])
    rejects = {(r[0], r[1]): r[2] for r in sections["rejects"]["rows"][1:]}
    assert rejects == {("decode", "truncated"): "2", ("decode", "too-small"): "1", ("nsfw", "nsfw"): "1",
                       ("eval/pool-decode", "corrupt"): "1", ("seeds/objects/pool-decode", "corrupt"): "1"}
    quality = {r[0]: r[1] for r in sections["quality"]["rows"][1:]}
    assert quality["dedup quality.recall"] == "0.95"


def test_galleries_show_the_right_images(page: str, synthetic_run) -> None:
    sections = parse_page(page).sections
    dup = sections["duplicates"]
    assert dup["titles"][:5] == ["/data/pool/img00.jpg", "/data/pool/copy_of_00.jpg", "/data/pool/img01.jpg", EVIL_SOURCE, "/data/pool/img02.jpg"]
    assert len(dup["imgs"]) == 5 + 2 + 2  # the three components with more than one member
    assert len(sections["clusters"]["imgs"]) == 14 and "3 non-empty clusters, 1 of k=4 empty" in "".join(sections["clusters"]["text"])
    assert page.count("<rect ") == 4  # histogram bins of sizes 3..6
    # Retrievals: 5 cluster rows, 3 as_is, 2 queries + their 5 neighbours, one of which has no bytes anywhere.
    assert len(sections["retrievals"]["imgs"]) == 5 + 3 + 2 + 4
    assert page.count('class="noimg"') == 1
    assert len(sections["relative"]["imgs"]) == 2 + 3
    assert "".join(sections["rejects"]["text"]).count("<img") == 0 and not sections["rejects"]["imgs"]  # no junk thumbnails


def test_data_strings_are_escaped(page: str) -> None:
    parsed = parse_page(page)
    assert "<script" not in page.lower() and "script" not in parsed.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Attribute values survive their quotes: the parsed title is exactly the hostile source name.
    assert EVIL_SOURCE in parsed.sections["duplicates"]["titles"]
    assert any(EVIL_DATASET in t for t in parsed.sections["retrievals"]["text"])
    reject_sources = [r[4] for r in parsed.sections["rejects"]["rows"][1:]]
    assert any(f"/data/pool/{EVIL}.jpg" in s for s in reject_sources)


def test_page_is_self_contained(page: str) -> None:
    parsed = parse_page(page)
    assert 'http-equiv="Content-Security-Policy" content="default-src &#x27;none&#x27;; img-src data:;' in page
    assert all(link.startswith("#") for link in parsed.links)
    imgs = [img for sec in parsed.sections.values() for img in sec["imgs"]]
    assert len(imgs) == 9 + 14 + 14 + 5  # duplicates, clusters, retrievals, relative
    for img in imgs:
        prefix = "data:image/jpeg;base64,"
        assert img["src"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):]))) as thumb:
            assert max(thumb.size) <= 96
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_same_run_same_page(page: str, synthetic_run) -> None:
    path = write_report(synthetic_run.root)
    assert path == synthetic_run.root / "report.html"
    assert path.read_text() == page == render_report(synthetic_run.root)


@pytest.mark.parametrize("upto", ["ingest", "components"])
def test_stopped_runs_still_get_a_report(tmp_path: Path, upto: str) -> None:
    build_run(tmp_path, upto=upto)
    parsed = parse_page(render_report(tmp_path))
    assert set(SECTIONS) - {"quality"} <= set(parsed.sections)
    text = {sid: "".join(sec["text"]) for sid, sec in parsed.sections.items()}
    funnel = {row[0]: row[1] for row in parsed.sections["funnel"]["rows"][1:]}
    assert funnel["inputs"] == "25" and funnel["retrieved"] == "–" and funnel["final (output shards)"] == "–"
    for sid in ("clusters", "retrievals"):
        assert "is missing" in text[sid] and not parsed.sections[sid]["imgs"]
    if upto == "ingest":
        assert funnel["kept after dedup"] == "–" and "is missing" in text["duplicates"] and "quality" not in parsed.sections
    else:
        assert funnel["kept after dedup"] == "14" and len(parsed.sections["duplicates"]["imgs"]) == 9
        assert len(parsed.sections["relative"]["imgs"]) == 5 and "quality" in parsed.sections


def test_bare_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    parsed = parse_page(render_report(tmp_path))
    assert set(SECTIONS) - {"quality"} <= set(parsed.sections)
    assert "no completed stage" in "".join(parsed.sections["stages"]["text"])


def test_lvd_report_command(synthetic_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines.cli import main

    (synthetic_run.root / "report.html").unlink(missing_ok=True)
    assert main(["report", str(synthetic_run.root)]) == 0
    assert capsys.readouterr().out.strip() == str(synthetic_run.root / "report.html")
    assert (synthetic_run.root / "report.html").stat().st_size > 10_000
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no manifest.json" in err and len(err.splitlines()) == 1
    assert json.loads((synthetic_run.root / "output" / "_index.json").read_text())["totals"]["rows"] == 12


def test_run_without_the_largest_components_record(tmp_path: Path) -> None:
    """A run whose components stage predates the record: the gallery says how to get it, the
    funnel still counts every reason from the file."""
    build_run(tmp_path, upto="components")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["stages"]["components"]["counts"]["largest_components"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    parsed = parse_page(render_report(tmp_path))
    assert "--force components" in "".join(parsed.sections["duplicates"]["text"])
    assert not parsed.sections["duplicates"]["imgs"]
    funnel = {row[0]: row[1] for row in parsed.sections["funnel"]["rows"][1:]}
    assert funnel["kept after dedup"] == "14"


def test_same_page_when_files_are_read_in_tiny_batches(page: str, synthetic_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts and galleries merged across batches of 3 rows equal those of one batch per file."""
    from curation.report import scan as report_scan
    monkeypatch.setattr(report_scan, "BATCH_ROWS", 3)
    assert render_report(synthetic_run.root) == page
