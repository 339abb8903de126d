"""Engines move data and schedule the stage functions; they hold no stage logic.

Every engine offers `map(fn, tasks, desc)`: run a top-level function over shard tasks and return
the results in task order. Stages are written against this one method (plus the optional
engine-specific fast paths a later engine may add), so the same stage code runs everywhere.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from pipelines.engines.isolation import Isolation


class Engine(Protocol):
    name: str

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple], desc: str = "", total: int | None = None,
            model_bound: bool = False, gpu: bool = False, isolation: Isolation | None = None) -> list[Any]: ...
    # `gpu`: the tasks use a GPU when their worker has one (FAISS exact search); an engine whose
    # workers only see a GPU they ask for (Ray) asks for one per task when the cluster has GPUs.
    # `isolation`: how to retry a task item by item when its worker dies or hangs (map stages that
    # hand items to third-party decoders; `pipelines.engines.isolation`): a lost item becomes a
    # reject, the task's other items are kept.

    def connected_components(self, n: int, src: Any, dst: Any) -> Any: ...

    def knn_graph(self, vectors: Any, k: int, threshold: float, cfg: Any) -> Any: ...

    def cross_graph(self, base: Any, queries: Any, k: int, threshold: float, cfg: Any) -> Any: ...

    # Optional: `prune_caches()` — after each stage of a run on an object store, every host deletes
    # its cached copies of objects that are gone (engines with remote worker hosts: Ray); without
    # it `storage.prune_cache` runs on this host, where the local and Beam (FnApiRunner) workers run.
    # Optional: `map_parquet(...)` — a distributed engine's native file-to-file map (Ray Data actor
    # pool, Beam RunInference) that the embedding stage uses when present (see ray_engine.py).

    def close(self) -> None: ...


def make_engine(name: str, workers: int = 0, **options: Any) -> Engine:
    """Build an engine by name: local (process pool), ray or beam."""
    from curation.core.errors import UserError

    if name == "local":
        from pipelines.engines.local import LocalEngine

        return LocalEngine(workers, progress=options.get("progress", True))
    if name == "ray":
        from pipelines.engines.ray_engine import RayEngine

        return RayEngine(workers, **options)
    if name == "beam":
        from pipelines.engines.beam_engine import BeamEngine

        return BeamEngine(workers, **options)
    raise UserError(f"unknown engine {name!r} (local, ray or beam)")


def prune_caches(engine: Engine) -> int:
    """After a stage of a run on an object store: the engine's `prune_caches` (every host of a
    cluster), else `storage.prune_cache` on this host; the cached copies deleted."""
    from curation.core.storage import prune_cache

    return getattr(engine, "prune_caches", prune_cache)()
