"""The `output` stage's throughput: the curated rows joined with their image bytes (the two-pass
shuffle of `curation.output.join`, on 2 local worker processes) against the Parquet I/O floor of
the same join in one process (read every source's ids and images, keep the wanted rows, write
them), in one run.

    python -m bench.bench_output --out bench/scratch/output.json [--rows 19200]

The pool: `--rows` images of incompressible bytes (20-100 KB, ~60 KB average: a stored JPEG) in
16 source files; 40% of them retrieved, a quarter of those twice (two seed datasets). Bytes moved
= the pool's image bytes (every source is read) + the output's; `bytes_moved_per_core_s` is what
`lvd plan` costs the output stage with.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SCRATCH, parser, write_result

FILES = 16
WORKERS = 2


def make_pool(root: Path, rows: int) -> tuple[list[Path], Any, int]:
    """Source files, the retrieved rows (schemas.RETRIEVAL) and the pool's image bytes."""
    import pyarrow as pa

    from curation.core import schemas
    from curation.core.rundir import write_table

    rng = np.random.default_rng(0)
    sizes = rng.integers(20_000, 100_000, rows)
    ids = np.char.mod("%032x", rng.permutation(rows))
    paths = []
    for f, part in enumerate(np.array_split(np.arange(rows), FILES)):
        path = root / "pool" / f"part-{f:05d}.parquet"
        if not path.exists():
            images = [rng.bytes(int(sizes[i])) for i in part]
            write_table(pa.table({"image_id": pa.array(ids[part]), "image": pa.array(images, pa.binary())}), path)
        paths.append(path)
    chosen = rng.choice(rows, int(rows * 0.4), replace=False)
    twice = chosen[: len(chosen) // 4]
    picked = np.concatenate([chosen, twice])
    datasets = ["in22k"] * len(chosen) + ["gldv2"] * len(twice)
    retrieved = pa.table({
        "image_id": pa.array(ids[picked]), "seed_dataset": pa.array(datasets), "mode": pa.array(["sample"] * len(picked)),
        "query_id": pa.array(np.char.mod("q%06d", np.arange(len(picked)) % 997)),
        "cluster": pa.array(np.full(len(picked), -1, np.int64)), "similarity": pa.array(np.ones(len(picked), np.float32)),
        "provenance": pa.array(["[]"] * len(picked)),
    }, schema=schemas.RETRIEVAL)
    return paths, retrieved, int(sizes.sum())


def floor(paths: list[Path], retrieved: Any, out: Path) -> tuple[float, int]:
    """One process: read each source, keep the wanted rows, write them (no sort, no shards)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    start = time.perf_counter()
    wanted = pc.unique(retrieved.column("image_id"))
    found = []
    for p in paths:
        t = pq.read_table(p)
        found.append(t.filter(pc.is_in(t.column("image_id"), value_set=wanted)))
    joined = retrieved.join(pa.concat_tables(found), "image_id")
    pq.write_table(joined, out, compression="zstd")
    return time.perf_counter() - start, int(pc.sum(pc.binary_length(joined.column("image"))).as_py())


def main() -> None:
    p = parser("output", __doc__)
    p.add_argument("--rows", type=int, default=19200)
    args = p.parse_args()
    from curation.config import OutputConfig
    from curation.output.shards import write_output
    from pipelines.engines.local import LocalEngine

    root = SCRATCH / f"output-{args.rows}"
    paths, retrieved, pool_bytes = make_pool(root, args.rows)
    shutil.rmtree(root / "out", ignore_errors=True)
    engine = LocalEngine(WORKERS, progress=False)
    engine.map(abs, [(1,)] * WORKERS)  # worker processes started before the clock
    start = time.perf_counter()
    index = write_output(retrieved, [str(p) for p in paths], root / "out", OutputConfig(shard_rows=1_000),
                         map_fn=lambda fn, tasks: engine.map(fn, tasks))
    seconds = time.perf_counter() - start
    engine.close()
    floor_s, floor_bytes = floor(paths, retrieved, root / "floor.parquet")
    (root / "floor.parquet").unlink()
    out_bytes = sum(s["payload_bytes"] for s in index["shards"])
    moved = pool_bytes + out_bytes
    write_result(args.out, {
        "rows": args.rows, "files": FILES, "workers": WORKERS, "pool_image_bytes": pool_bytes,
        "output_rows": index["totals"]["rows"], "output_payload_bytes": out_bytes, "shards": index["totals"]["shards"],
        "seconds": round(seconds, 2), "bytes_moved_per_core_s": round(moved / (seconds * WORKERS)),
        "floor": {"seconds": round(floor_s, 2), "workers": 1, "image_bytes": floor_bytes,
                  "bytes_moved_per_core_s": round((pool_bytes + floor_bytes) / floor_s)},
        "per_core_vs_floor": round(moved / (seconds * WORKERS) / ((pool_bytes + floor_bytes) / floor_s), 2),
        "note": "per core: wall x workers (the shuffle's tasks run in 2 processes); the floor is one process",
    })


if __name__ == "__main__":
    main()
