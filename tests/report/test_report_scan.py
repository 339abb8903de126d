"""The report's bounded-memory scans give what the whole-table computations give, across batch
boundaries (batches of 7 rows here), with ties kept in file order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.report import scan as report_scan
from curation.report.scan import count_rows, first_rows


@pytest.fixture()
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, pa.Table]:
    monkeypatch.setattr(report_scan, "BATCH_ROWS", 7)
    rng = np.random.default_rng(5)
    n = 200
    t = pa.table({
        "group": pa.array([None if i % 17 == 0 else f"g{int(v)}" for i, v in enumerate(rng.integers(0, 5, n))]),
        "score": pa.array(rng.integers(0, 4, n).astype(np.float32)),  # many ties
        "row": pa.array(np.arange(n)),
    })
    path = tmp_path / "t.parquet"
    pq.write_table(t, path, row_group_size=50)
    return path, t


def test_counts_equal_the_in_memory_counts(table: tuple[Path, pa.Table]) -> None:
    path, t = table
    grouped = t.group_by(["group"]).aggregate([([], "count_all")]).to_pylist()
    want = sorted(grouped, key=lambda r: (-r["count_all"], r["group"] is None, r["group"] or ""))  # nulls last on ties
    assert count_rows(path, ["group"]) == want
    assert {r["group"]: r["count_all"] for r in count_rows(path, ["group"])}[None] == 12  # rows 0, 17, ..., 187
    odd = count_rows(path, ["group"], ["row"], lambda b: b.filter(pa.compute.equal(pa.compute.bit_wise_and(b["row"], 1), 1)))
    assert sum(r["count_all"] for r in odd) == 100


def test_first_rows_per_group_keep_file_order_on_ties(table: tuple[Path, pa.Table]) -> None:
    path, t = table
    found = first_rows(path, ["group", "score", "row"], ["group"], [("score", "descending")], 5)
    rows = t.to_pylist()
    for key, got in found.items():
        mine = [r for r in rows if r["group"] == key[0]]
        want = sorted(mine, key=lambda r: -r["score"])[:5]  # Python's sort is stable: file order on ties
        assert got.to_pylist() == want
    assert set(found) == {(r["group"],) for r in rows}
    firsts = first_rows(path, ["group", "row"], ["group"], [], 2)  # no order: the first rows in the file
    assert firsts[("g1",)].column("row").to_pylist() == [r["row"] for r in rows if r["group"] == "g1"][:2]
