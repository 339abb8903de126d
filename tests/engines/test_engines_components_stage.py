"""The `components` stage labels the pool file by file (the driver holds per-image arrays, never
the rows): on a pool whose exact copies sit in several files, with ties of size and source, its
output equals the one-table `build_components` row for row, on the local engine (in process and
with a process pool) and on Ray; and its scratch folder is gone afterwards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core import schemas
from curation.config import RunConfig
from curation.dedup.decisions import build_components
from curation.core.ids import id_array
from pipelines.context import RunContext
from pipelines.engines import make_engine
from curation.core.rundir import RunDir, write_table
from pipelines.stages.components import (
    COMPONENTS,
    EVAL_EDGES,
    NEAR_EDGES,
    pool_rows,
    run_components,
)
from pipelines.stages.hashing import EDGES_FILE


def _edges(ids: np.ndarray, src: np.ndarray, dst: np.ndarray) -> pa.Table:
    return pa.table({"src": pa.array(ids[src]), "dst": pa.array(ids[dst]),
                     "sim": pa.array(np.ones(len(src), np.float32))}, schema=schemas.EDGES)


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four pool files (one empty): 300 images, 60 of them copied into another file (some with
    the same source twice), sizes with ties; hash, embedding and evaluation edges."""
    rng = np.random.default_rng(11)
    names = np.array([f"{i:08x}" for i in rng.permutation(300)])
    copies = rng.choice(300, 60, replace=False)
    ids = np.concatenate([names, names[copies], names[copies[:10]]])
    sources = np.array([f"src/{rng.integers(0, 40):03d}.jpg" for _ in ids])
    sources[-10:] = sources[300:310]  # the same image_id and source in two files: earliest row wins
    side = rng.integers(1, 5, len(ids)) * 100
    side[300:] = side[copies.tolist() + copies[:10].tolist()]  # a copy has its original's size
    order = rng.permutation(len(ids))
    ids, sources, side = ids[order], sources[order], side[order]
    run = tmp_path_factory.mktemp("components") / "run"
    for f, (lo, hi) in enumerate([(0, 150), (150, 150), (150, 330), (330, len(ids))]):
        write_table(pa.table({"image_id": ids[lo:hi], "source": sources[lo:hi], "orig_width": side[lo:hi].astype(np.int32),
                              "orig_height": np.full(hi - lo, 100, np.int32)}), run / "pool" / f"part-{f:05d}.parquet")
    uids = np.unique(names)
    write_table(_edges(uids, *rng.integers(0, 300, (2, 40))), run / EDGES_FILE)
    write_table(_edges(uids, *rng.integers(0, 300, (2, 120))), run / NEAR_EDGES)
    write_table(_edges(uids, *rng.integers(0, 300, (2, 3))), run / EVAL_EDGES)
    return run


def _reference(run: RunDir) -> pa.Table:
    rows = pool_rows(run)
    uids = np.unique(id_array(rows.column("image_id")))

    def index(rel: str, column: str) -> np.ndarray:
        return np.searchsorted(uids, id_array(pq.read_table(run.path(rel)).column(column)))

    eval_hit = np.zeros(len(uids), dtype=bool)
    eval_hit[index(EVAL_EDGES, "dst")] = True
    return build_components(rows, (index(EDGES_FILE, "src"), index(EDGES_FILE, "dst")),
                            (index(NEAR_EDGES, "src"), index(NEAR_EDGES, "dst")), eval_hit)


@pytest.mark.parametrize("engine,workers", [("local", 1), ("local", 2), ("ray", 2)], ids=["local-1", "local-2", "ray"])
def test_file_by_file_equals_one_table(pool_run: Path, engine: str, workers: int, request: pytest.FixtureRequest) -> None:
    if engine == "ray":
        request.getfixturevalue("ray_cluster")
    run = RunDir(pool_run)
    run.clear(COMPONENTS)
    # Plain edges, as with a dedup model that has no pixel verification (the default verifies).
    cfg = RunConfig.model_validate({"dedup": {"verify": {"enabled": False}}})
    ctx = RunContext(run=run, cfg=cfg, engine=make_engine(engine, workers, progress=False),
                     eval_sources=["eval"], dedup_methods=("hash", "embedding"), progress=False)
    try:
        counts = run_components(ctx)
    finally:
        ctx.engine.close()
    got, want = pq.read_table(run.path(COMPONENTS)), _reference(run)
    assert got.num_rows == want.num_rows == 370
    assert got.equals(want)
    reasons = dict(zip(*np.unique(want.column("reason").to_numpy(zero_copy_only=False), return_counts=True)))
    assert {k: counts[k] for k in reasons} == {k: int(v) for k, v in reasons.items()}
    assert counts["rows"] == 370 and counts["kept_images"] == reasons["kept"]
    # The largest components the report shows, recorded from per-image arrays: as counted from the rows.
    sizes = dict(zip(*np.unique(want.column("component").to_numpy(zero_copy_only=False), return_counts=True)))
    ranked = sorted(((-int(n), c) for c, n in sizes.items() if n > 1))[:16]
    assert counts["largest_components"] == [{"component": c, "rows": -n} for n, c in ranked]
    assert len(ranked) == 16 and ranked[0][0] < ranked[-1][0]
    # Every reason occurs, and each kept image is kept exactly once.
    assert set(reasons) == {"kept", "exact-duplicate", "hash-duplicate", "near-duplicate", "eval-duplicate"}
    kept = id_array(got.filter(got.column("keep")).column("image_id"))
    assert len(kept) == len(np.unique(kept))
    assert not run.path("_work", "components").exists()


def test_tied_copies_keep_smallest_source_then_earliest_row(pool_run: Path) -> None:
    """Among copies of a representative image, the smallest source is kept; between two rows of
    the same id and source, the earlier one (as one table's order gives it)."""
    table = _reference(RunDir(pool_run)).append_column("row", pa.array(np.arange(370)))
    for image_id in set(table.filter(table.column("keep")).column("image_id").to_pylist()):
        mine = [r for r in table.to_pylist() if r["image_id"] == image_id]
        if len(mine) > 1:
            best = min(mine, key=lambda r: (r["source"], r["row"]))
            assert [r["row"] for r in mine if r["keep"]] == [best["row"]]
