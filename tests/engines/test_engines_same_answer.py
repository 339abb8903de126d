"""Same input, config and seed -> the same curated set on the local, Ray and Beam engines; a
killed run resumes on its engine to the same bytes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from engine_fixtures import curate, data_files

DISTRIBUTED = ("ray", "beam")


def _table(run: Path, folder: str) -> pa.Table:
    parts = sorted(run.glob(f"{folder}/*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("image_id")


@pytest.mark.parametrize("engine", DISTRIBUTED)
def test_every_output_file_is_byte_identical(engine_runs: dict[str, Path], engine: str) -> None:
    local, other = data_files(engine_runs["local"]), data_files(engine_runs[engine])
    assert sorted(other) == sorted(local)
    assert [name for name in local if local[name] != other[name]] == []
    # Every stage wrote something, through every kind of step.
    for name in ("pool/part-00000.parquet", "hashes/part-00000.parquet", "embeddings/part-00000.parquet",
                 "dedup/knn_edges.parquet", "dedup/eval_edges.parquet", "dedup/knn_near_misses.parquet",
                 "dedup/eval_near_misses.parquet", "dedup/components.parquet"):
        assert name in local
    for run in (engine_runs["local"], engine_runs[engine]):  # scratch of the global stages is gone
        assert not (run / "_work" / "knn").exists() and not list((run / "retrieval").glob("_queries-*"))


@pytest.mark.parametrize("engine", DISTRIBUTED)
def test_same_components_and_kept_images(engine_runs: dict[str, Path], engine: str) -> None:
    local = pq.read_table(engine_runs["local"] / "dedup/components.parquet").sort_by("image_id")
    other = pq.read_table(engine_runs[engine] / "dedup/components.parquet").sort_by("image_id")
    assert other.to_pydict() == local.to_pydict()
    reasons = set(local.column("reason").to_pylist())
    assert {"hash-duplicate", "eval-duplicate", "kept"} <= reasons, reasons
    # The tiny world exercises every detector: hash, k-NN and evaluation edges.
    for name in ("hash_edges", "knn_edges", "eval_edges", "knn_near_misses", "eval_near_misses"):
        assert pq.read_metadata(engine_runs["local"] / f"dedup/{name}.parquet").num_rows > 0, name
    keep = local.column("keep").to_numpy(zero_copy_only=False)
    assert 0 < keep.sum() < len(keep)


@pytest.mark.parametrize("engine", DISTRIBUTED)
@pytest.mark.parametrize("folder", ["pool", "embeddings", "eval/embeddings", "hashes"])
def test_same_rows_by_image_id(engine_runs: dict[str, Path], engine: str, folder: str) -> None:
    assert _table(engine_runs[engine], folder).equals(_table(engine_runs["local"], folder))


@pytest.mark.parametrize("engine", DISTRIBUTED)
def test_same_curated_output(engine_runs: dict[str, Path], engine: str) -> None:
    if not (engine_runs["local"] / "output").is_dir():
        pytest.skip("this build has no output stage")
    local, other = _table(engine_runs["local"], "output"), _table(engine_runs[engine], "output")
    assert local.num_rows > 0
    assert other.equals(local)
    index = json.loads((engine_runs["local"] / "output/_index.json").read_text())
    assert json.loads((engine_runs[engine] / "output/_index.json").read_text()) == index


@pytest.mark.parametrize("engine", DISTRIBUTED)
def test_stages_ran_on_the_named_engine(engine_runs: dict[str, Path], engine: str) -> None:
    stages = json.loads((engine_runs[engine] / "manifest.json").read_text())["stages"]
    assert {"ingest", "embed", "knn_edges", "components"} <= set(stages)
    assert {info["engine"] for info in stages.values()} == {engine}
    local = json.loads((engine_runs["local"] / "manifest.json").read_text())["stages"]
    for name in ("ingest", "hash_edges", "knn_edges", "eval_edges", "components"):
        assert {k: v for k, v in stages[name]["counts"].items() if k != "shards"} == local[name]["counts"], name
    # The score histograms (equal above) count every scored pair: each query's k nearest, not only the edges.
    k = json.loads((engine_runs["local"] / "manifest.json").read_text())["config"]["dedup"]["k"]
    knn, cross = local["knn_edges"]["counts"], local["eval_edges"]["counts"]
    pool = knn["images"]
    assert sum(knn["score_histogram"]["counts"]) == pool * min(k, pool - 1)
    assert sum(cross["score_histogram"]["counts"]) == cross["eval_images"] * min(k, pool)
    assert stages["knn_edges"]["counts"]["shards"] == 2  # the base really was split


def test_kept_images_match_between_engines(engine_runs: dict[str, Path]) -> None:
    kept = {}
    for engine, run in engine_runs.items():
        t = pq.read_table(run / "dedup/components.parquet", columns=["image_id", "keep"])
        ids = np.asarray(t.column("image_id").to_pylist())
        kept[engine] = set(ids[t.column("keep").to_numpy(zero_copy_only=False)])
    assert kept["ray"] == kept["local"] == kept["beam"]


@pytest.mark.parametrize("engine", DISTRIBUTED)
def test_resume_after_a_killed_run_gives_the_same_bytes(engine_runs: dict[str, Path], tiny: Path, tmp_path: Path,
                                                        engine: str) -> None:
    """A run killed midway through ingest and embed (their markers gone, some shards never
    written) resumes on the same engine: only the missing work reruns, every output is the same."""
    run = tmp_path / "run"
    shutil.copytree(engine_runs[engine], run)
    before = data_files(run)
    for rel in ("_stages/ingest.json", "pool/part-00001.parquet", "_work/ingest-pool/00001.json",
                "_stages/embed.json", "embeddings/part-00002.parquet", "_stages/components.json",
                "dedup/components.parquet"):
        (run / rel).unlink()
    curate(tiny, run, engine)
    assert data_files(run) == before
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert not stages["ingest"]["skipped"] and not stages["embed"]["skipped"] and not stages["components"]["skipped"]
    assert stages["hash"]["skipped"] and stages["knn_edges"]["skipped"]
    assert stages["embed"]["engine"] == engine
