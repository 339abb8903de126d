"""The Ray engine: the same stage functions as the local engine, scheduled on a Ray cluster.

- `map`: every shard task is a Ray task (retried on failure, `max_retries`); model-bound tasks run
  on a pool of actors that each load the model once (one actor per GPU, `num_gpus=1`, when the
  cluster has GPUs; else actors of `model_cpus` cores), killed when the map ends so their cores
  return to the cluster. Tasks are consumed lazily with a bounded number in flight; results come
  back in task order.
- `map_parquet` (the embedding stage's path): a Ray Data pipeline over Parquet files,
  `from_items(files) -> map_batches(callable class, ActorPoolStrategy, num_gpus=1 on GPU clusters,
  batch_size=1 file)`: each actor loads the model once and runs whole files through it.
- global steps (`pipelines.engines.ray_global`): connected components as union-find over edge
  shards reduced by a merge tree of Ray tasks (rounds logged); k-NN with the index trained once in
  the driver and one Ray actor per base shard (one per GPU when the cluster has GPUs).

Options (`lvd curate --engine ray ...`): `address` (`--ray-address`; `auto` joins the cluster this
node belongs to; default: start a local Ray with `workers` CPUs), `max_retries`, `model_cpus`.
If Ray is already initialised in this process (a test session, a notebook) the engine uses it and
leaves it running on `close`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterable

import numpy as np
from tqdm import tqdm

from pipelines.engines.distributed import BatchFn, WriteFn, run_file_job
from pipelines.engines.isolation import Isolation, retry_alone
from pipelines.engines.local import default_workers

log = logging.getLogger("lvd")


def _call(fn: Callable[..., Any], task: tuple) -> Any:
    """Body of every map task: the stage function on one task."""
    return fn(*task)


class _ModelWorker:
    """An actor for model-bound tasks: the model a stage function loads is cached in this process
    (`embedder.models.load_model`), so each actor loads it once and reuses it for every shard."""

    def run(self, fn: Callable[..., Any], task: tuple) -> Any:
        return fn(*task)


class _FileActor:
    """Ray Data callable class: builds the batch function once per actor (loads the model), then
    runs whole files through it (`distributed.run_file_job`), one file per call. A failed file
    is retried here, `retries` times (jobs are idempotent: outputs are written atomically); Ray
    Data itself restarts actors that die."""

    def __init__(self, make_fn: Callable[[], BatchFn], write_fn: WriteFn, columns: list[str], retries: int):
        self.fn, self.write_fn, self.columns, self.retries = make_fn(), write_fn, columns, retries

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"index": batch["index"],
                "result": np.array([json.dumps(self._job(str(i), str(o))) for i, o in zip(batch["in"], batch["out"])],
                                   dtype=object)}

    def _job(self, in_path: str, out_path: str) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return run_file_job(self.fn, self.write_fn, in_path, out_path, self.columns)
            except Exception as exc:
                if attempt == self.retries:
                    raise
                log.warning("%s failed (%s), retrying", in_path, exc)


class RayEngine:
    name = "ray"

    def __init__(self, workers: int = 0, progress: bool = True, address: str | None = None,
                 max_retries: int = 3, model_cpus: int = 4):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            local = address in (None, "", "local")
            ray.init(address=None if local else address, num_cpus=(workers or default_workers()) if local else None,
                     include_dashboard=False, logging_level=logging.WARNING)
        resources = ray.cluster_resources()
        self.cpus = max(1, int(resources.get("CPU", 1)))
        self.gpus = int(resources.get("GPU", 0))
        self.workers = min(workers, self.cpus) if workers else self.cpus
        self.progress = progress
        self.max_retries = max_retries
        self.model_cpus = max(1, min(model_cpus, self.workers))
        log.info("ray engine: %d CPUs, %d GPUs, %d workers", self.cpus, self.gpus, self.workers)

    # -- map stages ---------------------------------------------------------------------------
    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple], desc: str = "", total: int | None = None,
            model_bound: bool = False, gpu: bool = False, isolation: Isolation | None = None) -> list[Any]:
        """Run `fn(*task)` for every task on the cluster; results in task order. `gpu` tasks ask
        for a GPU each when the cluster has GPUs (Ray hides the GPUs a task did not ask for).

        Ray retries a task whose worker or node died (`max_retries`). With an `isolation`, a task
        that still fails that way, or outlives its deadline (then cancelled), is retried alone and
        then item by item in fresh processes, as a Ray task of its own (`isolation.retry_alone`)."""
        import ray

        bar = tqdm(total=total, desc=desc, unit="shard", disable=not self.progress, leave=False)
        try:
            if model_bound:
                return self._map_actors(fn, tasks, bar)
            remote = ray.remote(_call).options(max_retries=self.max_retries, retry_exceptions=True,
                                               **self.task_resources(gpu))
            fn_ref = ray.put(fn)
            recover = None
            if isolation is not None:
                alone = ray.remote(retry_alone).options(max_retries=self.max_retries, **self.task_resources(gpu))
                recover = lambda task, hung: ray.get(alone.remote(fn_ref, isolation, task, hung))  # noqa: E731
            return _ordered((lambda task: remote.remote(fn_ref, task)), tasks, self.workers * 2, bar,
                            recover=recover, deadline=isolation.deadline if isolation else None)
        finally:
            bar.close()

    def prune_caches(self) -> int:
        """`storage.prune_cache` once on every alive node (worker hosts keep copies of a stage's
        scratch arrays after the driver removed them); the copies deleted in all."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from curation.core.storage import prune_cache

        remote = ray.remote(prune_cache)
        refs = [remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
                for node in ray.nodes() if node.get("Alive")]
        return int(sum(ray.get(refs)))

    def task_resources(self, gpu: bool = False) -> dict[str, Any]:
        """Resources of one map task: a CPU, and a GPU for a `gpu` task on a cluster with GPUs."""
        return {"num_cpus": 1, "num_gpus": 1} if gpu and self.gpus else {"num_cpus": 1}

    def _model_actors(self) -> tuple[int, dict[str, Any]]:
        """(count, resources of each) of a model actor pool: one per GPU, else one per `model_cpus` cores."""
        if self.gpus:
            return self.gpus, {"num_gpus": 1, "num_cpus": 1}
        return max(1, self.workers // self.model_cpus), {"num_cpus": self.model_cpus}

    def _map_actors(self, fn: Callable[..., Any], tasks: Iterable[tuple], bar: tqdm) -> list[Any]:
        """Model-bound tasks on a fresh actor pool (one task per actor at a time), killed at the end."""
        import ray

        count, resources = self._model_actors()
        cls = ray.remote(_ModelWorker).options(max_restarts=self.max_retries, max_task_retries=self.max_retries,
                                               **resources)
        actors = [cls.remote() for _ in range(count)]
        idle = list(actors)
        busy: dict[Any, Any] = {}  # ref -> actor running it
        fn_ref = ray.put(fn)

        def submit(task: tuple) -> Any:
            actor = idle.pop()  # `_ordered` keeps fewer tasks in flight than there are actors
            ref = actor.run.options(retry_exceptions=True).remote(fn_ref, task)
            busy[ref] = actor
            return ref

        try:
            return _ordered(submit, tasks, count, bar, on_done=lambda ref: idle.append(busy.pop(ref)))
        finally:
            for actor in actors:
                ray.kill(actor)

    def map_parquet(self, jobs: list[tuple[str, str]], columns: list[str], make_fn: Callable[[], BatchFn],
                    write_fn: WriteFn, desc: str = "") -> list[Any]:
        """A Ray Data pipeline over Parquet files (`distributed.run_file_job` per (in, out) job):
        `from_items(jobs) -> map_batches(file actor, batch_size=1, ActorPoolStrategy, num_gpus)`.

        `make_fn()` runs once per actor (it loads the model: one actor per GPU, else per
        `model_cpus` cores); each call runs one whole file through it, so the batches the model
        sees inside a file are the ones the local engine's per-shard task makes (same bytes).
        Results (JSON-able) come back in job order.
        """
        import ray.data

        if not jobs:
            return []
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.progress
        context.enable_operator_progress_bars = self.progress
        if not self.progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        count, resources = self._model_actors()
        items = [{"index": n, "in": i, "out": o} for n, (i, o) in enumerate(jobs)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(_FileActor, fn_constructor_args=(make_fn, write_fn, columns, self.max_retries),
                            batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=min(count, len(jobs))), **resources)
        results = {int(r["index"]): json.loads(r["result"]) for r in ds.take_all()}
        log.info("%s: %d files through Ray Data", desc or "map_parquet", len(jobs))
        return [results[n] for n in range(len(jobs))]

    # -- global stages ------------------------------------------------------------------------
    def connected_components(self, n: int, src: Any, dst: Any) -> np.ndarray:
        from pipelines.engines.ray_global import ray_components

        labels, rounds = ray_components(n, src, dst, shards=self.workers * 2, max_retries=self.max_retries)
        log.info("components on ray: %d nodes, %d edges, %d merge rounds", n, len(src), rounds)
        return labels

    def _knn_shards(self, cfg: Any) -> int:
        """Base shards of a k-NN step: one per GPU when they search on GPUs, else one per worker."""
        return self.gpus if self.gpus and (cfg is None or cfg.use_gpu == "auto") else self.workers

    def knn_graph(self, vectors: Any, k: int, threshold: float, cfg: Any) -> Any:
        from pipelines.engines.distributed import sharded_knn_graph
        from pipelines.engines.ray_global import shard_opener

        opener = shard_opener(vectors, cfg, self.gpus, self.max_retries)
        return sharded_knn_graph(vectors, k, threshold, cfg, opener, self._knn_shards(cfg))

    def cross_graph(self, base: Any, queries: Any, k: int, threshold: float, cfg: Any) -> Any:
        from pipelines.engines.distributed import sharded_cross_graph
        from pipelines.engines.ray_global import shard_opener

        opener = shard_opener(base, cfg, self.gpus, self.max_retries)
        return sharded_cross_graph(base, queries, k, threshold, cfg, opener, self._knn_shards(cfg))

    def close(self) -> None:
        import ray

        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


def _lost_task_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose worker, node or result was lost, or that was cancelled."""
    import ray.exceptions as rex

    return (rex.WorkerCrashedError, rex.TaskCancelledError, rex.NodeDiedError, rex.ObjectLostError,
            rex.OutOfMemoryError, rex.LocalRayletDiedError)


def _ordered(submit: Callable[[tuple], Any], tasks: Iterable[tuple], limit: int, bar: tqdm,
             on_done: Callable[[Any], None] | None = None, recover: Callable[[tuple, bool], Any] | None = None,
             deadline: Callable[[tuple], float] | None = None) -> list[Any]:
    """Submit tasks lazily (at most `limit` in flight) and return their results in task order.

    With `recover`, a task lost to a crash (after Ray's own retries) or past its `deadline`
    (seconds; then force-cancelled) gets `recover(task, hung)` as its result instead of an error."""
    import ray

    results: dict[int, Any] = {}
    in_flight: dict[Any, tuple[int, tuple | None, float]] = {}
    lost = _lost_task_errors()

    def drain(keep: int) -> None:
        while len(in_flight) > keep:
            soonest = min((d for _, _, d in in_flight.values() if d != -math.inf), default=math.inf)
            timeout = None if soonest == math.inf else max(0.0, soonest - time.monotonic())
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
            if not done:
                for ref, (_, _, due) in in_flight.items():
                    if -math.inf < due <= time.monotonic():
                        log.warning("a task outlived its deadline: cancelling it")
                        ray.cancel(ref, force=True)
                        in_flight[ref] = (in_flight[ref][0], in_flight[ref][1], -math.inf)  # hung
                continue
            for ref in done:
                i, task, due = in_flight.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except lost as exc:
                    if recover is None or task is None:
                        raise
                    log.warning("task %d lost (%s): retrying it alone, then item by item", i, type(exc).__name__)
                    results[i] = recover(task, due == -math.inf)
                if on_done:
                    on_done(ref)
                bar.update(1)

    for i, task in enumerate(tasks):
        drain(keep=limit - 1)
        due = time.monotonic() + deadline(task) if deadline else math.inf
        in_flight[submit(task)] = (i, task if recover else None, due)
    drain(keep=0)
    return [results[i] for i in range(len(results))]
