"""Ingest throughput (decode + filter + resize + re-encode) in images/s per core."""
from __future__ import annotations

import shutil
import time

from bench.common import SCRATCH, parser, world, write_result


def main() -> None:
    p = parser("ingest", __doc__)
    p.add_argument("--size", default="medium", choices=["small", "medium"])
    args = p.parse_args()
    from curation.config import RunConfig
    from curation.sources.inputs import iter_source
    from pipelines.engines.local import LocalEngine
    from pipelines.ingest import ingest_items
    from curation.core.rundir import RunDir

    root = world(args.size)
    results = {}
    for workers in (1, 2):
        out = SCRATCH / f"ingest-run-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        engine = LocalEngine(workers, progress=False)
        start = time.perf_counter()
        counts = ingest_items(RunDir(out), iter_source(str(root / "pool")), RunConfig(), engine)
        seconds = time.perf_counter() - start
        engine.close()
        results[f"workers_{workers}"] = {
            **counts, "seconds": round(seconds, 2), "images_per_s": round(counts["inputs"] / seconds, 1),
            "images_per_s_per_core": round(counts["inputs"] / seconds / workers, 1),
        }
    best = max(r["images_per_s_per_core"] for r in results.values())
    write_result(args.out, {
        "world": args.size, "runs": results, "images_per_s_per_core": best,
        "img2dataset_anchor_per_core": 80.0,
        "note": "anchor: img2dataset 1,300 img/s on 16 cores incl. download; this is decode+resize+re-encode only",
    })


if __name__ == "__main__":
    main()
