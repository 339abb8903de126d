"""The local engine: shard tasks in a process pool on one machine, results in task order."""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

from tqdm import tqdm

from pipelines.engines.isolation import Isolation, retry_alone

log = logging.getLogger("lvd")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def exit_with_driver(driver: int) -> None:
    """Worker initializer: a thread that ends this worker once the driver process is gone. A driver
    killed alone (SIGKILL, an OOM kill) would otherwise leave its workers and the forkserver idle
    forever: each holds the other's pipes open, so neither ever reads an end of file."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(driver, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # the pid now belongs to another user's process: ours is gone
                os._exit(1)

    threading.Thread(target=watch, name="lvd-driver-watch", daemon=True).start()


class LocalEngine:
    name = "local"

    def __init__(self, workers: int = 0, progress: bool = True):
        self.workers = workers or default_workers()
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers never inherit the parent's threads (tqdm, pyarrow, torch).
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"),
                                             initializer=exit_with_driver, initargs=(os.getpid(),))
        return self._pool

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple], desc: str = "", total: int | None = None,
            model_bound: bool = False, gpu: bool = False, isolation: Isolation | None = None) -> list[Any]:
        """Run `fn(*task)` for every task; in-process when there is one worker.

        Tasks are consumed lazily with a bounded number in flight, so a stream of large tasks
        (raw image bytes) never sits in memory all at once. `model_bound` tasks (a model loaded
        once, multi-threaded inference) run in this process: one model, all cores for torch.
        `gpu` changes nothing here: worker processes see the machine's GPUs without asking.
        With an `isolation`, tasks always run in worker processes under a deadline: when a worker
        dies or a task outlives its deadline, the pool is replaced and every task it held is
        retried alone, then item by item (`pipelines.engines.isolation`).
        """
        bar = tqdm(total=total, desc=desc, unit="shard", disable=not self.progress, leave=False)
        results: dict[int, Any] = {}
        try:
            if (self.workers == 1 or model_bound) and isolation is None:
                for i, task in enumerate(tasks):
                    results[i] = fn(*task)
                    bar.update(1)
                return [results[i] for i in range(len(results))]
            in_flight: dict[Future, tuple[int, tuple, float]] = {}
            limit = self.workers * 2
            for i, task in enumerate(tasks):
                deadline = time.monotonic() + isolation.deadline(task) if isolation else math.inf
                in_flight[self._executor().submit(fn, *task)] = (i, task, deadline)
                while len(in_flight) >= limit:
                    self._collect(fn, in_flight, results, bar, isolation)
            while in_flight:
                self._collect(fn, in_flight, results, bar, isolation)
            return [results[i] for i in range(len(results))]
        finally:
            bar.close()

    def _collect(self, fn: Callable[..., Any], in_flight: dict[Future, tuple[int, tuple, float]],
                 results: dict[int, Any], bar: tqdm, isolation: Isolation | None) -> None:
        """Wait for at least one task to finish (or for the pool to break, or a deadline to pass)."""
        soonest = min(d for _, _, d in in_flight.values())
        done, _ = wait(in_flight, timeout=None if soonest == math.inf else max(0.0, soonest - time.monotonic()),
                       return_when=FIRST_COMPLETED)
        broken = not done  # a deadline passed: the pool's workers are killed below
        for fut in done:
            try:
                results[in_flight[fut][0]] = fut.result()
            except BrokenProcessPool:
                if isolation is None:
                    raise
                broken = True
                continue
            del in_flight[fut]
            bar.update(1)
        if not broken:
            return
        log.warning("a worker process died or hung: retrying the %d tasks it held, alone", len(in_flight))
        now = time.monotonic()
        self._kill_pool()
        for fut, (i, task, due) in sorted(in_flight.items(), key=lambda entry: entry[1][0]):
            finished = fut.done() and not fut.cancelled() and fut.exception() is None
            results[i] = fut.result() if finished else retry_alone(fn, isolation, task, hung=due <= now)
            bar.update(1)
        in_flight.clear()

    def _kill_pool(self) -> None:
        """Kill the pool's workers (a hung task cannot be cancelled) and forget the pool."""
        if self._pool is None:
            return
        for proc in list(getattr(self._pool, "_processes", {}).values()):
            proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # Global steps. The local engine calls the one-machine stage functions; distributed engines
    # override these with sharded versions of the same algorithms (same answers).
    def connected_components(self, n: int, src: Any, dst: Any) -> Any:
        from curation.dedup.graph import connected_components

        return connected_components(n, src, dst)

    def knn_graph(self, vectors: Any, k: int, threshold: float, cfg: Any) -> Any:
        from curation.dedup.knn import knn_graph

        return knn_graph(vectors, k, threshold, cfg)

    def cross_graph(self, base: Any, queries: Any, k: int, threshold: float, cfg: Any) -> Any:
        from curation.dedup.knn import cross_graph

        return cross_graph(base, queries, k, threshold, cfg)

