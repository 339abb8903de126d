"""The output join as a shuffle (`curation.output.join`): the same bytes whatever runs the tasks
and however the buckets fall, shard cuts by rows and bytes, ids matched exactly."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import curation.output.shards as shards
from curation.config import OutputConfig
from curation.output.join import row_keys, spill_source, wanted_arrays
from curation.output.shards import cut_points, write_output
from pipelines.engines import make_engine


def _digests(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_cut_points_bound_rows_and_bytes() -> None:
    assert cut_points(np.array([5, 5, 5, 5, 5]), 2, 100) == [(0, 2), (2, 4), (4, 5)]
    assert cut_points(np.array([40, 40, 40, 10]), 10, 90) == [(0, 2), (2, 4)]
    assert cut_points(np.array([10, 500, 10]), 10, 100) == [(0, 1), (1, 2), (2, 3)]  # an oversize row alone
    assert cut_points(np.array([], np.int64), 10, 100) == []


def test_same_bytes_on_a_process_pool_and_with_shards_across_buckets(synthetic_run, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass 1 and 2 tasks on two worker processes give the bytes of the in-process loop; with
    4 buckets for 13 rows and one missing row, shards run over bucket boundaries."""
    cfg = OutputConfig(shard_rows=3, webdataset=True, row_group_rows=2)
    serial = write_output(synthetic_run.retrieved, synthetic_run.sources(), tmp_path / "serial", cfg, synthetic_run.recipe_rows)
    engine = make_engine("local", 2, progress=False)
    try:
        pooled = write_output(synthetic_run.retrieved, synthetic_run.sources(), tmp_path / "pooled", cfg,
                              synthetic_run.recipe_rows, map_fn=engine.map)
        monkeypatch.setattr(shards, "MAX_BUCKETS", 4)
        bucketed = write_output(synthetic_run.retrieved, synthetic_run.sources(), tmp_path / "bucketed", cfg,
                                synthetic_run.recipe_rows, map_fn=engine.map)
    finally:
        engine.close()
    assert serial == pooled == bucketed and serial["totals"]["rows"] == 12 and serial["missing"] == 1
    assert _digests(tmp_path / "serial") == _digests(tmp_path / "pooled") == _digests(tmp_path / "bucketed")
    assert [s["rows"] for s in serial["shards"]] == [3, 3, 3, 3]


def test_ids_match_exactly_never_by_prefix(tmp_path: Path) -> None:
    """A source id longer than every wanted id is not cut down to match one of them."""
    from curation.core.rundir import write_table

    source = tmp_path / "source.parquet"
    write_table(pa.table({"image_id": ["abc", "abcd", "ab", "abc"], "image": [b"1", b"22", b"333", b"4444"]}), source)
    keys, buckets = wanted_arrays(*row_keys(pa.array(["abc", "ab", "zz", "abc"])), bucket_rows=2)
    assert list(keys) == [b"ab", b"abc", b"abc", b"zz"] and list(buckets) == [0, 0, 1, 1]
    np.save(tmp_path / "ids.npy", keys)
    np.save(tmp_path / "buckets.npy", buckets)
    ids, lengths = spill_source(str(source), 0, str(tmp_path / "ids.npy"), str(tmp_path / "buckets.npy"), str(tmp_path / "spill"))
    assert dict(zip(ids, lengths)) == {b"abc": 1, b"ab": 3}  # the first "abc" row; "abcd" is not "abc"
    assert sorted(p.relative_to(tmp_path / "spill").as_posix() for p in (tmp_path / "spill").rglob("*.parquet")) == [
        "b-00000/s-00000.parquet", "b-00001/s-00000.parquet"]
