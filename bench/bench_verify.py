"""The verify stage's cost per candidate pair on both worlds (real photos and the demo world), its
robust fit against classic RANSAC in the same run, and what a check task reads.

Each world is run through `lvd dedup --until eval_edges` with the trained copy descriptor
(`lvd_copy_v1`, whose candidate pairs verify checks); `--pairs` self and evaluation candidates,
evenly spaced in the order the stage checks them (best score first), are then checked in this process,
one core, once with the stage's fit (`curation.dedup.verify.RANSAC_METHOD`, USAC) and once with
classic RANSAC: milliseconds per pair for each, and how many verified decisions differ. A check task
reads its own pairs' images from the features blob: `features_bytes_per_image` times the images of
its pairs, not the whole blob.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import SCRATCH, parser, python, run_measured, world, write_result

MODEL = "lvd_copy_v1"


def _candidates(root: Path, pool: Path, against: Path, name: str) -> Path:
    run = SCRATCH / f"verify-run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    run_measured([python(), "-m", "pipelines", "ingest", str(pool), "--out", str(run), "--no-progress"])
    run_measured([python(), "-m", "pipelines", "dedup", str(run), "--against", str(against), "--no-progress",
                  "--until", "eval_edges", "--set", f"dedup.model={MODEL}"])
    return run


def _measure(run: Path, n: int) -> dict[str, Any]:
    import cv2
    import numpy as np
    import pyarrow.parquet as pq

    import curation.dedup.keypoints as keypoints
    import curation.dedup.verify as verify
    from curation.config import VerifyConfig
    from curation.core.storage import files
    from pipelines.stages.verify import sorted_pairs

    cv2.setNumThreads(1)
    cfg = VerifyConfig()
    pairs = []
    for graph in ("knn_edges", "eval_edges"):
        t = pq.read_table(run / "dedup" / f"{graph}.parquet", columns=["src", "dst", "score"])
        t = sorted_pairs(t)
        t = t.take(np.unique(np.linspace(0, t.num_rows - 1, min(n, t.num_rows)).astype(np.int64)))  # every score band
        pairs += list(zip(t.column("src").to_pylist(), t.column("dst").to_pylist()))
    wanted = {i for p in pairs for i in p}
    images: dict[str, bytes] = {}
    for f in [*files(run / "pool", "part-*.parquet"), *files(run / "eval" / "pool", "part-*.parquet")]:
        for r in pq.read_table(f, columns=["image_id", "image"]).to_pylist():
            if r["image_id"] in wanted:
                images.setdefault(r["image_id"], r["image"])
    start = time.perf_counter()
    found = keypoints.features_of(images, cfg)
    features_ms = (time.perf_counter() - start) * 1e3 / max(1, len(found))
    index, blob = keypoints.pack(found)
    out: dict[str, Any] = {"pairs": len(pairs), "images": len(found), "features_ms_per_image": round(features_ms, 2),
                           "features_bytes_per_image": round(len(blob) / max(1, len(found)))}
    decisions = {}
    stage_method = verify.RANSAC_METHOD
    for name, method in (("stage", stage_method), ("classic_ransac", cv2.RANSAC)):
        verify.RANSAC_METHOD = method
        start = time.perf_counter()
        checked = verify.check_pairs(found, pairs, cfg)
        seconds = time.perf_counter() - start
        decisions[name] = np.array(checked.column("verified").to_pylist())
        out[name] = {"ms_per_pair": round(seconds * 1e3 / max(1, len(pairs)), 2), "verified": int(decisions[name].sum())}
    verify.RANSAC_METHOD = stage_method
    out["speedup_vs_classic_ransac"] = round(out["classic_ransac"]["ms_per_pair"] / out["stage"]["ms_per_pair"], 2)
    out["decisions_differing"] = int((decisions["stage"] != decisions["classic_ransac"]).sum())
    return out


def main() -> None:
    from bench.real_photo_dedup import build

    p = parser("verify", __doc__ or "")
    p.add_argument("--pairs", type=int, default=1000, help="self and evaluation candidate pairs checked per world")
    args = p.parse_args()
    photos = build(None)
    demo = world("small")
    result = {"model": MODEL,
              "real_photo": _measure(_candidates(photos, photos / "pool", photos / "eval", "real"), args.pairs),
              "demo_world": _measure(_candidates(demo, demo / "pool", demo / "eval", "demo"), args.pairs)}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
