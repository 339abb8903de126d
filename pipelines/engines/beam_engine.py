"""The Beam engine: the same stage functions as the local engine, as Apache Beam pipelines.

Every engine call is one pipeline, run to completion before the stage goes on:
- `map`: the tasks are stored as scratch files (local temp dir, or under `--temp-location` on
  Dataflow), then `Create(task numbers) | Reshuffle | Map(load the task, run the stage function,
  store the result)`; results are read back in task order. Model-bound tasks load their model
  once per worker process (the loader caches it).
- `map_parquet` (the embedding stage's path): `Create(files) | Reshuffle | RunInference(a model
  handler whose model is the stage's batch function, loaded once per worker; one whole file per
  inference call)`.
- global steps (`pipelines.engines.beam_global`): connected components as iterated
  large-star/small-star rounds (GroupByKey per star, CoGroupByKey against the previous edge set to
  count changes, Parquet in and out); k-NN with the trained index as a side input and one element
  per base shard.

Runners: locally an explicit offline runner (default `FnApiRunner`, multi-threaded, `workers`
threads; Beam's own default, Prism, downloads a binary). `--runner DataflowRunner --project P
--region R --temp-location gs://... [--dataflow-service-options worker_accelerator=...]` plus any
Beam pipeline option after a literal `--` run the same pipelines on Google Dataflow.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from pipelines.engines.beam_files import read_blob, write_blob
from pipelines.engines.distributed import BatchFn, WriteFn
from pipelines.engines.isolation import Isolation, retry_alone
from pipelines.engines.local import default_workers

log = logging.getLogger("lvd")

LOCAL_RUNNERS = ("fnapirunner", "directrunner", "bundlebaseddirectrunner", "switchingdirectrunner")


def is_local_runner(runner: str) -> bool:
    name = runner.rsplit(".", 1)[-1].lower()
    return name in LOCAL_RUNNERS or f"{name}runner" in LOCAL_RUNNERS


def pipeline_args(runner: str, workers: int, project: str | None = None, region: str | None = None,
                  temp_location: str | None = None, dataflow_service_options: Sequence[str] = (),
                  beam_args: Sequence[str] = ()) -> list[str]:
    """Beam pipeline options (argv form) for the engine's flags; `beam_args` are passed verbatim."""
    args = [f"--runner={runner}"]
    for flag, value in (("project", project), ("region", region), ("temp_location", temp_location)):
        if value:
            args.append(f"--{flag}={value}")
    args += [f"--dataflow_service_options={opt}" for opt in dataflow_service_options]
    given = {a.split("=", 1)[0] for a in beam_args}
    if is_local_runner(runner):
        defaults = {"--direct_num_workers": str(workers), "--direct_running_mode": "multi_threading"}
        args += [f"{k}={v}" for k, v in defaults.items() if k not in given]
    return args + list(beam_args)


class _RunTask:
    """DoFn body: load task `index` from the scratch folder, run the stage function on it, store
    its pickled result there. (Tasks travel as files, not in the pipeline graph: a Dataflow job
    graph is capped at 10 MB and ingest tasks carry raw image bytes.)"""

    def __init__(self, fn: Callable[..., Any], scratch: str, isolation: Isolation | None = None):
        self.fn, self.scratch, self.isolation = fn, scratch, isolation

    def __call__(self, index: int) -> None:
        task = pickle.loads(read_blob(f"{self.scratch}/task-{index:08d}.pkl"))
        # With an isolation the task runs in a fresh process: a crash or hang there costs a retry
        # item by item, not the bundle (on the local runner, not this very process).
        result = retry_alone(self.fn, self.isolation, task) if self.isolation else self.fn(*task)
        write_blob(f"{self.scratch}/{index:08d}.pkl", pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


class BeamEngine:
    name = "beam"

    def __init__(self, workers: int = 0, progress: bool = True, runner: str | None = None, project: str | None = None,
                 region: str | None = None, temp_location: str | None = None,
                 dataflow_service_options: Sequence[str] = (), beam_args: Sequence[str] = (),
                 rounds_per_pipeline: int = 4):
        self.workers = workers or default_workers()
        self.progress = progress
        self.runner = runner or "FnApiRunner"
        self.local = is_local_runner(self.runner)
        self.args = pipeline_args(self.runner, self.workers, project, region, temp_location,
                                  dataflow_service_options, beam_args)
        if not self.local and not temp_location and not any(a.startswith("--temp_location") for a in beam_args):
            from curation.core.errors import UserError

            raise UserError(f"--runner {self.runner} needs --temp-location (a gs:// path for scratch files)")
        self.rounds_per_pipeline = max(1, rounds_per_pipeline)
        root = temp_location if temp_location and not self.local else None
        self._scratch_root = f"{root.rstrip('/')}/lvd-{uuid.uuid4().hex[:12]}" if root else None
        self._local_tmp: str | None = None
        self._count = 0
        if os.environ.get("LVD_BEAM_WAIT_UNTIL_FINISH") == "0":
            log.warning("LVD_BEAM_WAIT_UNTIL_FINISH=0 is ignored: every stage's pipeline feeds the next one, "
                        "so the driver waits for each to finish")

    # -- pipelines ----------------------------------------------------------------------------
    def options(self, **overrides: Any):
        from apache_beam.options.pipeline_options import PipelineOptions

        return PipelineOptions(self.args, **overrides)

    def pipeline(self, single_worker: bool = False):
        """A new pipeline with this engine's options (one local worker for model-bound work,
        whose model already uses every core)."""
        import apache_beam as beam

        overrides = {"direct_num_workers": 1} if single_worker and self.local else {}
        return beam.Pipeline(options=self.options(**overrides))

    def run(self, pipeline: Any) -> None:
        """Run a built pipeline to completion; a failed pipeline raises."""
        from apache_beam.runners.runner import PipelineState

        result = pipeline.run()
        state = result.wait_until_finish()
        if state not in (None, PipelineState.DONE):
            raise RuntimeError(f"beam pipeline ended in state {state}")

    def scratch(self, kind: str) -> str:
        """A fresh scratch folder for one pipeline's side results."""
        self._count += 1
        if self._scratch_root is None:
            if self._local_tmp is None:
                self._local_tmp = tempfile.mkdtemp(prefix="lvd-beam-")
            path = os.path.join(self._local_tmp, f"{kind}-{self._count:04d}")
            os.makedirs(path, exist_ok=True)
            return path
        return f"{self._scratch_root}/{kind}-{self._count:04d}"

    def discard(self, scratch: str) -> None:
        """Remove one scratch folder once its results are read."""
        from apache_beam.io.filesystems import FileSystems

        try:
            FileSystems.delete([scratch])
        except Exception as exc:  # leftover scratch is harmless; close() tries again
            log.debug("could not remove beam scratch %s: %s", scratch, exc)

    # -- map stages ---------------------------------------------------------------------------
    def map_pipeline(self, fn: Callable[..., Any], count: int, scratch: str, model_bound: bool = False,
                     isolation: Isolation | None = None) -> Any:
        """The (not yet run) pipeline of one `map` call over `count` tasks stored in `scratch`."""
        import apache_beam as beam

        p = self.pipeline(single_worker=model_bound)
        _ = (p | "Tasks" >> beam.Create(range(count), reshuffle=False)
             | "Spread" >> beam.Reshuffle()
             | "Run" >> beam.Map(_RunTask(fn, scratch, isolation)))
        return p

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple], desc: str = "", total: int | None = None,
            model_bound: bool = False, gpu: bool = False, isolation: Isolation | None = None) -> list[Any]:
        """Run `fn(*task)` for every task in one pipeline; results in task order. `gpu` changes
        nothing: Dataflow GPU workers (`worker_accelerator`) see their GPU without asking. With an
        `isolation`, each task runs in a fresh process and is retried item by item if it dies or
        hangs (`pipelines.engines.isolation.retry_alone`)."""
        scratch = self.scratch("map")
        count = 0
        for count, task in enumerate(tasks, start=1):  # stored as they come: never all in memory
            write_blob(f"{scratch}/task-{count - 1:08d}.pkl", pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
        if not count:
            return []
        self.run(self.map_pipeline(fn, count, scratch, model_bound, isolation))
        results = [pickle.loads(read_blob(f"{scratch}/{i:08d}.pkl")) for i in range(count)]
        self.discard(scratch)
        log.info("%s: %d tasks on beam (%s)", desc or "map", count, self.runner)
        return results

    def map_parquet(self, jobs: list[tuple[str, str]], columns: list[str], make_fn: Callable[[], BatchFn],
                    write_fn: WriteFn, desc: str = "") -> list[Any]:
        """Same contract as `RayEngine.map_parquet`, as `Create(files) | RunInference(file handler)`."""
        from pipelines.engines.beam_inference import file_inference_pipeline

        if not jobs:
            return []
        scratch = self.scratch("files")
        p = self.pipeline(single_worker=True)
        file_inference_pipeline(p, jobs, columns, make_fn, write_fn, scratch)
        self.run(p)
        results = [pickle.loads(read_blob(f"{scratch}/{n:08d}.pkl")) for n in range(len(jobs))]
        self.discard(scratch)
        log.info("%s: %d files through RunInference", desc or "map_parquet", len(jobs))
        return results

    # -- global stages ------------------------------------------------------------------------
    def connected_components(self, n: int, src: Any, dst: Any) -> np.ndarray:
        from pipelines.engines.beam_global import beam_components

        labels, rounds = beam_components(self, n, src, dst)
        log.info("components on beam: %d nodes, %d edges, %d star rounds", n, len(src), rounds)
        return labels

    def knn_graph(self, vectors: Any, k: int, threshold: float, cfg: Any) -> Any:
        from pipelines.engines.beam_global import shard_opener
        from pipelines.engines.distributed import sharded_knn_graph

        return sharded_knn_graph(vectors, k, threshold, cfg, shard_opener(self, vectors, cfg), self.workers)

    def cross_graph(self, base: Any, queries: Any, k: int, threshold: float, cfg: Any) -> Any:
        from pipelines.engines.beam_global import shard_opener
        from pipelines.engines.distributed import sharded_cross_graph

        return sharded_cross_graph(base, queries, k, threshold, cfg, shard_opener(self, base, cfg), self.workers)

    def close(self) -> None:
        """Remove this engine's scratch files (local temp dir, or its folder under --temp-location)."""
        if self._local_tmp is not None:
            shutil.rmtree(self._local_tmp, ignore_errors=True)
            self._local_tmp = None
        if self._scratch_root is not None and self._count:
            from apache_beam.io.filesystems import FileSystems

            try:
                FileSystems.delete([self._scratch_root])
            except Exception as exc:  # leftover scratch is harmless; the run's outputs are written
                log.warning("could not remove beam scratch %s: %s", self._scratch_root, exc)


