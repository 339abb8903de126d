"""The paper's Table 2 at our scale (`lvd ablate`): k-NN accuracy of the tiny ViT trained on (a) the
curated output, (b) an equal-size random sample of the uncurated pool, (c) the seeds alone.

    python -m bench.bench_ablation [--out bench/scratch/ablation.json] [--world-size web] [--steps 200] [--seeds 5]
                                   [--run RUN --world WORLD]

Builds the demo world (`web` by default: a pool dominated by off-concept images and duplicates, as
a web crawl is; `small`'s pool is ~80 % on a seed concept, so its random sample is nearly as good as
the curated set and the comparison cannot show a difference), curates it (`lvd curate`, demo
recipe), then runs `lvd ablate` with one intra-op thread: every arm once per training seed, k-NN
top-1 on held-out images of the seed concepts generated from the world (disjoint from the pool and
the seeds). Records per arm mean ± SE over seeds, the paired (a) - (b) and (a) - (c) differences,
whether (a) > (b) beyond 2 SE, each arm's composition, steps, seeds and seconds; the commands'
output goes to bench/scratch/ablation.log. `--run` / `--world`
reuse an existing curated run instead. Heavy: ~13 min curating the web world on one worker, then ~2 min
per arm and seed at 200 steps on one shared core (~35 min for 5 seeds); finished (arm, seed) results are reused.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import SCRATCH, parser, python, world, write_result

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_logged(cmd: list[str], log: Path) -> float:
    """Run a command on one thread, its output appended to `log` (to follow a long run); wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **THREADS})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return round(time.perf_counter() - start, 1)


def curate(world_dir: Path, out: Path) -> dict:
    """`lvd curate` on the world (one worker), resumed when `out` holds a run of it."""
    return {"seconds": run_logged([python(), "-m", "pipelines", "curate", "--recipe", "demo", "--world", str(world_dir),
                                   "--out", str(out), "--no-progress", "--set", "workers=1"], SCRATCH / "ablation.log")}


def main() -> None:
    p = parser("ablation", __doc__)
    p.add_argument("--world-size", default="web", choices=["small", "web", "medium"])
    p.add_argument("--steps", type=int, default=200, help="iterations per arm and seed")
    p.add_argument("--seeds", type=int, default=5, help="training seeds per arm (5: the recorded table)")
    p.add_argument("--heldout-size", default="40,100", help="held-out images per seed concept: k-NN bank, test")
    p.add_argument("--run", default=None, help="an existing curated run of --world (skips curation)")
    p.add_argument("--world", default=None, help="the demo world of --run")
    p.add_argument("--fresh", action="store_true", help="retrain every arm (default: finished (arm, seed) results are reused)")
    args = p.parse_args()
    start = time.perf_counter()
    if args.run:
        run, world_dir, curation = Path(args.run), Path(args.world or Path(args.run) / "world"), {"reused": str(args.run)}
    else:
        world_dir = world(args.world_size)
        run = SCRATCH / f"ablation-{args.world_size}"
        curation = curate(world_dir, run)
    out = run / "ablation"
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    seconds = run_logged([python(), "-m", "pipelines", "ablate", str(run), "--world", str(world_dir), "--steps", str(args.steps),
                          "--seeds", str(args.seeds), "--heldout-size", args.heldout_size, "--set", "data.num_workers=0"],
                         SCRATCH / "ablation.log")
    result = json.loads((out / "ablation.json").read_text())
    gap = result["paired"]["curated - uncurated"]
    write_result(args.out, {
        "world_size": args.world_size if not args.run else json.loads((world_dir / "world.json").read_text()).get("size"),
        "steps": result["iterations"], "seeds": result["seeds"], "heldout": result["heldout"], "threads": 1,
        "arms": {arm: {k: v for k, v in row.items() if k in ("images", "top1", "mean", "se", "composition", "train_eval_seconds")}
                 for arm, row in result["arms"].items()},
        "paired": result["paired"],
        "curated_beats_uncurated_beyond_2se": bool(gap["beyond_2se"]),
        "table": result_table(result),
        "curate": curation, "ablate_seconds": seconds,
        "seconds": round(time.perf_counter() - start, 1),
    })


def result_table(result: dict) -> list[str]:
    from training.ablate import table

    return table(result).splitlines()


if __name__ == "__main__":
    main()
