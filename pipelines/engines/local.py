"""The local engine: shard tasks in a process pool on one machine, results in task order."""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable

from tqdm import tqdm


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class LocalEngine:
    name = "local"

    def __init__(self, workers: int = 0, progress: bool = True):
        self.workers = workers or default_workers()
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers never inherit the parent's threads (tqdm, pyarrow, torch).
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"))
        return self._pool

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple], desc: str = "", total: int | None = None,
            model_bound: bool = False, gpu: bool = False) -> list[Any]:
        """Run `fn(*task)` for every task; in-process when there is one worker.

        Tasks are consumed lazily with a bounded number in flight, so a stream of large tasks
        (raw image bytes) never sits in memory all at once. `model_bound` tasks (a model loaded
        once, multi-threaded inference) run in this process: one model, all cores for torch.
        `gpu` changes nothing here: worker processes see the machine's GPUs without asking.
        """
        bar = tqdm(total=total, desc=desc, unit="shard", disable=not self.progress, leave=False)
        results: dict[int, Any] = {}
        try:
            if self.workers == 1 or model_bound:
                for i, task in enumerate(tasks):
                    results[i] = fn(*task)
                    bar.update(1)
                return [results[i] for i in range(len(results))]
            pool = self._executor()
            in_flight: dict[Future, int] = {}
            limit = self.workers * 2
            for i, task in enumerate(tasks):
                in_flight[pool.submit(fn, *task)] = i
                while len(in_flight) >= limit:
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        results[in_flight.pop(fut)] = fut.result()
                        bar.update(1)
            for fut in list(in_flight):
                results[in_flight.pop(fut)] = fut.result()
                bar.update(1)
            return [results[i] for i in range(len(results))]
        finally:
            bar.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # Global steps. The local engine calls the one-machine stage functions; distributed engines
    # override these with sharded versions of the same algorithms (same answers).
    def connected_components(self, n: int, src: Any, dst: Any) -> Any:
        from curation.graph import connected_components

        return connected_components(n, src, dst)

    def knn_edges(self, vectors: Any, k: int, threshold: float, cfg: Any) -> tuple:
        from curation.knn import knn_edges

        return knn_edges(vectors, k, threshold, cfg)

    def cross_edges(self, base: Any, queries: Any, k: int, threshold: float, cfg: Any) -> tuple:
        from curation.knn import cross_edges

        return cross_edges(base, queries, k, threshold, cfg)

