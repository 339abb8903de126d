"""Hostile inputs (issue 14): a fuzz corpus (`curation.demo.fuzz_corpus`: every format Pillow writes,
from scikit-image's photos, times seeded mutations) through decode, in files/s, with the rejects
by reason and the peak memory.

Two measurements:
- `decode`: `curation.sources.images.decode_items` in this process, one core, the corpus in shards of
  `shard_rows` (the ingest task's unit): files/s, kept, rejects by reason, the slowest file, and
  the peak RSS of this process (`resource.getrusage`) before and after;
- `ingest`: `lvd ingest` on the corpus written to a folder (the whole path: folder reader, engine
  process pool, decode, reject parts, rejects.parquet), in a fresh process: files/s end to end,
  kept and rejects by reason from the run directory, peak RSS of its process tree.
Every input must be accounted for (kept + rejected == files) and every original kept.
"""
from __future__ import annotations

import resource
import shutil
import time
from collections import Counter

from bench.common import SCRATCH, parser, python, run_measured, write_result


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def main() -> None:
    p = parser("fuzz", __doc__)
    p.add_argument("--copies", type=int, default=4, help="mutants per original and mutation kind")
    p.add_argument("--side", type=int, default=96, help="shorter side of the photos, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-rows", type=int, default=256)
    p.add_argument("--no-ingest", action="store_true", help="skip the end-to-end `lvd ingest` run")
    args = p.parse_args()

    from curation.demo import fuzz_corpus
    from curation.config import DecodeConfig
    from curation.sources.images import decode_one, decode_items
    from curation.sources.inputs import SourceItem

    start = time.perf_counter()
    files = fuzz_corpus.corpus(copies=args.copies, side=args.side, seed=args.seed)
    generate_s = time.perf_counter() - start
    originals = {f.name for f in files if f.original}
    corpus_info = {
        "files": len(files), "originals": len(originals), "variants": len({f.variant for f in files if f.original}),
        "mutations": dict(sorted(Counter(f.mutation for f in files).items())),
        "mib": round(sum(len(f.data) for f in files) / 2**20, 1), "generate_s": round(generate_s, 2),
        "copies": args.copies, "side": args.side, "seed": args.seed,
    }

    cfg = DecodeConfig()
    rss_before = _peak_rss_mib()
    kept: list[str] = []
    reasons: Counter = Counter()
    start = time.perf_counter()
    for lo in range(0, len(files), args.shard_rows):
        chunk = files[lo : lo + args.shard_rows]
        pool, rejects = decode_items([SourceItem(f.name, f.data) for f in chunk], cfg)
        kept += pool.column("source").to_pylist()
        reasons.update(rejects.column("reason").to_pylist())
    decode_s = time.perf_counter() - start
    sample = files[:: max(1, len(files) // 400)]  # ~400 files timed one by one
    slowest = max((_timed(decode_one, SourceItem(f.name, f.data), cfg), f.name) for f in sample)
    decode = {
        "seconds": round(decode_s, 2), "files_per_s": round(len(files) / decode_s, 1), "kept": len(kept),
        "rejected": int(sum(reasons.values())), "rejects_by_reason": dict(reasons.most_common()),
        "accounted": len(kept) + sum(reasons.values()) == len(files), "originals_kept": originals <= set(kept),
        "peak_rss_mib_before": rss_before, "peak_rss_mib": _peak_rss_mib(),
        "slowest_sampled_s": round(slowest[0], 3), "slowest_sampled": slowest[1],
    }

    ingest = None
    if not args.no_ingest:
        ingest = _ingest(files, originals)
    write_result(args.out, {"corpus": corpus_info, "decode": decode, "ingest": ingest,
                            "files_per_s": decode["files_per_s"]})


def _timed(fn, *a) -> float:
    start = time.perf_counter()
    fn(*a)
    return time.perf_counter() - start


def _ingest(files: list, originals: set[str]) -> dict:
    """`lvd ingest` on the corpus written to a folder, in a fresh process."""
    import pyarrow.compute as pc

    from curation.demo import fuzz_corpus
    from curation.core.rundir import RunDir
    from curation.core.storage import files as list_files, read_parquet

    folder = SCRATCH / "fuzz-corpus"
    out = SCRATCH / "fuzz-run"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    fuzz_corpus.write_corpus(files, folder)
    res = run_measured([python(), "-m", "pipelines", "ingest", str(folder), "--out", str(out), "--no-progress"])
    run = RunDir(out)
    pool = [read_parquet(p, columns=["source"]) for p in list_files(run.path("pool"), "part-*.parquet")]
    kept = {s.rsplit("/", 1)[-1] for t in pool for s in t.column("source").to_pylist()}
    rejects = read_parquet(run.rejects)
    reasons = Counter(rejects.column("reason").to_pylist())
    result = {
        "seconds": res["seconds"], "files_per_s": round(len(files) / res["seconds"], 1),
        "peak_rss_mib": res["peak_rss_mib"], "kept": len(kept), "rejected": rejects.num_rows,
        "rejects_by_reason": dict(reasons.most_common()),
        "rejects_by_stage": dict(Counter(pc.fill_null(rejects.column("stage"), "").to_pylist())),
        "accounted": len(kept) + rejects.num_rows == len(files), "originals_kept": originals <= kept,
        "exit_status": 0,  # run_measured raises, with the command's stderr, on any other
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
