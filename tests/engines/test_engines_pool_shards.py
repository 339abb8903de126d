"""The file-by-file global stages (`pipelines.stages.pool_shards`): the kept rows of every
embedding file, the k-means sample, cluster assignment and exact neighbour search give what the
one-matrix functions give on the whole kept pool, on the local engine (in process and with a
process pool) and on Ray."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation.retrieval.clustering import assign
from curation.config import RunConfig
from curation.retrieval.retrieve import nearest
from embedder.store import write_embeddings
from pipelines.context import RunContext
from pipelines.engines.distributed import memmap_file
from pipelines.engines import make_engine
from curation.core.rundir import RunDir
from pipelines.stages import pool_shards
from curation.core.ids import as_ids
from pipelines.stages.embedding import read_unique
from pipelines.stages.pool_shards import PoolShards

DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, np.ndarray]:
    """Four embedding files (one empty; ids out of order; two ids repeated in a later file with
    other vectors) and the sorted ids kept by dedup (two thirds, plus one id with no embedding)."""
    rng = np.random.default_rng(3)
    run = RunDir(tmp_path_factory.mktemp("pool-shards") / "run")
    names = [f"img-{i:04d}" for i in rng.permutation(300)]
    files = [names[:120], names[120:120], names[120:250] + names[5:7], names[250:]]
    for f, ids in enumerate(files):
        write_embeddings(run.path("embeddings", f"part-{f:05d}.parquet"), ids, _unit(rng, len(ids)) if ids else
                         np.empty((0, DIM), np.float16))
    kept = np.unique(np.array([n for i, n in enumerate(sorted(names)) if i % 3] + ["not-embedded"]))
    return run, kept


def _context(run: RunDir, engine: str, workers: int) -> RunContext:
    return RunContext(run=run, cfg=RunConfig(), engine=make_engine(engine, workers, progress=False))


@pytest.fixture(params=[("local", 1), ("local", 2), ("ray", 2)], ids=["local-1", "local-2", "ray"])
def ctx(request: pytest.FixtureRequest, pool: tuple[RunDir, np.ndarray]) -> RunContext:
    engine, workers = request.param
    if engine == "ray":
        request.getfixturevalue("ray_cluster")
    context = _context(pool[0], engine, workers)
    yield context
    context.engine.close()


def _whole(run: RunDir, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, emb = read_unique(run, "embeddings")
    keep = np.isin(ids, as_ids(kept))
    return ids[keep], emb[keep]


def test_plan_finds_the_kept_first_occurrences(pool: tuple[RunDir, np.ndarray]) -> None:
    run, kept = pool
    ids, vectors = _whole(run, kept)
    shards = PoolShards.plan(_context(run, "local", 1), "embeddings", kept)
    assert list(shards.ids) == list(ids) and len(shards) == 200  # 300 ids, a third not kept
    assert shards.ids.dtype.kind == "S"  # byte strings: a quarter of numpy unicode (curation/core/ids.py)
    assert [len(f.rows) for f in shards.files][1] == 0  # the empty file has no rows
    assert sorted(np.concatenate([f.positions for f in shards.files])) == list(range(len(ids)))
    # the repeated ids (rows 130, 131 of file 2) are never read: their first occurrence is in file 0
    assert not np.isin(shards.files[2].rows, [130, 131]).any()


def test_gather_assign_and_nearest_match_the_whole_matrix(ctx: RunContext, pool: tuple[RunDir, np.ndarray],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run, kept = pool
    ids, vectors = _whole(run, kept)
    shards = PoolShards.plan(ctx, "embeddings", kept)

    assert np.array_equal(shards.gather(ctx, None), vectors)
    sample = np.array([0, 7, 8, 120, 199])
    assert np.array_equal(shards.gather(ctx, sample), vectors[sample])

    centroids = vectors[::25].astype(np.float32)
    np.save(tmp_path / "centroids.npy", centroids)
    labels, sims = shards.assign_all(ctx, str(tmp_path / "centroids.npy"), 64, "never")
    want_labels, want_sims = assign(vectors, centroids, use_gpu="never")
    # every pair scored on its own (curation.core.determinism.pair_dots): the same bytes per file as whole
    assert np.array_equal(labels, want_labels) and np.array_equal(sims, want_sims)

    queries = _unit(np.random.default_rng(9), 11).astype(np.float32)
    np.save(tmp_path / "queries.npy", queries)
    monkeypatch.setattr(pool_shards, "MERGE_GROUP", 2)  # several merge rounds over the four files
    got_sims, got = shards.nearest_all(ctx, str(tmp_path / "queries.npy"), 5, 4, "never")
    want_sims, want = nearest(queries, vectors, 5, use_gpu="never")
    assert got.shape == (11, 5) and np.array_equal(got, want) and np.array_equal(got_sims, want_sims)


def test_nearest_asks_for_more_than_the_pool(pool: tuple[RunDir, np.ndarray], tmp_path: Path) -> None:
    run, kept = pool
    context = _context(run, "local", 1)
    shards = PoolShards.plan(context, "embeddings", kept[:3])
    np.save(tmp_path / "q.npy", np.ones((2, DIM), np.float32))
    sims, got = shards.nearest_all(context, str(tmp_path / "q.npy"), 10, 4, "never")
    assert got.shape == (2, 3) and sorted(got[0]) == [0, 1, 2] and np.isfinite(sims).all()


def test_memmap_file_names_only_whole_mapped_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    whole = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert memmap_file(whole) == str(tmp_path / "a.npy")
    assert memmap_file(whole[1:]) is None and memmap_file(whole[:, :2]) is None  # parts of it
    assert memmap_file(np.asarray(whole).copy()) is None


@pytest.mark.parametrize("block", [None, 64], ids=["one-block", "blocks-across-files"])
def test_dedup_vectors_stream_the_whitened_pool_into_a_memmap(pool: tuple[RunDir, np.ndarray], block: int | None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The k-NN stages' input equals whitening fitted and applied on the whole matrix in memory,
    byte for byte: the projection runs in fixed row blocks of the sorted pool, never per file."""
    from curation.dedup import whitening
    from curation.dedup.whitening import Whitening
    from pipelines.stages.embedding import VECTORS, WHITENING, dedup_vectors

    if block:
        monkeypatch.setattr(whitening, "BLOCK", block)  # blocks that straddle the four files
    run, _ = pool
    context = RunContext(run=run, cfg=RunConfig.model_validate({"dedup": {"whiten_dim": 8}}),
                         engine=make_engine("local", 1, progress=False), progress=False)
    ids, vectors = dedup_vectors(context, "embeddings", fit=True)
    want_ids, emb = read_unique(run, "embeddings")
    assert isinstance(vectors, np.memmap) and vectors.shape == (300, 8) and list(ids) == list(want_ids)
    np.testing.assert_array_equal(vectors, Whitening.fit(emb, 8, 1e-4).apply(emb))
    assert not run.path(VECTORS, "embeddings.raw.npy").exists()  # the unwhitened copy is gone
    assert Whitening.load(run.path(WHITENING)).projection.shape == (DIM, 8)


def test_an_empty_first_file_keeps_the_width(tmp_path: Path) -> None:
    """The first embedding file fixes the memmap's width and dtype even when it holds no rows."""
    from pipelines.stages.embedding import dedup_vectors

    run = RunDir(tmp_path / "run")
    write_embeddings(run.path("embeddings", "part-00000.parquet"), [], np.empty((0, DIM), np.float16))
    write_embeddings(run.path("embeddings", "part-00001.parquet"), ["a", "b"], _unit(np.random.default_rng(0), 2))
    for whiten in (0, 4):
        context = RunContext(run=run, cfg=RunConfig.model_validate({"dedup": {"whiten_dim": whiten}}),
                             engine=make_engine("local", 1, progress=False), progress=False)
        ids, vectors = dedup_vectors(context, "embeddings", fit=True)
        assert list(ids) == [b"a", b"b"] and vectors.shape == (2, whiten or DIM)
