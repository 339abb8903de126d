"""Global steps on Ray: connected components by a merge tree, k-NN by base shards.

Both only schedule functions of `curation.dedup.graph` / `curation.dedup.knn` (through
`pipelines.engines.distributed`); the answers are those of the local engine.

Components: the edge list is cut into shards, each shard is solved by union-find in its own task
(`curation.dedup.graph.local_components`), and the (node, label) results are merged pairwise, level by
level (`merge_components`, associative), until one remains: 1 + ceil(log2(shards)) rounds, logged.
Labels are the smallest node id of each component, exactly as `connected_components` gives them.

k-NN: the driver trains the index on the seeded sample once; each base shard is one Ray actor that
reads its rows (from the memory-mapped base file when there is one) and adds them to a copy of the
trained index (on a GPU when the cluster has one) and answers the
searches of the step (the nprobe calibration sample, then every query); the driver merges the
shard results in shard order.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from curation.config import KnnConfig
from curation.dedup.graph import local_components, merge_components
from pipelines.engines.distributed import (
    OpenShards,
    edge_chunks,
    fill_shard,
    labels_from_pairs,
    memmap_file,
    merge_in_order,
    search_filled,
)
from curation.core.storage import load_rows

log = logging.getLogger("lvd")


def _merge(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return merge_components(list(parts))


def ray_components(n: int, src: np.ndarray, dst: np.ndarray, shards: int, fan_in: int = 2,
                   max_retries: int = 3) -> tuple[np.ndarray, int]:
    """(labels of nodes 0..n-1, rounds): union-find per edge shard, then a merge tree of Ray tasks."""
    import ray

    if fan_in < 2:
        raise ValueError("fan_in must be at least 2")
    opts = dict(max_retries=max_retries, retry_exceptions=True, num_cpus=1)
    solve = ray.remote(local_components).options(**opts)
    merge = ray.remote(_merge).options(**opts)
    level = [solve.remote(s, d) for s, d in edge_chunks(src, dst, shards)]
    rounds = 1
    while len(level) > 1:
        level = [merge.remote(*level[i:i + fan_in]) for i in range(0, len(level), fan_in)]
        rounds += 1
        log.debug("components: merge round %d, %d parts", rounds, len(level))
    nodes, labels = ray.get(level[0])
    return labels_from_pairs(n, nodes, labels), rounds


class _ShardActor:
    """One base shard in a copy of the trained index, held for the searches of one k-NN step."""

    def __init__(self, index_bytes: np.ndarray, base: np.ndarray | str, lo: int, hi: int, cfg: KnnConfig):
        rows = load_rows(base, lo, hi) if isinstance(base, str) else base[lo:hi]
        self.index, self.lo, self.cfg = fill_shard(index_bytes, rows, cfg), lo, cfg

    def search(self, queries: np.ndarray, fetch: int, nprobes: Sequence[int | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        return search_filled(self.index, queries, fetch, nprobes, self.lo, self.cfg)


class RayShards:
    """`distributed.ShardedIndex` on Ray: one actor per base shard (one GPU each when asked)."""

    def __init__(self, index_bytes: np.ndarray, bounds: list[tuple[int, int]], base_ref: Any, cfg: KnnConfig,
                 resources: dict[str, Any], max_retries: int):
        import ray

        cls = ray.remote(_ShardActor).options(max_restarts=max_retries, max_task_retries=max_retries, **resources)
        index_ref = ray.put(index_bytes)
        self.actors = [cls.remote(index_ref, base_ref, lo, hi, cfg) for lo, hi in bounds]
        self.query_block = 4 * cfg.batch_size  # the driver holds one block's candidates at a time

    def search(self, queries: np.ndarray, fetch: int, nprobes: Sequence[int | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        import ray

        query_ref = ray.put(np.asarray(queries))
        per_shard = ray.get([actor.search.remote(query_ref, fetch, list(nprobes)) for actor in self.actors])
        return [merge_in_order([shard[j] for shard in per_shard], fetch) for j in range(len(nprobes))]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def shard_opener(base: np.ndarray, cfg: KnnConfig | None, gpus: int, max_retries: int = 3) -> OpenShards:
    """`distributed.OpenShards` on Ray: a memory-mapped base (the k-NN stages' `_work/knn/*.npy`,
    on the run directory every node mounts or on an object store) is opened by each shard actor,
    which reads only its rows; any other array goes to Ray's object store once. Each shard actor
    takes one GPU when the cluster has GPUs (and the config allows them), else one CPU."""
    import ray

    cfg = cfg or KnnConfig()
    resources: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if gpus and cfg.use_gpu == "auto" else {"num_cpus": 1}
    base_ref = memmap_file(base) or ray.put(np.asarray(base))
    return lambda index_bytes, bounds: RayShards(index_bytes, bounds, base_ref, cfg, resources, max_retries)
