"""Hash dedup: our PCA-hash and pHash paths vs imagededup's PHash on the same folder, side by side
(speed ratio, pairwise precision / recall on the demo world's truth); then 1M synthetic 64-bit
hashes through our Hamming search + components (time, peak memory: linear, no n^2 matrix)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from bench.common import SCRATCH, parser, python, run_measured, world, write_result


def _flat_subset(root: Path, n: int) -> Path:
    """The first n pool files (originals and their copies) as one flat folder (imagededup reads one level)."""
    import pyarrow.parquet as pq

    truth = pq.read_table(root / "truth.parquet").to_pylist()
    rows = [r for r in truth if r["kind"] in ("original", "copy") and r["source"].startswith("pool/")]
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["dup_group"], []).append(r)
    chosen: list[dict] = []
    for members in by_group.values():
        if len(chosen) >= n:
            break
        chosen.extend(members)
    out = SCRATCH / f"hashdedup-{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    names = {}
    for i, r in enumerate(chosen):
        name = f"{i:06d}{Path(r['source']).suffix}"
        os.symlink(root / r["source"], out / name)
        names[name] = r["dup_group"]
    (out.parent / f"hashdedup-{n}-groups.json").write_text(json.dumps(names))
    return out


def _pairwise(groups: dict[str, str], predicted: dict[str, str]) -> dict[str, float]:
    """Pairwise precision / recall of predicted components (name -> component) vs truth groups."""
    from collections import Counter

    def pairs(counter: Counter) -> int:
        return sum(c * (c - 1) // 2 for c in counter.values())

    names = sorted(groups)
    pred = pairs(Counter(predicted[n] for n in names))
    true = pairs(Counter(groups[n] for n in names))
    tp = pairs(Counter((predicted[n], groups[n]) for n in names))
    return {"precision": round(tp / pred, 4) if pred else 1.0, "recall": round(tp / true, 4) if true else 1.0}


def _imagededup(folder: Path, groups: dict[str, str]) -> dict:
    code = (
        "import json,sys,time;from imagededup.methods import PHash;t=time.perf_counter();"
        f"d=PHash(verbose=False).find_duplicates(image_dir=r'{folder}',max_distance_threshold=10);"
        "print(json.dumps({'seconds':time.perf_counter()-t,'dups':d}))"
    )
    res = run_measured([python(), "-c", code])
    out = json.loads(res["stdout"].strip().splitlines()[-1])
    # Its answer is a neighbour list: components of that graph are its duplicate groups.
    from curation.dedup.graph import connected_components

    names = sorted(groups)
    idx = {n: i for i, n in enumerate(names)}
    src = [idx[a] for a, lst in out["dups"].items() for b in lst if a in idx and b in idx]
    dst = [idx[b] for a, lst in out["dups"].items() for b in lst if a in idx and b in idx]
    labels = connected_components(len(names), np.array(src, np.int64), np.array(dst, np.int64))
    return {"seconds": round(out["seconds"], 2), "process_seconds": res["seconds"], "peak_rss_mib": res["peak_rss_mib"],
            **_pairwise(groups, {n: str(labels[idx[n]]) for n in names})}


def _ours(folder: Path, groups: dict[str, str], method: str) -> dict:
    import pyarrow.parquet as pq

    out = SCRATCH / f"hashdedup-run-{method}"
    shutil.rmtree(out, ignore_errors=True)
    res = run_measured([python(), "-m", "pipelines", "ingest", str(folder), "--out", str(out), "--no-progress"])
    res2 = run_measured([python(), "-m", "pipelines", "dedup", str(out), "--method", "hash", "--hash", method, "--no-progress"])
    comps = pq.read_table(out / "dedup" / "components.parquet").to_pylist()
    predicted = {Path(r["source"]).name: r["component"] for r in comps}
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    dedup_only = sum(stages[s]["seconds"] for s in ("hash", "hash_edges", "components"))
    return {"seconds": round(res["seconds"] + res2["seconds"], 2), "dedup_stage_seconds": round(dedup_only, 2),
            "peak_rss_mib": max(res["peak_rss_mib"], res2["peak_rss_mib"]), **_pairwise(groups, predicted)}


def _million(n: int) -> dict:
    code = (
        "import numpy as np,time,resource,json;from curation.dedup.hamming import hamming_pairs;from curation.dedup.graph import connected_components;"
        f"h=np.random.default_rng(0).integers(0,2**64-1,size={n},dtype=np.uint64);"
        "h[1::1000]=h[::1000][:len(h[1::1000])]^np.uint64(5);"  # planted near duplicates
        "t=time.perf_counter();s,d=hamming_pairs(h,7);l=connected_components(len(h),s,d);"
        "print(json.dumps({'seconds':time.perf_counter()-t,'pairs':int(len(s)),'components':int(len(np.unique(l)))}))"
    )
    res = run_measured([python(), "-c", code])
    out = json.loads(res["stdout"].strip().splitlines()[-1])
    return {"hashes": n, **out, "peak_rss_mib": res["peak_rss_mib"], "bytes_of_hashes_mib": round(n * 8 / 2**20, 1)}


def main() -> None:
    p = parser("hashdedup", __doc__)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--hashes", type=int, default=1_000_000)
    args = p.parse_args()
    root = world("medium")
    folder = _flat_subset(root, args.images)
    groups = json.loads((folder.parent / f"{folder.name}-groups.json").read_text())
    peer = _imagededup(folder, groups)
    ours = {m: _ours(folder, groups, m) for m in ("pca", "phash")}
    scale = [_million(n) for n in (args.hashes // 10, args.hashes)]
    write_result(args.out, {
        "images": len(groups), "imagededup_phash": peer, "ours": ours,
        "speedup_vs_imagededup": {m: round(peer["process_seconds"] / r["seconds"], 2) for m, r in ours.items()},
        "hamming_scale": scale,
        "memory_growth": round(scale[1]["peak_rss_mib"] / max(1.0, scale[0]["peak_rss_mib"]), 2),
        "target": ">= 5x imagededup at 10k images",
    })


if __name__ == "__main__":
    main()
