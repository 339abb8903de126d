"""`mode: balanced` rows give the same bytes on the local, Ray and Beam engines: the `balance`
stage (level-1 training on a sample read by the workers, assignment passes as engine tasks, upper
levels in the driver) and the `retrieve` stage's balanced sampling, on a small synthetic pool of
embedding files (no images: the stage, not the embedder, is under test)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.config import RunConfig
from curation.retrieval.recipes import Recipe
from embedder.store import write_embeddings
from pipelines.context import RunContext
from pipelines.engines import make_engine
from curation.core.rundir import RunDir, write_table

ENGINES = ("local", "ray", "beam")


def _pool(run: RunDir) -> None:
    """Three embedding files of 12 concepts, one 20x the others, every image kept."""
    rng = np.random.default_rng(5)
    sizes = np.full(12, 30)
    sizes[0] = 600
    centres = rng.standard_normal((12, 24))
    x = np.concatenate([c + 0.3 * rng.standard_normal((s, 24)) for c, s in zip(centres, sizes)])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    ids = np.array([f"{i:032x}" for i in rng.permutation(len(x))])
    for part, rows in enumerate(np.array_split(np.arange(len(x)), 3)):
        write_embeddings(run.path("embeddings", f"part-{part:05d}.parquet"), ids[rows], x[rows])
    write_table(pa.table({"image_id": pa.array(ids, pa.string()), "keep": pa.array(np.ones(len(ids), bool))}),
                run.path("dedup", "components.parquet"))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[len(root.parts)] in ("balanced", "retrieval") or p.name == "recipe.json"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> dict[str, Path]:
    from pipelines.stages.balance import run_balance
    from pipelines.stages.retrieval import run_retrieve

    base = tmp_path_factory.mktemp("balanced-engines")
    _pool(RunDir(base / "input"))
    cfg = RunConfig.model_validate({
        "embed": {"model": "m"}, "dedup": {"model": "m"}, "retrieval": {"model": "m"},
        "clustering": {"use_gpu": "never", "assign_batch": 50, "balanced": {
            "clusters": [8, 12], "splits": [5, 1], "resampling_steps": [0, 5], "sample_sizes": [1, 2], "niter": 10,
            "train_sample": 500, "leaf_strategy": "random"}}})
    recipe = Recipe.model_validate({"name": "b", "rows": [{"mode": "balanced", "target": 150}]})
    out = {}
    for engine in ENGINES:
        shutil.copytree(base / "input", base / engine)
        ctx = RunContext(run=RunDir(base / engine), cfg=cfg, engine=make_engine(engine, 2, progress=False), recipe=recipe)
        try:
            run_balance(ctx)
            run_retrieve(ctx)
        finally:
            ctx.engine.close()
        out[engine] = base / engine
    return out


@pytest.mark.parametrize("engine", ["ray", "beam"])
def test_balanced_stages_give_the_same_bytes(runs: dict[str, Path], engine: str) -> None:
    local, other = _files(runs["local"]), _files(runs[engine])
    assert "balanced/level-1/assignments.parquet" in local and "balanced/level-2/labels.npy" in local
    assert "retrieval/retrieved.parquet" in local and "retrieval/balanced-0.npz" in local
    assert sorted(other) == sorted(local)
    assert [name for name in local if local[name] != other[name]] == []
