"""Driver memory of the pool's image ids: numpy unicode (before) against byte strings
(`curation.core.ids`, now), in one run; and the components stage's driver peak per pool row.

    python -m bench.bench_driver_ids --out bench/scratch/driver_ids.json [--ids 2000000,8000000]

A global stage's driver plans the kept pool from the image_id columns of every embedding file
(`PoolShards.plan`: per-file columns, concatenated, `np.unique` for first occurrences). Each side
runs that on the same files in a fresh process and reports its peak anonymous memory above the
post-import baseline; the sorted ids must be the same. The ratio is what the byte strings save
(32 B per hex id instead of 128 B, in every copy the planning makes).

`components`: the `components` stage's driver on a pool of the same size (rows with a
50-character source path, 2% exact copies, one hash edge per 20 rows), each side in a fresh
process: `components_table` (as it was: the pool table read whole, `build_components` over it)
against `components` (the stage now: per-image arrays, rows labelled file by file). Both must
give the same components; the peak per row is what a 1.2B-row pool asks of the head.

`report`: the report's dedup numbers (rows per reason, the largest components and their members)
from that components file: `report_table` (as it was: the file read whole, rows counted per reason
and per component) against `report` (now: batch scans, the largest components from the stage's
record). Both must give the same numbers.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.bench_global_memory import PeakAnon
from bench.common import SCRATCH, add_phase_arguments, parser, run_phase, write_result

FILES = 20


def make_files(root: Path, n: int) -> None:
    import pyarrow as pa

    from curation.core.rundir import write_table

    if (root / "embeddings" / f"part-{FILES - 1:05d}.parquet").exists():
        return
    rng = np.random.default_rng(0)
    ids = np.char.mod("%032x", rng.permutation(n))
    ids[rng.choice(n, n // 50, replace=False)] = ids[rng.choice(n, n // 50)]  # some ids in two files
    for f, part in enumerate(np.array_split(np.arange(n), FILES)):
        write_table(pa.table({"image_id": pa.array(ids[part])}), root / "embeddings" / f"part-{f:05d}.parquet")


def make_pool(root: Path, n: int) -> None:
    """Pool parts (the columns `pool_rows` reads) and a hash-edge file, for the components phase."""
    import pyarrow as pa

    from curation.core import schemas
    from curation.core.rundir import write_table

    if (root / "dedup" / "hash_edges.parquet").exists():
        return
    rng = np.random.default_rng(1)
    ids = np.char.mod("%032x", rng.permutation(n))
    ids[rng.choice(n, n // 50, replace=False)] = ids[rng.choice(n, n // 50)]  # exact copies: same id
    sources = np.char.mod("gs://bucket/pool/batch-00017/images/img-%012d.jpg", np.arange(n))  # 50 characters
    dims = rng.integers(200, 2000, (2, n)).astype(np.int32)
    for f, part in enumerate(np.array_split(np.arange(n), FILES)):
        write_table(pa.table({"image_id": pa.array(ids[part]), "source": pa.array(sources[part]),
                              "orig_width": pa.array(dims[0, part]), "orig_height": pa.array(dims[1, part])}),
                    root / "pool" / f"part-{f:05d}.parquet")
    a, b = rng.integers(0, n, (2, n // 20))
    write_table(pa.table({"src": pa.array(ids[a]), "dst": pa.array(ids[b]), "sim": pa.array(np.ones(len(a), np.float32))},
                         schema=schemas.EDGES), root / "dedup" / "hash_edges.parquet")


def _components_table(root: Path) -> Callable[[], np.ndarray]:
    """The stage as it was: the whole pool table in the driver, `build_components` over it."""
    from curation.dedup.decisions import build_components, unique_images
    from curation.core.rundir import RunDir
    from pipelines.stages.components import pool_rows, read_edges
    from pipelines.stages.hashing import EDGES_FILE

    run = RunDir(root)
    rows = pool_rows(run)
    table = build_components(rows, read_edges(run, EDGES_FILE, unique_images(rows)[0]))
    return lambda: id_keys(table.column("component"))


def _components(root: Path) -> Callable[[], np.ndarray]:
    """The stage now: per-image arrays in the driver, the rows labelled file by file (in this
    process, so its peak includes the per-file work too)."""
    import pyarrow.parquet as pq

    from curation.config import RunConfig
    from pipelines.context import RunContext
    from pipelines.engines import make_engine
    from curation.core.rundir import RunDir
    from pipelines.stages.components import COMPONENTS, run_components

    run = RunDir(root)
    run.clear(COMPONENTS)
    counts = run_components(RunContext(run=run, cfg=RunConfig(), engine=make_engine("local", 1, progress=False),
                                       progress=False))
    run.update_manifest(stages={"components": {"counts": counts}})  # for the report phases

    return lambda: id_keys(pq.read_table(run.path(COMPONENTS), columns=["component"]).column("component"))


def _report_keys(reasons: dict[str, int], largest: list[tuple[str, int]]) -> np.ndarray:
    from curation.core.ids import as_ids

    return as_ids(sorted(f"{k}={v}" for k, v in [*reasons.items(), *largest]))


def _report_table(root: Path) -> np.ndarray:
    """The report's dedup numbers as they were read: components.parquet whole in memory, its rows
    counted per reason and per component (the duplicate gallery's largest components)."""
    import pyarrow.parquet as pq

    from curation.report.data import COMPONENTS

    table = pq.read_table(root / COMPONENTS, columns=["image_id", "source", "component", "keep", "reason"])

    def counts(key: str) -> list[tuple[str, int]]:
        grouped = table.group_by([key], use_threads=False).aggregate([([], "count_all")])
        return sorted(zip(grouped.column(key).to_pylist(), grouped.column("count_all").to_pylist()), key=lambda r: (-r[1], r[0]))

    largest = [(c, n) for c, n in counts("component") if n > 1][:6]
    return _report_keys(dict(counts("reason")), largest)


def _report(root: Path) -> np.ndarray:
    """The same numbers now: the reasons counted a batch at a time, the largest components from the
    stage's record, their members found in one more scan (the duplicate gallery)."""
    from curation.report.data import (
        COMPONENTS,
        duplicate_groups,
        largest_components,
        read_json,
        scan_counts,
    )

    manifest = read_json(root / "manifest.json")
    reasons: dict[str, int] = {}
    for r in scan_counts(root, COMPONENTS, ["reason", "keep"]) or []:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + r["count_all"]
    groups = duplicate_groups(root, manifest)
    assert groups and all(g.tiles for g in groups)
    return _report_keys(reasons, [(r["component"], r["rows"]) for r in (largest_components(manifest) or [])[:6]])


def id_keys(column: Any) -> np.ndarray:
    from curation.core.ids import id_array

    return np.unique(id_array(column))


def _unicode_plan(root: Path) -> np.ndarray:
    """The planning as it was: every file's ids as numpy unicode."""
    import pyarrow.parquet as pq

    paths = sorted((root / "embeddings").glob("part-*.parquet"))
    columns = [pq.read_table(p, columns=["image_id"]).column("image_id").to_numpy(zero_copy_only=False).astype(str)
               for p in paths]
    all_ids = np.concatenate(columns)
    del columns
    uids, _ = np.unique(all_ids, return_index=True)
    return uids


def _bytes_plan(root: Path) -> np.ndarray:
    from curation.config import RunConfig
    from pipelines.context import RunContext
    from pipelines.engines import make_engine
    from curation.core.rundir import RunDir
    from pipelines.stages.pool_shards import PoolShards

    ctx = RunContext(run=RunDir(root), cfg=RunConfig(), engine=make_engine("local", 1, progress=False), progress=False)
    return PoolShards.plan(ctx, "embeddings").ids


def phase(name: str, root: Path) -> dict[str, Any]:
    # Imported before the measure: imports are not what is measured.
    import curation.report.data  # noqa: F401
    import pipelines.engines.local  # noqa: F401
    import pipelines.stages.components  # noqa: F401
    import pipelines.stages.pool_shards  # noqa: F401

    with PeakAnon() as mem:
        ids = {"unicode": _unicode_plan, "bytes": _bytes_plan, "components_table": _components_table,
               "components": _components, "report_table": _report_table, "report": _report}[name](root)
    if callable(ids):  # the check of the components reads what the stage wrote, after the measure
        ids = ids()
    digest = hashlib.sha256("\n".join(np.char.decode(ids, "utf-8") if ids.dtype.kind == "S"
                                                      else ids).encode()).hexdigest()[:16]
    return {"peak_anon_mib": round(mem.peak - mem.base, 1), "ids": int(len(ids)), "dtype": str(ids.dtype),
            "digest": digest}


def main() -> None:
    p = parser("driver_ids", __doc__)
    p.add_argument("--ids", default="2000000,8000000", help="pool sizes, comma-separated")
    add_phase_arguments(p)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.run))))
        return
    pools = []
    for n in [int(v) for v in args.ids.split(",")]:
        root = SCRATCH / f"driver-ids-{n}"
        make_files(root, n)
        out: dict[str, Any] = {"ids": n, "files": FILES}
        for name in ("unicode", "bytes"):
            out[name] = run_phase("bench.bench_driver_ids", name, root)
        make_pool(root, n)
        sides = {side: run_phase("bench.bench_driver_ids", side, root) for side in ("components_table", "components")}
        out["components"] = {"rows": n, "components": sides["components"]["ids"],
                             "same_components": sides["components"]["digest"] == sides["components_table"]["digest"]}
        for side, result in sides.items():
            per_row = result["peak_anon_mib"] * 2**20 / n
            out["components"][side] = {"peak_anon_mib": result["peak_anon_mib"], "bytes_per_row": round(per_row, 1),
                                       "gb_at_1_2b_rows": round(per_row * 1.2e9 / 1e9)}
        out["components"]["memory_ratio"] = round(
            sides["components_table"]["peak_anon_mib"] / max(sides["components"]["peak_anon_mib"], 1.0), 2)
        report = {side: run_phase("bench.bench_driver_ids", side, root) for side in ("report_table", "report")}
        out["report"] = {side: {"peak_anon_mib": r["peak_anon_mib"], "bytes_per_row": round(r["peak_anon_mib"] * 2**20 / n, 1)}
                         for side, r in report.items()}
        out["report"]["same_numbers"] = report["report"]["digest"] == report["report_table"]["digest"]
        out["report"]["memory_ratio"] = round(report["report_table"]["peak_anon_mib"] / max(report["report"]["peak_anon_mib"], 1.0), 2)
        out["same_ids"] = out["unicode"]["digest"] == out["bytes"]["digest"]
        out["memory_ratio"] = round(out["unicode"]["peak_anon_mib"] / max(out["bytes"]["peak_anon_mib"], 1.0), 2)
        out["bytes_per_id"] = {k: round(out[k]["peak_anon_mib"] * 2**20 / n, 1) for k in ("unicode", "bytes")}
        pools.append(out)
    write_result(args.out, {"pools": pools})


if __name__ == "__main__":
    main()
