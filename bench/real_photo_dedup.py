"""The real-photo half of `bench_dedup_quality`: the copy benchmark (`curation.quality.copy_bench`) built
under bench/scratch, `lvd ingest` + `lvd dedup --against eval` with the packaged default, scored by
`curation.quality.copy_score` (overall, per transform, relative, the curve over thresholds), and
imagededup's PHash / DHash / WHash on the same files in the same run (its default Hamming threshold
10, and a sweep), scored the same way."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SCRATCH, python, run_measured

#: imagededup's default `max_distance_threshold` of find_duplicates for the hash methods.
IMAGEDEDUP_DEFAULT = 10
IMAGEDEDUP_SWEEP = (0, 2, 4, 6, 8, 10, 12, 14, 16)


def build(copies: int | None, seed: int = 0) -> Path:
    from curation.quality.copy_bench import build_copy_bench

    root = SCRATCH / f"copy-bench-{copies or 'all'}-{seed}"
    shutil.rmtree(root, ignore_errors=True)
    return build_copy_bench(root, seed=seed, copies_per_original=copies)


def lvd_default(root: Path, model: str | None = None) -> dict[str, Any]:
    """The packaged default's (or `model`'s, as `dedup.model`) self and relative dedup on the
    benchmark, overall and per split (`curation.quality.copy_bench.TUNE_PHOTOS`: the photos the trained
    descriptor learnt on and was tuned on, and the held-out rest)."""
    import pyarrow.parquet as pq

    from curation.quality.copy_score import copy_bench_quality, split_quality, threshold_curve

    run = SCRATCH / f"copy-bench-run{'-' + model if model else ''}"
    extra = ["--set", f"dedup.model={model}"] if model else []
    shutil.rmtree(run, ignore_errors=True)
    ingest = run_measured([python(), "-m", "pipelines", "ingest", str(root / "pool"), "--out", str(run), "--no-progress"])
    dedup = run_measured([python(), "-m", "pipelines", "dedup", str(run), "--against", str(root / "eval"), "--no-progress", *extra])
    truth = pq.read_table(root / "truth.parquet")
    comp = pq.read_table(run / "dedup" / "components.parquet")
    edges = {n: pq.read_table(run / "dedup" / f"{n}.parquet") if (run / "dedup" / f"{n}.parquet").exists() else None
             for n in ("knn_edges", "hash_edges", "eval_edges")}
    return {"quality": copy_bench_quality(comp, truth, root), "by_split": split_quality(comp, truth, root),
            "curve": threshold_curve(comp, truth, root, edges["knn_edges"], edges["hash_edges"], edges["eval_edges"]),
            "seconds": {"ingest": ingest["seconds"], "dedup": dedup["seconds"]}}


def _bits(hexes: list[str]) -> np.ndarray:
    return np.unpackbits(np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in hexes]), axis=1)


def imagededup_methods(root: Path) -> dict[str, Any]:
    """PHash / DHash / WHash of imagededup on the pool and eval files, scored at each threshold."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from imagededup.methods import DHash, PHash, WHash

    from curation.quality.copy_score import components_from_pairs, copy_bench_quality

    truth = pq.read_table(root / "truth.parquet")
    out: dict[str, Any] = {"default_threshold": IMAGEDEDUP_DEFAULT}
    for cls in (PHash, DHash, WHash):
        method = cls(verbose=False)
        start = time.perf_counter()
        pool = method.encode_images(image_dir=str(root / "pool"), recursive=False)
        evals = method.encode_images(image_dir=str(root / "eval"), recursive=False)
        seconds = time.perf_counter() - start
        names = sorted(pool)
        sources = [str(root / "pool" / n) for n in names]
        bits, ebits = _bits([pool[n] for n in names]), _bits([evals[n] for n in sorted(evals)])
        dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
        edist = (ebits[:, None, :] != bits[None, :, :]).sum(-1).min(axis=0) if len(ebits) else np.full(len(names), 999)
        sweep = []
        for t in IMAGEDEDUP_SWEEP:
            i, j = np.nonzero(np.triu(dist <= t, 1))
            comp = components_from_pairs(sources, list(zip(i.tolist(), j.tolist())))
            comp = comp.set_column(2, "reason", pa.array(["eval-duplicate" if d <= t else "kept" for d in edist]))
            q = copy_bench_quality(comp, truth, root)
            sweep.append({"threshold": t, **{k: q[k] for k in ("precision", "recall", "false_pairs", "recall_by_transform")},
                          "eval_copies_removed": q["relative"]["eval_copies_removed"], "collateral": q["relative"]["collateral"]})
        out[cls.__name__] = {"images_per_s": round((len(pool) + len(evals)) / seconds, 1), "sweep": sweep,
                             "at_default": next(s for s in sweep if s["threshold"] == IMAGEDEDUP_DEFAULT)}
    return out


def summary(root: Path, lvd: dict[str, Any], others: dict[str, Any]) -> dict[str, Any]:
    """Side by side: one row per detector, one column per transform."""
    import pyarrow.parquet as pq

    kinds: dict[str, int] = {}
    for k in pq.read_table(root / "truth.parquet").column("kind").to_pylist():
        kinds[k] = kinds.get(k, 0) + 1
    rows = {"lvd_default": {"precision": lvd["quality"]["precision"], "recall": lvd["quality"]["recall"],
                            "eval_copies_removed": lvd["quality"]["relative"]["eval_copies_removed"],
                            "collateral": lvd["quality"]["relative"]["collateral"],
                            "recall_by_transform": lvd["quality"]["recall_by_transform"]}}
    for name in ("PHash", "DHash", "WHash"):
        if name in others:
            d = others[name]["at_default"]
            rows[f"imagededup_{name}@{IMAGEDEDUP_DEFAULT}"] = {k: d[k] for k in ("precision", "recall", "eval_copies_removed", "collateral", "recall_by_transform")}
    return {"files": kinds, "detectors": rows}
