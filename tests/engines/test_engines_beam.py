"""The Beam engine: star-round components, k-NN with a side input, RunInference path, Dataflow
options and pipeline graphs (built, never submitted), and the CLI flags of both engines."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from engine_fixtures import assert_same_graphs, check_map_parquet, graphs, rows_writer, size_batch_fn

from curation.dedup import knn
from curation.config import KnnConfig
from curation.dedup.graph import connected_components
from pipelines.engines.beam_engine import BeamEngine
from curation.core.errors import UserError

GPU_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"


@pytest.fixture(scope="module")
def engine():
    eng = BeamEngine(2, progress=False)
    yield eng
    eng.close()


def test_components_by_star_rounds_equal_scipy(engine: BeamEngine) -> None:
    from pipelines.engines.beam_global import beam_components

    rounds = {}
    for name, (n, src, dst) in graphs().items():
        labels, rounds[name] = beam_components(engine, n, src, dst)
        assert np.array_equal(labels, connected_components(n, src, dst, method="scipy")), name
    assert rounds["no_edges"] == 1
    assert rounds["chains"] > rounds["stars"]  # long paths need more rounds than stars
    assert rounds["chains"] > engine.rounds_per_pipeline  # and span several pipelines


def test_star_steps_at_one_node() -> None:
    from pipelines.engines.beam_global import large_star_at, small_star_at

    assert sorted(large_star_at(5, [9, 2, 7, 2])) == [(7, 2), (9, 2)]
    assert sorted(large_star_at(1, [4, 3])) == [(3, 1), (4, 1)]
    assert large_star_at(9, [2, 5]) == []
    assert sorted(small_star_at(8, [3, 5, 3])) == [(5, 3), (8, 3)]


@pytest.mark.parametrize("index,stored", [("flat", "array"), ("ivf_flat", "array"), ("ivf_flat", "memmap")])
def test_knn_with_the_index_as_side_input_equals_one_index(engine: BeamEngine, index: str, stored: str,
                                                           tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((1200, 32)).astype(np.float16)
    base[400:500] = base[:100] + 0.05 * rng.standard_normal((100, 32))
    if stored == "memmap":  # copied to the scratch space in chunks
        np.save(tmp_path / "base.npy", base)
        base = np.load(tmp_path / "base.npy", mmap_mode="r")
    cfg = KnnConfig(index=index, recall_sample=100, near_band=0.3)
    assert_same_graphs(engine, base, cfg, 200)


def test_map_keeps_task_order(engine: BeamEngine) -> None:
    assert engine.map(pow, [(2, i) for i in range(12)]) == [2**i for i in range(12)]
    assert engine.map(pow, []) == []


def test_run_inference_path_runs_whole_files_in_order(engine, engine_runs: dict[str, Path], tmp_path: Path) -> None:
    check_map_parquet(engine, engine_runs["local"] / "pool", tmp_path)



# -- Dataflow: options and graphs, offline -----------------------------------------------------------
def _dataflow_engine() -> BeamEngine:
    return BeamEngine(8, runner="DataflowRunner", project="lvd-project", region="us-central1",
                      temp_location="gs://lvd-bucket/tmp", dataflow_service_options=[GPU_OPTION],
                      # dry_run: Beam skips its GCS bucket checks (network) while building
                      beam_args=["--job_name=lvd-test", "--experiments=use_runner_v2", "--dry_run=True"])


def _labels(pipeline) -> list[str]:
    import apache_beam as beam

    labels: list[str] = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node) -> None:
            labels.append(node.full_label)

        def visit_transform(self, node) -> None:
            labels.append(node.full_label)

    pipeline.visit(Visitor())
    return labels


def test_dataflow_pipelines_build_with_the_given_options_without_submitting() -> None:
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions, WorkerOptions

    from pipelines.engines.beam_global import star_pipeline
    from pipelines.engines.beam_inference import file_inference_pipeline
    from pipelines.stages.embedding import embed_task

    engine = _dataflow_engine()
    p = engine.map_pipeline(embed_task, 3, engine.scratch("map"), model_bound=True)
    gcp = p.options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location, gcp.job_name) == ("lvd-project", "us-central1", "gs://lvd-bucket/tmp", "lvd-test")
    assert gcp.dataflow_service_options == [GPU_OPTION]
    assert p.options.view_as(StandardOptions).runner == "DataflowRunner" and type(p.runner).__name__ == "DataflowRunner"
    assert "use_runner_v2" in p.options.get_all_options()["experiments"]
    assert p.options.view_as(WorkerOptions).num_workers is None  # no local-runner options leak into Dataflow
    assert "direct_num_workers" not in " ".join(engine.args)
    assert {"Tasks", "Spread", "Run"} <= set(_labels(p))
    assert engine.scratch("x").startswith("gs://lvd-bucket/tmp/lvd-")
    assert len(p.to_runner_api().components.transforms) > 3  # the graph serialises for submission

    p = engine.pipeline()
    star_pipeline(p, "gs://lvd-bucket/edges.parquet", "gs://lvd-bucket/out", 1, 2)
    labels = set(_labels(p))
    assert {"Read", "R1Large", "R1SmallStar", "R1Compare", "R2Count", "WriteEdges", "WriteCounts"} <= labels

    p = engine.pipeline(single_worker=True)
    file_inference_pipeline(p, [("gs://lvd-bucket/pool/part-00000.parquet", "gs://lvd-bucket/emb/part-00000.parquet")],
                            ["image_id", "image"], size_batch_fn, rows_writer, "gs://lvd-bucket/tmp/s")
    assert {"Files", "Spread", "Infer", "Store"} <= set(_labels(p))
    assert any(isinstance(t.transform, RunInference) for t in p.transforms_stack[0].parts)


def test_dataflow_needs_a_temp_location() -> None:
    with pytest.raises(UserError, match="temp-location"):
        BeamEngine(2, runner="DataflowRunner", project="lvd-project", region="us-central1")


def test_local_runner_is_offline_and_uses_the_workers() -> None:
    engine = BeamEngine(3)
    assert engine.args == ["--runner=FnApiRunner", "--direct_num_workers=3", "--direct_running_mode=multi_threading"]
    override = BeamEngine(3, beam_args=["--direct_running_mode=multi_processing"])
    assert override.args[-1] == "--direct_running_mode=multi_processing" and override.args.count("--direct_num_workers=3") == 1


# -- CLI flags ---------------------------------------------------------------------------------------
def _curate_args(argv: list[str]) -> argparse.Namespace:
    from pipelines.cli import build_parser

    return build_parser().parse_args(["curate", "--out", "RUN", *argv])


def test_cli_flags_reach_each_engine() -> None:
    from pipelines.options import engine_options

    args = _curate_args(["--engine", "beam", "--runner", "DataflowRunner", "--project", "lvd-project", "--region", "r1",
                         "--temp-location", "gs://b/t", "--dataflow-service-options", GPU_OPTION,
                         "--dataflow-service-options", "enable_prime", "--", "--job_name=j", "--no_use_public_ips"])
    assert engine_options(args) == {"runner": "DataflowRunner", "project": "lvd-project", "region": "r1",
                                    "temp_location": "gs://b/t", "dataflow_service_options": [GPU_OPTION, "enable_prime"],
                                    "beam_args": ["--job_name=j", "--no_use_public_ips"]}
    assert engine_options(_curate_args(["--engine", "ray", "--ray-address", "auto"])) == {"address": "auto"}
    assert engine_options(_curate_args([])) == {}


@pytest.mark.parametrize("argv, message", [
    (["--engine", "ray", "--runner", "DataflowRunner"], "only with --engine beam"),
    (["--engine", "beam", "--ray-address", "auto"], "only with --engine ray"),
    (["--engine", "local", "--", "--job_name=j"], "only with --engine beam"),
    (["--engine", "beam", "stray"], "unexpected arguments"),
])
def test_cli_refuses_flags_of_another_engine(argv: list[str], message: str) -> None:
    from pipelines.options import engine_options

    with pytest.raises(UserError, match=message):
        engine_options(_curate_args(argv))
