"""`lvd ablate`: the paper's Table 2 at our scale: a tiny ViT trained on the curated output, on an
equal-size random sample of the uncurated pool and on the seeds alone, scored by k-NN accuracy."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="curated vs uncurated vs seeds alone: a tiny ViT each, k-NN accuracy (paper Table 2)",
        description="Train the tiny config for the same number of iterations on (a) RUN/output, (b) an equal-size "
        "random sample of the run's pool, (c) the seed sets alone, and report k-NN top-1 accuracy on held-out "
        "images of the demo world's evaluation concepts. Writes RUN/ablation/ablation.{json,md}.")
    p.add_argument("run", metavar="RUN", help="a curated run directory (lvd curate on a demo world)")
    p.add_argument("--world", default=None, help="its demo world (default: the one the run was curated from)")
    p.add_argument("--out", default=None, help="where to write (default RUN/ablation)")
    p.add_argument("--steps", type=int, default=None, help="iterations per arm (default: tiny.yaml's schedule)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of training/configs/tiny.yaml (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.ablate import run_ablation, table

    result = run_ablation(Path(args.run), Path(args.world) if args.world else None,
                          Path(args.out) if args.out else None, args.steps, args.overrides)
    print(table(result))
    return 0
