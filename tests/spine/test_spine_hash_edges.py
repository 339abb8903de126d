"""Stage `hash_edges` split into engine tasks gives the same edges as one task."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from curation.config import RunConfig
from pipelines.context import RunContext
from pipelines.engines.local import LocalEngine
from curation.core.rundir import RunDir
from pipelines.stages.hashing import EDGES_FILE, run_hash_edges


def _edges(demo_run: Path, tmp: Path, parts: int, workers: int) -> tuple[list, dict]:
    shutil.copytree(demo_run / "hashes", tmp / "hashes")
    cfg = RunConfig.model_validate({"hashing": {"edge_parts": parts}})
    engine = LocalEngine(workers=workers, progress=False)
    try:
        counts = run_hash_edges(RunContext(run=RunDir(tmp), cfg=cfg, engine=engine))
    finally:
        engine.close()
    assert not list((tmp / "_work" / "hash_edges").glob("*.npy"))  # piece files cleaned up
    return pq.read_table(tmp / EDGES_FILE).to_pylist(), counts


def test_hash_edges_in_pieces_equal_one_piece(demo_run: Path, tmp_path: Path) -> None:
    one, c1 = _edges(demo_run, tmp_path / "one", 1, 1)
    many, c5 = _edges(demo_run, tmp_path / "many", 5, 2)
    assert (c1["parts"], c5["parts"]) == (1, 5)
    assert len(one) > 100 and many == one
    assert one == pq.read_table(demo_run / EDGES_FILE).to_pylist()  # auto: one piece on the demo world
