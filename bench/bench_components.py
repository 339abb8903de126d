"""Connected-components benchmark: union-find (numpy), scipy csgraph and the star driver.

    python bench/bench_components.py --out bench/scratch/components.json [--sizes 10000000,100000000]

Graphs are seeded random edge lists (uniform endpoints) in two densities: n = E nodes (a giant
component plus very many small ones, like a sparse near-duplicate graph) and n = E / 5 (one
giant component, long contraction). Each (method, graph) runs in its own subprocess; the graph
is generated before the clock starts. Reported per run: wall seconds, CPU seconds of the
process (user + sys; the development machine is shared, so wall time includes waiting for a
core), edges per wall second and per CPU second ("per core": every solver here is single
threaded), peak RSS, rounds (star), and a checksum of the labels so the methods can be checked
to agree. The star driver is the distributed form (one shuffle per round) and is run at the
smallest size only: locally it sorts the edge list several times per round.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("union_find", "scipy", "star")


def random_graph(edges: int, nodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)


def run_one(method: str, edges: int, nodes: int, seed: int) -> dict:
    """Solve one graph with one method in this process and describe the run."""
    from curation.dedup.graph import connected_components, star_components

    src, dst = random_graph(edges, nodes, seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, wall0 = time.process_time(), time.perf_counter()
    rounds = None
    if method == "star":
        present, labels, rounds = star_components(src, dst)
        full = np.arange(nodes, dtype=np.int64)
        full[present] = labels
        labels = full
    else:
        labels = connected_components(nodes, src, dst, method=method)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "edges": edges,
        "nodes": nodes,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "edges_per_s_wall": round(edges / wall),
        "edges_per_cpu_s": round(edges / cpu),
        "components": int(np.count_nonzero(labels == np.arange(nodes))),
        "rounds": rounds,
        "peak_rss_bytes": rss * 1024,
        "rss_growth_bytes": (rss - rss_before) * 1024,
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()[:16],
    }


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scratch" / "components.json")
    parser.add_argument("--sizes", default="10000000,100000000")
    parser.add_argument("--densities", default="1,5", help="edges per node ratios: n = E / ratio")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child: method,edges,nodes
    args = parser.parse_args(argv)

    if args.one:
        method, edges, nodes = args.one.split(",")
        print(json.dumps(run_one(method, int(edges), int(nodes), args.seed)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    runs, skipped = [], []
    for edges in sizes:
        for ratio in [int(r) for r in args.densities.split(",")]:
            nodes = edges // ratio
            for method in args.methods.split(","):
                if method == "star" and edges != min(sizes):
                    skipped.append({"method": method, "edges": edges, "why": "star runs at the smallest size only"})
                    continue
                # ~60 bytes per edge covers the largest solver (scipy: coo + csr + transpose)
                if _available_bytes() < 60 * edges:
                    skipped.append({"method": method, "edges": edges, "why": "not enough free memory"})
                    continue
                cmd = [sys.executable, __file__, "--one", f"{method},{edges},{nodes}", "--seed", str(args.seed)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    skipped.append({"method": method, "edges": edges, "why": proc.stderr.strip()[-300:]})
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["load_avg_1m_at_start"] = os.getloadavg()[0]
                print(json.dumps(row), flush=True)
                runs.append(row)
    agree = {}
    for row in runs:
        key = f"{row['edges']}/{row['nodes']}"
        agree.setdefault(key, set()).add(row["labels_sha256"])
    report = {
        "benchmark": "connected_components",
        "graph": "uniform random edges, seeded; nodes = edges / density",
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "skipped": skipped,
        "all_methods_agree": {key: len(shas) == 1 for key, shas in agree.items()},
        "target": ">= 10M edges/s/core locally (DESIGN §5); per core = edges_per_cpu_s",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
