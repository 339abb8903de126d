"""Float arithmetic whose bytes do not depend on how the work is split.

A BLAS matrix product rounds one row's result differently by the shape of the call it is in
(blocking, microkernel edges) and by the number of BLAS threads; so does FAISS, which calls BLAS.
Engines split work differently (files, base shards, query blocks) and run it in processes with
different thread settings (a Ray worker has one OpenMP/BLAS thread, a local worker all cores), so
the stages that promise the same bytes on every engine use one of two constructions:

- `blockwise`: products over fixed blocks of rows aligned to row 0 of the whole matrix, each on one
  BLAS thread (blocks run in parallel Python threads; results come back in order). Used where the
  whole matrix is at hand in its final order (whitening).
- `pair_dots`: a dot product per (query, candidate) pair as float32 products summed along the
  vector by numpy's pairwise sum, a sequence of operations fixed by the dimension alone: the same
  bytes whatever else is in the call. Used to score the neighbours FAISS finds (any index split,
  CPU or GPU), which `best_first` then orders by (similarity, id); `row_dots` is the same for a
  small projection (the PCA hash's bits).

Across machines (other BLAS kernels, another numpy build, a GPU) the last bit may still differ.
"""
from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

#: Python threads running blocks at once (each block on one BLAS thread).
THREADS = 8
#: Queries whose candidates `pair_dots` multiplies at once (bounds the [chunk, k, d] temporary).
PAIR_CHUNK = 128


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS (numpy's and any other loaded) on one thread inside the block: a product's rounding
    then depends only on its operands' shapes and values, not on the process's thread settings."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def blockwise(fn: Callable[[int], Any], n: int, size: int) -> Iterator[Any]:
    """fn(start) for start = 0, size, 2 size, ... < n, results yielded in that order, every call
    on one BLAS thread; up to `THREADS` calls run at once (numpy releases the GIL), and at most
    that many results wait in memory."""
    starts = range(0, n, size)
    workers = max(1, min(THREADS, os.cpu_count() or 1, len(starts)))
    with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        pending: deque[Any] = deque()
        for s in starts:
            pending.append(pool.submit(fn, s))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def pair_dots(queries: np.ndarray, candidates: Callable[[slice], np.ndarray], k: int) -> np.ndarray:
    """[m, k] float32 dot products of queries [m, d] with their own k candidates each:
    `candidates(rows)` gives the [len(rows), k, d] vectors of a slice of queries ([1, k, d] when
    every query has the same ones), gathered a chunk at a time. Each value is the float32 products
    summed along d by numpy's pairwise sum: a fixed sequence of operations for a given d, whatever
    the chunk, the other candidates or the threads."""
    out = np.empty((len(queries), k), np.float32)
    for s in range(0, len(queries), PAIR_CHUNK):
        rows = slice(s, min(s + PAIR_CHUNK, len(queries)))
        q = np.asarray(queries[rows], np.float32)
        out[rows] = np.multiply(q[:, None, :], np.asarray(candidates(rows), np.float32)).sum(axis=-1)
    return out


def row_dots(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[n, m] dot products of every row of x [n, d] with every row of w [m, d], each one by
    `pair_dots`: a row's values have the same bytes whatever other rows x holds (x @ w.T's do not)."""
    w = np.asarray(w, np.float32)
    return pair_dots(x, lambda rows: w[None], len(w))


def best_first(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of (sims, ids) ordered by similarity, best first, equal similarities by id (so
    neither the order candidates were found in nor the shard they came from shows)."""
    order = np.lexsort((ids, -sims))  # along the last axis: every row on its own
    return np.take_along_axis(sims, order, axis=-1), np.take_along_axis(ids, order, axis=-1)
