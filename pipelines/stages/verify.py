"""Stage `verify`: pixel verification of the dedup graphs' candidate pairs (`curation.dedup.verify`)
into `RUN/dedup/verified.parquet`, which `components` then uses instead of the raw k-NN edges.

Hash pairs that are not also k-NN candidates go first (graph `hash`, `curation.dedup.verify.hash_only`;
`components` drops the hash edges checked here that fail). Self pairs (k-NN edges) follow, by score
(best first, ties by ids), in rounds of `dedup.verify.round_pairs`, checked by engine tasks of
`task_pairs` pairs. With `dedup.verify.min_overlap` and `min_linkage` 0 (components that neither keep
parts of one image apart nor split on failed checks), a round's pairs whose images the trusted hash edges and the pairs verified so far already
connect are skipped (they cannot change the components); otherwise every self pair is checked
(`curation.dedup.verify.Settled`). Evaluation pairs follow, in the same way, skipping pairs whose
pool image's component already holds a verified evaluation copy. Rounds and tasks are cut from the
sorted pair list by count alone, so every engine and worker count checks the same pairs and gets
the same file.

Images: one engine task per pool (and evaluation) file decodes and describes the images that
appear in candidate pairs, once each, into `_work/verify/features-*.npy` (grayscale pixels at
`side`, keypoints, descriptors, back to back) with an index of where each image lies
(`features-*.parquet`). The driver hands each check task the index rows of its pairs' images, and
the task reads those byte ranges alone (a memory map locally, range reads from object storage): the
I/O of a task is its own images, not the pool's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.config import VerifyConfig
from curation.core.ids import first_occurrences, id_array, positions
from curation.core.rundir import write_table
from curation.core.storage import as_path, files, load_array, load_ranges, makedirs, read_parquet, remove, save_array
from curation.dedup.keypoints import FEATURE_INDEX, features_of, pack, unpack
from curation.dedup.verify import CHECKS, Settled, check_pairs, graph_config, hash_only
from pipelines.context import RunContext
from pipelines.graph import config_fields
from pipelines.stages.components import (
    EVAL_EDGES,
    NEAR_EDGES as KNN_EDGES,
    VERIFIED,
    VERIFY_FIELDS_OF_COMPONENTS,
    pool_images,
)
from pipelines.stages.hashing import EDGES_FILE as HASH_EDGES

#: Columns of VERIFIED: the CHECKS columns, which graph the pair came from, its score.
VERIFIED_SCHEMA = pa.schema([("graph", pa.string()), ("score", pa.float32()), *CHECKS])


def extract_features(path: str, wanted_path: str, cfg: dict[str, Any], out: str) -> int:
    """A task per source file: the features of its wanted images (first row of each id), written as
    a blob (`out`.npy) and its index (`out`.parquet, `curation.dedup.verify.FEATURE_INDEX`); returns
    the count."""
    wanted = pa.array(np.asarray(load_array(wanted_path, mmap=False)).astype(str), pa.string())
    t = read_parquet(path, columns=["image_id", "image"])
    t = t.filter(pc.is_in(t.column("image_id"), wanted))
    _, first = np.unique(id_array(t.column("image_id")), return_index=True)
    t = t.take(pa.array(np.sort(first), pa.int64()))
    images = dict(zip(t.column("image_id").to_pylist(), t.column("image").to_pylist()))
    index, blob = pack(features_of(images, VerifyConfig.model_validate(cfg)))
    save_array(f"{out}.npy", blob)
    write_table(index, f"{out}.parquet")
    return t.num_rows


def check_task(blobs: list[str], where: pa.Table, src: list[str], dst: list[str], cfg: dict[str, Any]) -> pa.Table:
    """A task: check pairs (src, dst), reading only their images' bytes of the features blobs
    (`where`: the FEATURE_INDEX rows of those images, with the blob each lies in)."""
    rows = where.to_pylist()
    found: dict[str, Any] = {}
    for blob, path in enumerate(blobs):  # each blob opened once, for all of its records this task needs
        mine = [r for r in rows if r["blob"] == blob]
        for r, data in zip(mine, load_ranges(path, [(r["offset"], r["offset"] + r["length"]) for r in mine])):
            found[r["image_id"]] = unpack(r, data)
    return check_pairs(found, list(zip(src, dst)), VerifyConfig.model_validate(cfg))


@dataclass(frozen=True)
class _Blobs:
    """The extracted features: blob paths, and FEATURE_INDEX rows (+ `blob`) sorted by image id."""

    paths: list[str]
    index: pa.Table
    ids: np.ndarray

    def rows(self, image_ids: list[str]) -> pa.Table:
        wanted = np.unique(np.array(image_ids, dtype=self.ids.dtype))
        return self.index.take(pa.array(positions(wanted, self.ids, "a candidate pair"), pa.int64()))


def sorted_pairs(t: pa.Table) -> pa.Table:
    """Best score first, ties by (src, dst): the order rounds are cut from."""
    return t.sort_by([("score", "descending"), ("src", "ascending"), ("dst", "ascending")])


def _check_rounds(ctx: RunContext, pairs: pa.Table, blobs: _Blobs, settled: Settled, uids: np.ndarray,
                  graph: str) -> list[pa.Table]:
    """Check `pairs` (sorted) in rounds of `round_pairs`, skipping those `settled` says cannot
    change the decisions and telling it each round's verified pairs."""
    vcfg = ctx.cfg.dedup.verify
    cfg = graph_config(vcfg, graph).model_dump(mode="json")

    def index(ids: pa.ChunkedArray) -> np.ndarray:
        return positions(id_array(ids), uids, "a candidate pair")

    out: list[pa.Table] = []
    for start in range(0, pairs.num_rows, vcfg.round_pairs):
        chunk = pairs.slice(start, vcfg.round_pairs)
        dst = index(chunk.column("dst"))
        todo = chunk.filter(pa.array(settled.open_self(index(chunk.column("src")), dst) if graph != "eval"
                                     else settled.open_eval(dst)))
        if todo.num_rows == 0:
            continue
        # Tasks cut from the round in id order: a task's pairs share images.
        todo = todo.sort_by([("src", "ascending"), ("dst", "ascending")])
        src_ids, dst_ids = todo.column("src").to_pylist(), todo.column("dst").to_pylist()
        step = vcfg.task_pairs
        tasks = [(blobs.paths, blobs.rows(src_ids[i:i + step] + dst_ids[i:i + step]), src_ids[i:i + step],
                  dst_ids[i:i + step], cfg) for i in range(0, len(src_ids), step)]
        checked = pa.concat_tables(ctx.engine.map(check_task, tasks, desc=f"verify {graph} pairs", total=len(tasks)))
        checked = pa.table({"graph": pa.array([graph] * todo.num_rows, pa.string()),
                            "score": todo.column("score").cast(pa.float32()),
                            **{name: checked.column(name) for name in CHECKS.names}}, schema=VERIFIED_SCHEMA)
        ok = checked.filter(checked.column("verified"))
        if graph != "eval":
            settled.add_self(index(ok.column("src")), index(ok.column("dst")))
        else:
            settled.add_eval(index(ok.column("dst")))
        out.append(checked)
    return out


def _extract(ctx: RunContext, ids: np.ndarray, sources: list[str]) -> _Blobs:
    work = as_path(ctx.run.path("_work", "verify"))
    makedirs(work)
    wanted = str(work / "wanted.npy")
    save_array(wanted, ids.astype(str))
    outs = [str(work / f"features-{i:05d}") for i in range(len(sources))]
    cfg = ctx.cfg.dedup.verify.model_dump(mode="json")
    ctx.engine.map(extract_features, [(s, wanted, cfg, o) for s, o in zip(sources, outs)], desc="verify features",
                   total=len(outs))
    remove(wanted)
    parts = [read_parquet(f"{o}.parquet") for o in outs]
    index = pa.concat_tables([t.append_column("blob", pa.array(np.full(t.num_rows, i, np.int32))) for i, t in enumerate(parts)])
    # An id in several sources (an evaluation image that is also in the pool): its first reading.
    ids, first = first_occurrences(id_array(index.column("image_id")))
    return _Blobs([f"{o}.npy" for o in outs], index.take(pa.array(first, pa.int64())), ids)


def run_verify(ctx: RunContext) -> dict[str, Any]:
    paths = [str(p) for p in ctx.run.pool_files()]
    uids = pool_images(paths)[0]
    knn = sorted_pairs(read_parquet(ctx.run.path(KNN_EDGES), columns=["src", "dst", "score"]))
    hashed = _hash_pairs(ctx)
    index = [positions(id_array(t.column(c)), uids, "a candidate pair") for t in (hashed, knn) for c in ("src", "dst")]
    alone = hash_only((index[0], index[1]), (index[2], index[3]))
    settled = Settled(len(uids), index[0][~alone], index[1][~alone], every_self=_every_self_pair(ctx.cfg.dedup.verify))
    unpaired = sorted_pairs(hashed.filter(pa.array(alone)))
    relative = bool(ctx.eval_sources) and ctx.run.path(EVAL_EDGES).exists()
    evals = sorted_pairs(read_parquet(ctx.run.path(EVAL_EDGES), columns=["src", "dst", "score"])) if relative else None
    ids = [id_array(t.column(c)) for t in (knn, evals, unpaired) if t is not None for c in ("src", "dst")]
    wanted = np.unique(np.concatenate(ids)) if ids else np.zeros(0, "S1")
    sources = paths + ([str(p) for p in files(ctx.run.path("eval", "pool"), "part-*.parquet")] if relative else [])
    blobs = _extract(ctx, wanted, sources) if len(wanted) else _Blobs([], FEATURE_INDEX.empty_table(), wanted)
    parts = _check_rounds(ctx, unpaired, blobs, settled, uids, "hash")
    parts += _check_rounds(ctx, knn, blobs, settled, uids, "self")
    if evals is not None:
        parts += _check_rounds(ctx, evals, blobs, settled, uids, "eval")
    table = pa.concat_tables(parts) if parts else VERIFIED_SCHEMA.empty_table()
    write_table(table, ctx.run.path(VERIFIED))
    ctx.run.clear("_work/verify")
    counts: dict[str, Any] = {}
    for name, t in (("hash", unpaired), ("self", knn), ("eval", evals)):
        if t is None:
            continue
        mine = table.filter(pc.equal(table.column("graph"), name))
        counts.update({f"{name}_candidates": t.num_rows, f"{name}_checked": mine.num_rows,
                       f"{name}_verified": int(pc.sum(mine.column("verified")).as_py() or 0),
                       f"{name}_unreadable": int(mine.num_rows - mine.column("error").null_count)})
    return counts


def _hash_pairs(ctx: RunContext) -> pa.Table:
    """The hash edges as candidate pairs: src, dst, score (the hash similarity); none without the file."""
    if not ctx.run.path(HASH_EDGES).exists():
        return pa.table({"src": pa.array([], pa.string()), "dst": pa.array([], pa.string()), "score": pa.array([], pa.float32())})
    return read_parquet(ctx.run.path(HASH_EDGES), columns=["src", "dst", "sim"]).rename_columns(["src", "dst", "score"])


def _every_self_pair(cfg: VerifyConfig) -> bool:
    """Whether every self pair is checked: when the components keep parts of one image apart or
    split components by the rate of failed checks (both need every pair's outcome)."""
    return cfg.min_overlap > 0 or cfg.min_linkage > 0


def verify_key(ctx: RunContext) -> Any:
    """`verify` (reads the hash edges, both graphs and the images): its settings (of those only
    `components` reads, whether every self pair is checked)."""
    return {**config_fields(ctx.cfg, *(f"dedup.verify.{name}" for name in VerifyConfig.model_fields
                                       if name not in VERIFY_FIELDS_OF_COMPONENTS)),
            "every_self_pair": _every_self_pair(ctx.cfg.dedup.verify)}
