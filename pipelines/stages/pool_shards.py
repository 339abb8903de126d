"""The deduplicated pool's vectors, one embedding file at a time, for the `cluster` and `retrieve`
stages: the driver never holds the pool's vectors, only ids and per-file row numbers.

A pool of 1B images is terabytes of embeddings, so these stages fan out over the embedding files
with `engine.map` (Ray tasks, Beam workers, local processes) and bring back small results:

- `PoolShards.plan`: from the image_id columns alone, which rows of which file are the kept
  images (first occurrence of each id, as `embedding.read_unique` takes them) and where each sits
  in the sorted order of kept ids, the order every stage output uses;
- `gather`: a seeded sample of rows (the k-means training sample) read by the workers;
- `assign_all`: every kept vector's nearest centroid, computed next to its file (the centroids
  are a file in the run directory that every worker reads: a side input); `assign_leaves_all`
  the same for the leaves of the `balance` stage's hierarchical k-means (level 1);
- `nearest_all`: the exact top-n pool neighbours of a batch of queries, searched file by file and
  merged (equal similarities by position) a group of files at a time, so the driver holds at most
  one group's candidates.

Each worker only calls the pure functions of `curation.retrieval.clustering` / `curation.retrieval.retrieve`. The
assignment and search tasks are `gpu` tasks: on a Ray cluster with GPUs each asks for one, and
FAISS searches there (`use_gpu="never"` keeps them on CPUs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from curation.retrieval.clustering import UseGpu, assign
from curation.core.ids import as_ids, first_occurrences, id_array, in_sorted
from curation.core.determinism import best_first
from curation.retrieval.retrieve import nearest
from pipelines.context import RunContext
from curation.core.storage import files, load_array, read_parquet

#: Files whose neighbour lists the driver merges at once in `nearest_all`.
MERGE_GROUP = 64


@dataclass(frozen=True)
class FileRows:
    """Kept rows of one embedding file: `rows` (row numbers in the file) and their `positions`
    in the sorted kept ids, both in position order."""

    path: str
    rows: np.ndarray
    positions: np.ndarray


def read_rows(path: str, rows: np.ndarray) -> np.ndarray:
    """float16 vectors of the given rows of one embedding file (on a worker); no rows still have
    the file's width."""
    from embedder.store import META_DIM, file_metadata, table_embeddings

    table = read_parquet(path, columns=["image_id", "embedding"]).take(np.asarray(rows, dtype=np.int64))
    width = file_metadata(path).get(META_DIM)
    return table_embeddings(table, int(width) if width else None)[1]


def _assign_rows(path: str, rows: np.ndarray, centroids_path: str, batch: int, use_gpu: UseGpu
                 ) -> tuple[np.ndarray, np.ndarray]:
    return assign(read_rows(path, rows), load_array(centroids_path, mmap=False), batch, use_gpu=use_gpu)


def load_leaf_model(folder: str) -> Any:
    """The level-1 model the `balance` stage saved in `folder` (coarse.npy, leaves.npy memory-mapped,
    offsets.npy): a worker reads only the leaves of the coarse clusters its rows fall in."""
    from curation.retrieval.balanced_leaves import LeafModel

    base = folder.rstrip("/")
    return LeafModel(np.asarray(load_array(f"{base}/coarse.npy", mmap=False), dtype=np.float32),
                     load_array(f"{base}/leaves.npy"), np.asarray(load_array(f"{base}/offsets.npy", mmap=False)))


def _assign_leaf_rows(path: str, rows: np.ndarray, model_folder: str, batch: int, use_gpu: UseGpu
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from curation.retrieval.balanced_leaves import assign_leaves

    return assign_leaves(read_rows(path, rows), load_leaf_model(model_folder), batch, use_gpu)


def _spill_rows(path: str, rows: np.ndarray, positions: np.ndarray, model_folder: str, spill_dir: str, file_no: int,
                per_bucket: int, batch: int, use_gpu: UseGpu) -> np.ndarray:
    """Assign one file's rows to their coarse cluster and write them (positions, coarse labels,
    float16 vectors) to the spill folder of each bucket of `per_bucket` coarse clusters; returns
    the rows per coarse cluster."""
    from curation.retrieval.balanced_leaves import assign_leaves
    from curation.core.storage import save_npz

    x = read_rows(path, rows)
    model = load_leaf_model(model_folder)
    labels = assign_leaves(x, model, batch, use_gpu)[0]
    buckets = labels // per_bucket
    for b in np.unique(buckets):
        mine = buckets == b
        save_npz(f"{spill_dir}/b{int(b):06d}/f{file_no:06d}.npz", positions=positions[mine], coarse=labels[mine],
                 vectors=x[mine])
    return np.bincount(labels, minlength=len(model.coarse))


def _nearest_rows(path: str, rows: np.ndarray, positions: np.ndarray, queries_path: str, n: int, batch: int,
                  use_gpu: UseGpu) -> tuple[np.ndarray, np.ndarray]:
    """Top-n of one file for every query as (sims, global positions), padded to n columns."""
    queries = load_array(queries_path, mmap=False)
    sims = np.full((len(queries), n), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), n), -1, dtype=np.int64)
    if len(rows):
        got_sims, got = nearest(queries, read_rows(path, rows), n, batch, use_gpu)
        sims[:, :got.shape[1]], ids[:, :got.shape[1]] = got_sims, positions[got]
    return sims, ids


def retrieval_model(ctx: RunContext) -> str | None:
    """The retrieval model when it differs from the dedup model (else the dedup embeddings serve)."""
    dedup = ctx.cfg.dedup_model()
    wanted = ctx.cfg.retrieval.model or ctx.cfg.embed.model
    return None if wanted == dedup else wanted


def pool_embeddings_dir(ctx: RunContext) -> str:
    """The folder of the pool's vectors in the retrieval embedding space."""
    return "embeddings" if retrieval_model(ctx) is None else "retrieval_embeddings"


@dataclass(frozen=True)
class PoolShards:
    """The kept pool images of one embeddings folder, file by file (see module docstring)."""

    ids: np.ndarray  # sorted kept image_ids; position p is ids[p]
    files: list[FileRows]

    @classmethod
    def plan(cls, ctx: RunContext, folder: str, kept: np.ndarray | None = None) -> "PoolShards":
        """Kept rows of every file of `folder`, from their image_id columns; `kept` is sorted ids
        (None: every image)."""
        paths = [str(p) for p in files(ctx.run.path(folder), "part-*.parquet")]
        if not paths:
            raise FileNotFoundError(f"no embedding files under {ctx.run.path(folder)}")
        columns = [id_array(read_parquet(p, columns=["image_id"]).column("image_id")) for p in paths]
        sizes = np.array([len(c) for c in columns], dtype=np.int64)
        all_ids = np.concatenate(columns)
        del columns  # the driver holds the pool's ids: one copy at a time where it can
        ids, first = first_occurrences(all_ids)  # as read_unique takes them
        del all_ids
        if kept is not None:
            keep = in_sorted(ids, np.sort(as_ids(kept)))
            ids, first = ids[keep], first[keep]
        ends = np.cumsum(sizes)
        file_of = np.searchsorted(ends, first, side="right")
        by_file = np.argsort(file_of, kind="stable")  # positions grouped by file, in order inside
        cuts = np.searchsorted(file_of[by_file], np.arange(len(paths) + 1))
        per_file = [FileRows(path, first[by_file[lo:hi]] - (ends[f] - sizes[f]), by_file[lo:hi])
                    for f, (path, lo, hi) in enumerate(zip(paths, cuts[:-1], cuts[1:]))]
        return cls(ids, per_file)

    def __len__(self) -> int:
        return len(self.ids)

    def gather(self, ctx: RunContext, positions: np.ndarray | None) -> np.ndarray:
        """float16 vectors at the given sorted positions (all when None), read on the workers."""
        wanted = np.arange(len(self)) if positions is None else np.asarray(positions, dtype=np.int64)
        tasks, slots = [], []
        for f in self.files:
            at = np.minimum(np.searchsorted(wanted, f.positions), max(len(wanted) - 1, 0))
            hit = wanted[at] == f.positions if len(wanted) else np.zeros(len(f.positions), bool)
            if hit.any():
                tasks.append((f.path, f.rows[hit]))
                slots.append(np.searchsorted(wanted, f.positions[hit]))
        parts = ctx.engine.map(read_rows, tasks, desc="gather vectors", total=len(tasks))
        dim = parts[0].shape[1] if parts else 0
        out = np.empty((len(wanted), dim), dtype=np.float16)
        for slot, part in zip(slots, parts):
            out[slot] = part
        return out

    def assign_all(self, ctx: RunContext, centroids_path: str, batch: int, use_gpu: UseGpu
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, similarities) of every kept vector, in sorted-id order, computed per file
        against the centroids saved at `centroids_path` (in the run directory, read by every worker)."""
        tasks = [(f.path, f.rows, centroids_path, batch, use_gpu) for f in self.files if len(f.rows)]
        parts = ctx.engine.map(_assign_rows, tasks, desc="assign clusters", total=len(tasks), gpu=use_gpu != "never")
        labels = np.empty(len(self), dtype=np.int64)
        sims = np.empty(len(self), dtype=np.float32)
        for f, (lab, sim) in zip([f for f in self.files if len(f.rows)], parts):
            labels[f.positions], sims[f.positions] = lab, sim
        return labels, sims

    def assign_leaves_all(self, ctx: RunContext, model_folder: str, batch: int, use_gpu: UseGpu
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(leaf, squared distance, cosine) of every kept vector in sorted-id order against the
        hierarchical k-means level-1 model saved in `model_folder` (`load_leaf_model`), per file."""
        tasks = [(f.path, f.rows, model_folder, batch, use_gpu) for f in self.files if len(f.rows)]
        parts = ctx.engine.map(_assign_leaf_rows, tasks, desc="assign leaves", total=len(tasks), gpu=use_gpu != "never")
        labels = np.empty(len(self), dtype=np.int64)
        sqd = np.empty(len(self), dtype=np.float32)
        cos = np.empty(len(self), dtype=np.float32)
        for f, (lab, dist, sim) in zip([f for f in self.files if len(f.rows)], parts):
            labels[f.positions], sqd[f.positions], cos[f.positions] = lab, dist, sim
        return labels, sqd, cos

    def spill_by_coarse(self, ctx: RunContext, model_folder: str, spill_dir: str, per_bucket: int, batch: int,
                        use_gpu: UseGpu) -> np.ndarray:
        """Every kept vector written next to the others of its coarse cluster's bucket (a shuffle:
        one task per embedding file, `spill_dir/b<bucket>/f<file>.npz`), for the `balance` stage's
        split tasks; returns the kept images per coarse cluster (the driver holds counts only)."""
        tasks = [(f.path, f.rows, f.positions, model_folder, spill_dir, i, per_bucket, batch, use_gpu)
                 for i, f in enumerate(self.files) if len(f.rows)]
        parts = ctx.engine.map(_spill_rows, tasks, desc="spill by coarse cluster", total=len(tasks), gpu=use_gpu != "never")
        return np.sum(parts, axis=0) if parts else np.zeros(0, np.int64)

    def nearest_all(self, ctx: RunContext, queries_path: str, n: int, batch: int, use_gpu: UseGpu
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-n (sims, positions) over the kept pool of every query saved at `queries_path`
        (a .npy in the run directory), best first, equal similarities by position: each pair is scored on
        its own (`curation.retrieval.retrieve.nearest`), so neither the file split nor the engine shows."""
        n = min(n, len(self))
        acc: tuple[np.ndarray, np.ndarray] | None = None
        for group in _groups([f for f in self.files if len(f.rows)], MERGE_GROUP):
            tasks = [(f.path, f.rows, f.positions, queries_path, n, batch, use_gpu) for f in group]
            parts = ctx.engine.map(_nearest_rows, tasks, desc="nearest pool images", total=len(tasks),
                                   gpu=use_gpu != "never")
            acc = _merge_by_position(([acc] if acc is not None else []) + parts, n)
        if acc is None:
            q = len(load_array(queries_path))
            return np.empty((q, 0), np.float32), np.empty((q, 0), np.int64)
        return acc


def _merge_by_position(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n over per-file (sims, positions) lists: equal similarities by position, as the whole
    matrix orders them (a file's positions are scattered, so file order would show the split)."""
    sims, ids = best_first(np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1))
    return sims[:, :n], ids[:, :n]


def _groups(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
