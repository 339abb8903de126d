"""Helpers of the engine tests: a tiny demo world, curate runs, graphs with known components, and
stage tasks that fail on purpose. (Ray workers import this module by value: see conftest.py.)"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.demo.world import EVAL_SET

POOL_ORIGINALS = 70  # files of pool/batch-0 (originals, planted eval copies)
SEEDS_PER_CONCEPT = 3
EVAL_PER_CONCEPT = 2  # per split
EVAL_COPIES = 6  # planted copies of evaluation images, with their originals


#: Two seed sets (sample and cluster retrieval) instead of the demo recipe's three: each seed set
#: costs a Ray Data pipeline start, the largest fixed cost of the Ray run.
TINY_RECIPE = """name: tiny
config:
  clustering: {k: 16}
  retrieval: {cluster_m: 20, cluster_cap: 100}
rows:
  - {dataset: demo_textures, mode: sample, n: 4}
  - {dataset: demo_scenes, mode: cluster}
"""


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


# -- a tiny demo world: every kind of input, few enough images that the whole pipeline runs three
#    times (local, Ray, Beam) in a test session on 2 cores ------------------------------------------
def tiny_world(world: Path, out: Path) -> Path:
    """Copy a subset of `world` (a built demo world) into `out`: some originals of one pool folder
    with their planted copies, a few odd and junk files, a few seeds and evaluation images."""
    if out.exists():
        shutil.rmtree(out)
    for name in ("world.json", "seeds.yaml", "truth.parquet"):
        _copy(world / name, out / name)
    originals = sorted((world / "pool" / "batch-0").iterdir())[:POOL_ORIGINALS]
    eval_copies = sorted((world / "pool" / "batch-0").glob("evalcopy-*"))[:EVAL_COPIES]
    truth = pq.read_table(world / "truth.parquet", columns=["source", "dup_group"]).to_pylist()
    group_of = {row["source"]: row["dup_group"] for row in truth}
    for f in eval_copies:  # the copy, and the evaluation image it copies (eval:<split>:<concept>:<i>)
        _, split, concept, i = group_of[f"pool/batch-0/{f.name}"].split(":")
        _copy(f, out / "pool" / "batch-0" / f.name)
        rel = Path("eval", EVAL_SET, split, concept, f"{concept}-{int(i):04d}.jpg")
        _copy(world / rel, out / rel)
    groups = {f.stem for f in originals}
    for f in originals:
        _copy(f, out / "pool" / "batch-0" / f.name)
    for f in sorted((world / "pool" / "copies").iterdir()):
        if f.name.split("-copy")[0] in groups:
            _copy(f, out / "pool" / "copies" / f.name)
    for folder in ("odd", "junk"):
        for f in sorted((world / "pool" / folder).iterdir())[:3]:
            _copy(f, out / "pool" / folder / f.name)
    (out / "recipe.yaml").write_text(TINY_RECIPE)
    for concept_dir in sorted((world / "seeds").glob("*/*")):
        for f in sorted(concept_dir.iterdir())[:SEEDS_PER_CONCEPT]:
            _copy(f, out / concept_dir.relative_to(world) / f.name)
    for concept_dir in sorted((world / "eval").glob("*/*/*")):
        for f in sorted(concept_dir.iterdir())[:EVAL_PER_CONCEPT]:
            _copy(f, out / concept_dir.relative_to(world) / f.name)
    return out


# -- runs ----------------------------------------------------------------------------------------
#: Same config on every engine. The thresholds are lowered so the tiny pool has k-NN and
#: evaluation edges (the calibrated ones find almost none among ~140 images).
CURATE_FLAGS = ["--set", "shard_rows=40", "--set", "dedup.self_threshold=0.2",
                "--set", "dedup.relative_threshold=0.2", "--workers", "2", "--no-progress"]
#: Written with timings or absolute paths: not expected to be byte-identical between runs.
VOLATILE = ("manifest.json", "report.html")


def curate(world: Path, out: Path, engine: str, *extra: str) -> Path:
    from pipelines.cli import main

    argv = ["curate", "--world", str(world), "--recipe", str(world / "recipe.yaml"), "--out", str(out),
            "--engine", engine, *CURATE_FLAGS, *extra]
    assert main(argv) == 0, argv
    return out


def data_files(run: Path) -> dict[str, bytes]:
    """Every output file of a run (relative path -> bytes), without markers and volatile files."""
    out = {}
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if path.is_file() and not rel.startswith(("_stages/", "world/")) and path.name not in VOLATILE:
            out[rel] = path.read_bytes()
    return out


# -- graphs with known components ------------------------------------------------------------------
def graphs(seed: int = 0) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """name -> (n, src, dst): random sparse, long chains with shuffled ids (many star rounds),
    stars, duplicates and self loops, isolated nodes, no edges at all."""
    rng = np.random.default_rng(seed)
    out = {}
    n = 3000
    out["random"] = (n, rng.integers(0, n, 2400), rng.integers(0, n, 2400))
    ids = rng.permutation(600)
    out["chains"] = (700, np.concatenate([ids[:299], ids[300:599]]), np.concatenate([ids[1:300], ids[301:600]]))
    centre = 250
    leaves = np.setdiff1d(np.arange(500), [centre])
    out["stars"] = (520, np.concatenate([np.full(leaves.size, centre), [510, 511]]), np.concatenate([leaves, [511, 519]]))
    src = rng.integers(0, 50, 400)
    out["loops_and_duplicates"] = (60, np.concatenate([src, src, [7, 7]]), np.concatenate([(src * 7) % 50, (src * 7) % 50, [7, 7]]))
    out["no_edges"] = (10, np.empty(0, np.int64), np.empty(0, np.int64))
    return out


# -- a stage task that fails once ------------------------------------------------------------------
def assert_same_graphs(engine: Any, base: np.ndarray, cfg: Any, queries: int) -> None:
    """The engine's self and cross k-NN graphs equal the one-index path's: edges, scores, near
    misses, score histogram and info (the engine's shard count aside); both record near misses."""
    from curation.dedup import knn

    for local, dist in [(knn.knn_graph(base, 10, 0.5, cfg), engine.knn_graph(base, 10, 0.5, cfg)),
                        (knn.cross_graph(base, base[:queries], 10, 0.45, cfg),
                         engine.cross_graph(base, base[:queries], 10, 0.45, cfg))]:
        for part in ("edges", "near"):
            for name in ("src", "dst", "sim", "score"):
                assert np.array_equal(getattr(getattr(local, part), name), getattr(getattr(dist, part), name)), (part, name)
        assert len(local.edges) > 0 and len(local.near) > 0
        assert dist.histogram == local.histogram and sum(local.histogram["counts"]) > 0
        assert dist.info.pop("shards") == 2
        assert dist.info == local.info  # same index, same calibrated nprobe, same measured recall


def fail_once(marker: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)`, except that the first call for `marker` (a file path) raises: every call
    appends a line to the marker, so the test can count the attempts."""
    path = Path(marker)
    first = not path.exists()
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        raise RuntimeError(f"injected failure ({path.name})")
    return fn(*args)


def size_batch_fn() -> Callable[[pa.Table], pa.Table]:
    """A model-free batch function for `map_parquet` tests: rows -> (image_id, byte length)."""
    return lambda t: pa.table({"image_id": t.column("image_id"), "size": pc.binary_length(t.column("image"))})


def rows_writer(in_path: str, out_path: str, rows: pa.Table | None) -> dict[str, Any]:
    """`map_parquet` writer for the tests: the rows as they come, or an empty file."""
    table = rows if rows is not None else pa.table({"image_id": pa.array([], pa.string()), "size": pa.array([], pa.int32())})
    pq.write_table(table, out_path)
    return {"rows": table.num_rows, "pid": os.getpid()}


def check_map_parquet(engine: Any, pool_dir: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """Run `engine.map_parquet` over three pool shards and an empty one; every output file must hold
    every row of its input, in file order. Returns the per-file results for engine-specific checks."""
    shards = sorted(pool_dir.glob("part-*.parquet"))[:3]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(shards[0]).slice(0, 0), empty)
    inputs = [*shards, empty]
    jobs = [(str(p), str(tmp_path / f"out-{i}.parquet")) for i, p in enumerate(inputs)]
    results = engine.map_parquet(jobs, ["image_id", "image"], size_batch_fn, rows_writer)
    assert [r["rows"] for r in results] == [pq.read_metadata(p).num_rows for p in inputs]
    for in_path, out_path in jobs:
        expected = size_batch_fn()(pq.read_table(in_path, columns=["image_id", "image"]))
        assert pq.read_table(out_path).equals(expected)
    return results

