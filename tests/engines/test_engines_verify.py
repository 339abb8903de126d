"""The `verify` stage (pixel verification of candidate copy pairs) gives the same checked pairs and
the same components on the local, Ray and Beam engines: its rounds and tasks are cut from the sorted
pair list by count alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def verified_runs(engine_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pipelines.cli import main

    root = tmp_path_factory.mktemp("verify-runs")
    out = {}
    for engine, run in engine_runs.items():
        copy = root / engine
        shutil.copytree(run, copy)
        # The copy head at the fixture's thresholds (many candidates, and hash pairs its graph lacks,
        # which the default descriptor's graph holds on this world), in small rounds and tasks: several
        # rounds, several tasks each; a strict detail minimum, so that some pairs fail and both
        # outcomes are compared.
        argv = ["dedup", str(copy), "--engine", engine, "--workers", "2", "--no-progress", "--set", "shard_rows=40",
                "--set", "dedup.model=efficientnet_lite0_copy",
                "--set", "dedup.self_threshold=0.2", "--set", "dedup.relative_threshold=0.2",
                "--set", "dedup.verify.enabled=true", "--set", "dedup.verify.round_pairs=2", "--set", "dedup.verify.task_pairs=1",
                "--set", "dedup.verify.min_detail=0.99"]
        assert main(argv) == 0, argv
        out[engine] = copy
    return out


@pytest.mark.parametrize("engine", ["ray", "beam"])
def test_same_verified_pairs_and_components(verified_runs: dict[str, Path], engine: str) -> None:
    for name in ("verified", "components"):
        local = pq.read_table(verified_runs["local"] / "dedup" / f"{name}.parquet")
        other = pq.read_table(verified_runs[engine] / "dedup" / f"{name}.parquet")
        assert other.equals(local), name
    checked = pq.read_table(verified_runs["local"] / "dedup" / "verified.parquet")
    assert checked.num_rows >= 3 and 0 < sum(checked.column("verified").to_pylist()) < checked.num_rows
    assert {"hash", "self"} <= set(checked.column("graph").to_pylist())
    assert not (verified_runs[engine] / "_work" / "verify").exists()
