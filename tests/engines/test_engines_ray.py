"""The Ray engine: retries, distributed components and k-NN, the Ray Data path."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from engine_fixtures import assert_same_graphs, check_map_parquet, fail_once, graphs

from curation.dedup import knn
from curation.config import KnnConfig
from curation.dedup.graph import connected_components
from pipelines.engines.distributed import memmap_file
from pipelines.stages.hashing import hash_shard


@pytest.fixture(scope="module")
def engine(ray_cluster):
    from pipelines.engines.ray_engine import RayEngine

    eng = RayEngine(2, progress=False, max_retries=2)
    yield eng
    eng.close()
    assert ray_cluster.is_initialized()  # the engine joined the session's Ray and left it running


@pytest.mark.parametrize("model_bound", [False, True], ids=["tasks", "actors"])
def test_a_failing_task_is_retried_and_the_stage_completes(engine, engine_runs: dict[str, Path], tmp_path: Path,
                                                             model_bound: bool) -> None:
    """Every hash task fails on its first attempt; Ray retries it and the outputs equal the
    local engine's."""
    run = engine_runs["local"]
    cfg = json.loads((run / "manifest.json").read_text())["config"]["hashing"]
    shards = sorted((run / "pool").glob("part-*.parquet"))
    tasks = [(str(tmp_path / f"attempts-{p.stem}"), hash_shard, str(p), str(tmp_path / p.name), cfg,
              str(run / "hashes/pca.npz")) for p in shards]
    counts = engine.map(fail_once, tasks, model_bound=model_bound)
    assert counts == [pq.read_metadata(run / "hashes" / p.name).num_rows for p in shards]
    for p in shards:
        assert len((tmp_path / f"attempts-{p.stem}").read_text().split()) == 2  # failed once, retried once
        assert (tmp_path / p.name).read_bytes() == (run / "hashes" / p.name).read_bytes()


def test_a_task_that_always_fails_fails_the_map(engine, tmp_path: Path) -> None:
    marker = tmp_path / "never"
    marker.mkdir()  # a folder: appending to it fails on every attempt
    with pytest.raises(Exception, match="Is a directory"):
        engine.map(fail_once, [(str(marker), print)])


@pytest.mark.parametrize("name", list(graphs()))
def test_components_by_merge_tree_equal_scipy(ray_cluster, name: str) -> None:
    from pipelines.engines.ray_global import ray_components

    n, src, dst = graphs()[name]
    for shards in (1, 5):
        labels, rounds = ray_components(n, src, dst, shards=shards)
        assert np.array_equal(labels, connected_components(n, src, dst, method="scipy"))
        assert rounds == 1 + math.ceil(math.log2(min(shards, max(len(src), 1))))


@pytest.mark.parametrize("index,stored", [("flat", "array"), ("ivf_flat", "array"), ("ivf_pq", "array"),
                                          ("ivf_pq", "memmap")])
def test_knn_over_base_shards_equals_one_index(engine, index: str, stored: str, tmp_path: Path) -> None:
    """Also with the base as a memory-mapped file (the k-NN stages' input), which the shard
    actors open themselves."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((1500, 32)).astype(np.float16)
    base[500:600] = base[:100] + 0.05 * rng.standard_normal((100, 32))
    if stored == "memmap":
        np.save(tmp_path / "base.npy", base)
        base = np.load(tmp_path / "base.npy", mmap_mode="r")
        assert memmap_file(base) == str(tmp_path / "base.npy")
    cfg = KnnConfig(index=index, pq_m=8, recall_sample=200, batch_size=256, near_band=0.3, near_max=40)  # 2 query blocks of 1024
    assert_same_graphs(engine, base, cfg, 300)
    if index != "flat":
        assert "nprobe_calibration" in knn.knn_graph(base, 10, 0.5, cfg).info


def test_ray_data_path_runs_whole_files_in_order_on_model_actors(engine, engine_runs: dict[str, Path], tmp_path: Path) -> None:
    results = check_map_parquet(engine, engine_runs["local"] / "pool", tmp_path)
    assert len({r["pid"] for r in results}) == 1  # 2 CPUs, 2 per model actor: one actor did every file


def test_gpu_tasks_ask_for_a_gpu_only_where_the_cluster_has_one(engine) -> None:
    """Exact search and cluster assignment (`gpu=True`) ask Ray for a GPU per task on a cluster
    with GPUs (Ray hides the GPUs a task did not ask for); on this CPU cluster they run as usual."""
    assert engine.gpus == 0 and engine.task_resources(gpu=True) == {"num_cpus": 1}
    assert engine.map(abs, [(-1,), (-2,)], gpu=True) == [1, 2]
    with_gpus = copy.copy(engine)
    with_gpus.gpus = 8
    assert with_gpus.task_resources(gpu=True) == {"num_cpus": 1, "num_gpus": 1}
    assert with_gpus.task_resources() == {"num_cpus": 1}
