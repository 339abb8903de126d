"""Global steps as Beam pipelines: connected components by star rounds, k-NN by base shards.

Components (Kiveris et al. 2014, the rounds of `curation.dedup.graph.star_components` written as
shuffles): edges are undirected pairs (hi, lo), hi > lo. A large star groups each node with all
its neighbours and links every LARGER neighbour to the group's minimum; a small star groups each
node with its smaller neighbours and links them and itself to their minimum. After each
large+small round a CoGroupByKey against the previous edge set gives the next (distinct) set and
the number of edges that changed; at zero the edges are (node, component minimum) and the labels
read off directly, the same as `curation.dedup.graph.connected_components`. Several rounds are unrolled
per pipeline (`rounds_per_pipeline`); edges enter and leave as Parquet (Beam's Parquet transforms).

k-NN: the index trained by the driver is a side input; each base shard is one element whose
worker adds its rows to a copy and searches the queries at every nprobe asked
(`distributed.fill_shard`, `search_filled`): one pipeline for the nprobe calibration ladder,
one for the full search.
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import KnnConfig
from pipelines.engines.beam_files import copy_file, read_blob, save_array, write_blob
from pipelines.engines.distributed import (
    OpenShards,
    fill_shard,
    labels_from_pairs,
    memmap_file,
    merge_in_order,
    search_filled,
)
from curation.core.storage import is_url, load_array, load_rows, npz_arrays

if TYPE_CHECKING:
    from pipelines.engines.beam_engine import BeamEngine

log = logging.getLogger("lvd")

EDGE_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64())])
COUNT_SCHEMA = pa.schema([("round", pa.int64()), ("changes", pa.int64())])
Edge = tuple[int, int]


def large_star_at(node: int, neighbours: Iterable[int]) -> list[Edge]:
    """Large star at one node: each larger neighbour -> min(node, neighbours), as (hi, lo)."""
    ns = set(neighbours)
    m = min(min(ns), node)
    return [(v, m) for v in ns if v > node]


def small_star_at(node: int, smaller: Iterable[int]) -> list[Edge]:
    """Small star at one node: its smaller neighbours and itself -> their minimum, as (hi, lo)."""
    ns = set(smaller)
    m = min(ns)
    return [(v, m) for v in ns if v != m] + [(node, m)]


def _both_ways(edge: Edge) -> list[Edge]:
    return [edge, (edge[1], edge[0])]


def _present(values: Iterable[Any]) -> bool:
    return any(True for _ in values)


def _round(edges: Any, r: int) -> tuple[Any, Any]:
    """One large+small round: (next distinct edge set, number of edges that changed)."""
    import apache_beam as beam

    large = (edges | f"R{r}Both" >> beam.FlatMap(_both_ways)
             | f"R{r}Large" >> beam.GroupByKey()
             | f"R{r}LargeStar" >> beam.FlatMapTuple(large_star_at))
    small = (large | f"R{r}Small" >> beam.GroupByKey()
             | f"R{r}SmallStar" >> beam.FlatMapTuple(small_star_at))
    joined = ({"old": edges | f"R{r}KeyOld" >> beam.Map(lambda e: (e, 1)),
               "new": small | f"R{r}KeyNew" >> beam.Map(lambda e: (e, 1))}
              | f"R{r}Compare" >> beam.CoGroupByKey())
    nxt = joined | f"R{r}Next" >> beam.FlatMapTuple(lambda e, sides: [e] if _present(sides["new"]) else [])
    changed = (joined | f"R{r}Changed" >> beam.MapTuple(lambda e, sides: int(_present(sides["old"]) != _present(sides["new"])))
               | f"R{r}Count" >> beam.CombineGlobally(sum))
    return nxt, changed


def star_pipeline(p: Any, edges_path: str, out_dir: str, first_round: int, rounds: int) -> None:
    """Read edges, run `rounds` star rounds, write the last edge set and each round's change count."""
    import apache_beam as beam
    from apache_beam.io.parquetio import ReadFromParquet, WriteToParquet

    edges = (p | "Read" >> ReadFromParquet(edges_path, validate=False)
             | "Pairs" >> beam.Map(lambda row: (max(row["u"], row["v"]), min(row["u"], row["v"])))
             | "NoLoops" >> beam.Filter(lambda e: e[0] != e[1])
             | "Distinct" >> beam.Distinct())
    counts = []
    for r in range(first_round, first_round + rounds):
        edges, changed = _round(edges, r)
        counts.append(changed | f"R{r}Row" >> beam.Map(lambda c, r=r: {"round": r, "changes": c}))
    _ = counts | "Counts" >> beam.Flatten() | "WriteCounts" >> WriteToParquet(f"{out_dir}/counts", COUNT_SCHEMA)
    _ = (edges | "Rows" >> beam.MapTuple(lambda u, v: {"u": u, "v": v})
         | "WriteEdges" >> WriteToParquet(f"{out_dir}/edges", EDGE_SCHEMA))


def _read_parquet_files(prefix: str, schema: pa.Schema) -> pa.Table:
    from apache_beam.io.filesystems import FileSystems

    paths = sorted(m.path for r in FileSystems.match([f"{prefix}*"]) for m in r.metadata_list)
    tables = [pq.read_table(io.BytesIO(read_blob(p))) for p in paths]
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def _write_edges(path: str, u: np.ndarray, v: np.ndarray) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"u": pa.array(u, pa.int64()), "v": pa.array(v, pa.int64())}, schema=EDGE_SCHEMA), buf)
    write_blob(path, buf.getvalue())


def beam_components(engine: "BeamEngine", n: int, src: np.ndarray, dst: np.ndarray,
                    max_rounds: int = 100) -> tuple[np.ndarray, int]:
    """(labels of nodes 0..n-1, rounds): star rounds until a round changes nothing."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    scratch = engine.scratch("components")
    edges_path = f"{scratch}/edges-0000.parquet"
    _write_edges(edges_path, src, dst)
    done = 0
    while done < max_rounds:
        out_dir = f"{scratch}/rounds-{done:04d}"
        p = engine.pipeline()
        star_pipeline(p, edges_path, out_dir, done + 1, engine.rounds_per_pipeline)
        engine.run(p)
        counts = _read_parquet_files(f"{out_dir}/counts", COUNT_SCHEMA).sort_by("round").to_pydict()
        log.debug("components: star rounds %s changed %s edges", counts["round"], counts["changes"])
        edges_path = f"{out_dir}/edges*"
        stable = [r for r, c in zip(counts["round"], counts["changes"]) if c == 0]
        if stable:
            final = _read_parquet_files(f"{out_dir}/edges", EDGE_SCHEMA)
            engine.discard(scratch)
            labels = labels_from_pairs(n, final.column("u").to_numpy(), final.column("v").to_numpy())
            return labels, int(stable[0])
        done += engine.rounds_per_pipeline
    raise RuntimeError(f"star rounds did not converge in {max_rounds} rounds")


class _SearchShard:
    """DoFn body: one base shard added to a copy of the trained index (a side input), the queries
    searched at every nprobe asked; the shard's results go to a scratch file."""

    def __init__(self, base_path: str, query_path: str, fetch: int, nprobes: Sequence[int | None], cfg: KnnConfig,
                 out_dir: str):
        self.base_path, self.query_path, self.out_dir = base_path, query_path, out_dir
        self.fetch, self.nprobes, self.cfg = fetch, list(nprobes), cfg

    def __call__(self, element: tuple[int, tuple[int, int]], index_bytes: np.ndarray) -> None:
        shard, (lo, hi) = element
        index = fill_shard(index_bytes, np.asarray(load_rows(self.base_path, lo, hi)), self.cfg)
        found = search_filled(index, np.asarray(load_array(self.query_path)), self.fetch, self.nprobes, lo, self.cfg)
        buf = io.BytesIO()
        np.savez(buf, **{f"{kind}{j}": part[i] for j, part in enumerate(found) for i, kind in enumerate(("sims", "ids"))})
        write_blob(f"{self.out_dir}/shard-{shard:05d}.npz", buf.getvalue())


QUERY_BLOCK = 1 << 22


class BeamShards:
    """`distributed.ShardedIndex` on Beam: every search is one pipeline, one element per base
    shard (filled on its worker), the trained index a side input."""

    def __init__(self, engine: "BeamEngine", scratch: str, base_path: str, index_bytes: np.ndarray,
                 bounds: list[tuple[int, int]], cfg: KnnConfig):
        self.engine, self.home, self.base_path, self.bounds, self.cfg = engine, scratch, base_path, bounds, cfg
        # Queries per pipeline: bounds the driver's candidate lists (4M x k=64 x 12 B = 3 GiB)
        # while keeping pipeline launches (seconds locally, minutes on Dataflow) few.
        self.query_block = QUERY_BLOCK
        self.index_path = f"{scratch}/index.faiss"
        write_blob(self.index_path, np.asarray(index_bytes, np.uint8).tobytes())

    def search(self, queries: np.ndarray, fetch: int, nprobes: Sequence[int | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        import apache_beam as beam

        scratch = self.engine.scratch("knn")
        query_path = f"{scratch}/queries.npy"
        save_array(query_path, queries)
        p = self.engine.pipeline()
        # The trained index reaches the workers as a side input read from scratch (not inlined in
        # the graph, which Dataflow caps at 10 MB).
        index = beam.pvalue.AsSingleton(p | "IndexFile" >> beam.Create([self.index_path], reshuffle=False)
                                        | "Index" >> beam.Map(lambda path: np.frombuffer(read_blob(path), np.uint8)))
        _ = (p | "Shards" >> beam.Create(list(enumerate(self.bounds)), reshuffle=False)
             | "Spread" >> beam.Reshuffle()
             | "Search" >> beam.Map(_SearchShard(self.base_path, query_path, fetch, nprobes, self.cfg, scratch), index))
        self.engine.run(p)
        parts = []
        for shard in range(len(self.bounds)):
            z = npz_arrays(read_blob(f"{scratch}/shard-{shard:05d}.npz"))
            parts.append([(z[f"sims{j}"], z[f"ids{j}"]) for j in range(len(nprobes))])
        self.engine.discard(scratch)
        return [merge_in_order([shard[j] for shard in parts], fetch) for j in range(len(nprobes))]

    def close(self) -> None:
        self.engine.discard(self.home)


def shard_opener(engine: "BeamEngine", base: np.ndarray, cfg: KnnConfig | None) -> OpenShards:
    """`distributed.OpenShards` on Beam: the workers read the base from a file: the run
    directory's own when it is on an object store, else a copy in the engine's scratch space (a
    memory-mapped base file is copied there in chunks, never read into memory whole)."""
    cfg = cfg or KnnConfig()
    scratch = engine.scratch("knn-base")
    source = memmap_file(base)
    base_path = source if source is not None and is_url(source) else f"{scratch}/base.npy"
    if source is None:
        save_array(base_path, base)
    elif base_path != source:
        copy_file(source, base_path)
    return lambda index_bytes, bounds: BeamShards(engine, scratch, base_path, index_bytes, bounds, cfg)
