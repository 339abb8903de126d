"""Run the benchmarks and gather their JSON into bench/results.json.

`python -m bench.run [--only ingest,knn] [--out bench/results.json]`. Each benchmark runs in its own
process; one failing benchmark is recorded with its error and does not stop the others.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import SCRATCH

BENCHES = ["ingest", "hashdedup", "embed", "knn", "components", "kmeans", "curate", "dedup_quality", "verify", "linkage", "crawl", "train", "engines",
           "global_memory", "hamming_pieces", "object_store", "driver_ids", "output", "fuzz", "balanced", "ablation"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench/results.json")
    p.add_argument("--only", default="", help="comma list of benchmarks (default: all)")
    p.add_argument("--collect", action="store_true", help="only gather the JSON already in bench/scratch/")
    args = p.parse_args()
    names = [n for n in (args.only.split(",") if args.only else BENCHES) if n]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        script = Path(__file__).with_name(f"bench_{name}.py")
        if not script.exists():
            continue
        target = SCRATCH / f"{name}.json"
        if args.collect:
            if target.exists():
                results[name] = json.loads(target.read_text())
            continue
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"bench.bench_{name}", "--out", str(target)], capture_output=True, text=True)
        if proc.returncode == 0 and target.exists():
            results[name] = json.loads(target.read_text())
        else:
            results[name] = {"error": proc.stderr[-2000:], "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: {'ok' if proc.returncode == 0 else 'FAILED'} ({time.perf_counter() - start:.0f}s)", flush=True)
        out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if args.collect:
        out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
